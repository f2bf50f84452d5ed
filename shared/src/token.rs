//! The reversible name encoding used for NATS subject tokens and KV keys.
//!
//! Bytes in `[A-Za-z0-9-]` stay; every other byte becomes `_` and two
//! upper-case hex digits. Any UTF-8 name thus becomes one valid token
//! (`jane.doe` → `jane_2Edoe`, `Jörg` → `J_C3_B6rg`).

use std::fmt::Write;

/// Encodes `name` as a single subject token.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02X}");
        }
    }
    out
}

/// Decodes a token made by [`encode`]; `None` when it is not one.
pub fn decode(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let hex = token.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                {
                    return None;
                }
                let b = u8::from_str_radix(hex, 16).ok()?;
                // Canonical form only: a byte that would stay must not be escaped.
                if b.is_ascii_alphanumeric() || b == b'-' {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples_from_the_design() {
        assert_eq!(encode("jane.doe"), "jane_2Edoe");
        assert_eq!(encode("Jörg"), "J_C3_B6rg");
        assert_eq!(encode("a b*>"), "a_20b_2A_3E");
        assert_eq!(encode(""), "");
        assert_eq!(decode("J_C3_B6rg").as_deref(), Some("Jörg"));
    }

    #[test]
    fn rejects_non_canonical_tokens() {
        assert_eq!(decode("a.b"), None);
        assert_eq!(decode("_4"), None);
        assert_eq!(decode("_2e"), None, "lower-case hex is not canonical");
        assert_eq!(decode("_41"), None, "'A' must not be escaped");
        assert_eq!(decode("_FF"), None, "not UTF-8");
    }

    proptest! {
        #[test]
        fn round_trips(name in any::<String>()) {
            let token = encode(&name);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(decode(&token), Some(name));
        }

        #[test]
        fn encoding_is_injective(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(encode(&a), encode(&b));
        }
    }
}
