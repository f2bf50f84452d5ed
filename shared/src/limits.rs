//! Size limits on names that become subject tokens, KV keys or stored state.
//!
//! Every byte outside `[A-Za-z0-9-]` triples when a name is encoded into a
//! subject token (`token`), and nats-server closes a connection whose control
//! line passes 4 KiB; a KV value may not pass 1 MiB. These bounds keep the
//! longest subject (`owntracks.<household>.<user>.<device>.<type>`, each level
//! at most `3 × MAX_TOPIC_LEVEL_BYTES` once encoded) and the largest person
//! state far inside both limits.

/// A topic level (household, user, device) or a person id, in bytes. Longer
/// levels are rejected, never cut: cutting could merge two identities.
pub const MAX_TOPIC_LEVEL_BYTES: usize = 128;

/// A region name (`desc`, an `inregions` entry, a waypoint name), in bytes.
/// Longer names are cut at a character boundary (or the entry dropped).
pub const MAX_REGION_NAME_BYTES: usize = 128;

/// A card's `name`, in bytes; longer names are cut.
pub const MAX_CARD_NAME_BYTES: usize = 256;

/// A tracker id (`tid`), in bytes; the apps send two characters by default.
pub const MAX_TID_BYTES: usize = 16;

/// Regions one device can be in at once (`inregions` beyond it are dropped).
pub const MAX_REGIONS_PER_DEVICE: usize = 100;

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("Home", 128), "Home");
        assert_eq!(truncate_utf8("Jörg", 2), "J");
        assert_eq!(truncate_utf8("Jörg", 3), "Jö");
        assert_eq!(truncate_utf8("ééé", 5), "éé");
    }
}
