//! Server-side geofencing: distances on the sphere, accuracy-aware
//! hysteresis, and speed between fixes. Pure arithmetic, no state.

use shared::state::Fix;

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres (haversine).
pub(crate) fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Where a fix is relative to a circular region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// The whole accuracy circle is inside: enter.
    Inside,
    /// The whole accuracy circle is beyond the radius plus the margin: leave.
    Outside,
    /// Neither: keep whatever the device was.
    Unsure,
}

/// Classifies a fix `distance` metres from a region's centre. Absent or
/// invalid accuracy counts as 0 (`acc: 0` is a valid, exact fix).
pub(crate) fn classify(distance: f64, acc: Option<f64>, radius: f64, margin: f64) -> Fence {
    let acc = acc.filter(|a| a.is_finite() && *a > 0.0).unwrap_or(0.0);
    let margin = margin.max(0.0);
    if !distance.is_finite() {
        Fence::Unsure
    } else if distance + acc <= radius {
        Fence::Inside
    } else if distance - acc > radius + margin {
        Fence::Outside
    } else {
        Fence::Unsure
    }
}

/// Below this many seconds between fixes, computed speed is noise.
pub(crate) const MIN_SPEED_INTERVAL_S: i64 = 30;

/// Speed in km/h from `prev` to `cur`, or None when the fixes are too close
/// in time to tell. The distance is reduced by both accuracies, so poor fixes
/// understate speed rather than invent movement.
pub(crate) fn speed_kmh(prev: &Fix, cur: &Fix) -> Option<f64> {
    let dt = cur.tst.checked_sub(prev.tst)?;
    if dt < MIN_SPEED_INTERVAL_S {
        return None;
    }
    let acc = |a: Option<f64>| a.filter(|a| a.is_finite() && *a > 0.0).unwrap_or(0.0);
    let d = distance_m(prev.lat, prev.lon, cur.lat, cur.lon) - acc(prev.acc) - acc(cur.acc);
    let kmh = d.max(0.0) / dt as f64 * 3.6;
    kmh.is_finite().then_some(kmh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(lat: f64, lon: f64, acc: Option<f64>, tst: i64) -> Fix {
        Fix {
            lat,
            lon,
            acc,
            vel: None,
            batt: None,
            tst,
            tid: None,
        }
    }

    #[test]
    fn distances() {
        // One degree of latitude is about 111.2 km.
        let d = distance_m(51.0, 0.0, 52.0, 0.0);
        assert!((d - 111_195.0).abs() < 50.0, "{d}");
        assert_eq!(distance_m(51.5, -0.12, 51.5, -0.12), 0.0);
        // London to Paris, about 343.5 km.
        let d = distance_m(51.5074, -0.1278, 48.8566, 2.3522);
        assert!((d - 343_500.0).abs() < 1_000.0, "{d}");
    }

    #[test]
    fn hysteresis_table() {
        use Fence::*;
        // radius 100, margin 25
        let cases = [
            (0.0, None, Inside),
            (100.0, None, Inside),
            (100.0, Some(0.0), Inside),
            (60.0, Some(40.0), Inside),
            (60.0, Some(50.0), Unsure),
            (110.0, None, Unsure),
            (125.0, None, Unsure),
            (125.1, None, Outside),
            (180.0, Some(50.0), Outside),
            (170.0, Some(50.0), Unsure),
            (90.0, Some(5000.0), Unsure),
            (9000.0, Some(5000.0), Outside),
            (50.0, Some(f64::NAN), Inside),
            (50.0, Some(-3.0), Inside),
        ];
        for (d, acc, want) in cases {
            assert_eq!(classify(d, acc, 100.0, 25.0), want, "d={d} acc={acc:?}");
        }
    }

    #[test]
    fn speed_is_guarded() {
        // ~1112 m in 60 s = ~66.7 km/h
        let a = fix(51.0, 0.0, Some(5.0), 1000);
        let b = fix(51.01, 0.0, Some(5.0), 1060);
        let v = speed_kmh(&a, &b).unwrap();
        assert!((v - 66.1).abs() < 1.0, "{v}");
        // Too close in time.
        assert_eq!(speed_kmh(&a, &fix(51.01, 0.0, None, 1010)), None);
        // Backwards in time.
        assert_eq!(speed_kmh(&b, &a), None);
        // Accuracy swallows the jump.
        let far = fix(51.01, 0.0, Some(2000.0), 1060);
        assert_eq!(speed_kmh(&a, &far), Some(0.0));
    }
}
