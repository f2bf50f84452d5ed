//! Place resolution: which of the household's places a set of region names
//! means. Region names are compared by [`region_key`].

use shared::config::Household;

/// The identity of a region name: case-insensitive, one leading `-` ignored
/// (OwnTracks marks regions whose leave the app delays with a `-`).
pub(crate) fn region_key(name: &str) -> String {
    let name = name.trim();
    name.strip_prefix('-').unwrap_or(name).trim().to_lowercase()
}

/// The first of the household's places (priority order) that one of
/// `regions` names, spelled as the household spells it.
pub(crate) fn named_place<'h, S: AsRef<str>>(
    household: &'h Household,
    regions: &[S],
) -> Option<&'h str> {
    let keys: Vec<String> = regions.iter().map(|r| region_key(r.as_ref())).collect();
    household
        .places
        .iter()
        .find(|p| keys.contains(&region_key(p)))
        .map(String::as_str)
}

/// Whether `place` is one of the household's places (not a label such as
/// Traveling, Away or Lost).
pub(crate) fn is_named_place(household: &Household, place: &str) -> bool {
    household.places.iter().any(|p| p == place)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_case_and_one_leading_dash() {
        let cases = [
            ("Home", "home"),
            ("-Home", "home"),
            (" HOME ", "home"),
            ("--Home", "-home"),
            ("Work-Place", "work-place"),
            ("Jörg's", "jörg's"),
        ];
        for (name, key) in cases {
            assert_eq!(region_key(name), key, "{name}");
        }
    }

    #[test]
    fn first_place_in_priority_order_wins() {
        let household = Household {
            places: vec!["Home".into(), "Work".into(), "School".into()],
            ..Household::default()
        };
        let cases: [(&[&str], Option<&str>); 6] = [
            (&[], None),
            (&["gym"], None),
            (&["work"], Some("Work")),
            (&["school", "-WORK"], Some("Work")),
            (&["School", "home", "Work"], Some("Home")),
            (&["-home"], Some("Home")),
        ];
        for (regions, want) in cases {
            assert_eq!(named_place(&household, regions), want, "{regions:?}");
        }
        assert!(is_named_place(&household, "Home"));
        assert!(!is_named_place(&household, "Away"));
    }
}
