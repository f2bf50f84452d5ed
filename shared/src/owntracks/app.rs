//! Which app sent a message, and which commands that app obeys.

use serde_json::Value;

/// The app a device runs, as far as its messages tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Android,
    Ios,
}

impl App {
    pub fn as_str(self) -> &'static str {
        match self {
            App::Android => "android",
            App::Ios => "ios",
        }
    }

    /// From one message of the device: Android sends `_id` in every
    /// location, and a `status` carries an `android` or an `iOS` object.
    pub fn from_message(message: &Value) -> Option<App> {
        match message.get("_type")?.as_str()? {
            "status" if message.get("iOS").is_some() => Some(App::Ios),
            "status" if message.get("android").is_some() => Some(App::Android),
            "location" if message.get("_id").is_some() => Some(App::Android),
            _ => None,
        }
    }

    /// Whether the app acts on `action`: Android has no `dump` and no
    /// `reportSteps`; iOS obeys every action.
    pub fn obeys(self, action: &str) -> bool {
        match self {
            App::Ios => true,
            App::Android => !matches!(action, "dump" | "reportSteps"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apps_and_their_actions() {
        let android = json!({"_type":"location","_id":"abc","lat":1,"lon":2,"tst":3});
        assert_eq!(App::from_message(&android), Some(App::Android));
        let ios_status = json!({"_type":"status","iOS":{"version":"18.3.2"}});
        assert_eq!(App::from_message(&ios_status), Some(App::Ios));
        let plain = json!({"_type":"location","lat":1,"lon":2,"tst":3});
        assert_eq!(App::from_message(&plain), None);
        assert!(!App::Android.obeys("dump"));
        assert!(App::Android.obeys("setWaypoints"));
        assert!(App::Ios.obeys("dump"));
    }
}
