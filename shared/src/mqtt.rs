//! MQTT connection options from `MQTT_URL` (`mqtt://` or `mqtts://`, with
//! optional credentials).

use std::time::Duration;

use anyhow::Context;
use rumqttc::MqttOptions;

/// Options for `url`; explicit credentials override those in the URL.
/// `mqtts://` verifies the broker against the system's roots, or against
/// `ca_file` (PEM, `MQTT_CA_FILE`) when given — for brokers with a private CA.
pub fn options(
    url: &str,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<MqttOptions> {
    // One TLS crypto provider for the process (ring), whatever features
    // the dependency graph enables.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let separator = if url.contains('?') { '&' } else { '?' };
    let with_id = format!("{url}{separator}client_id={client_id}");
    let mut options = MqttOptions::parse_url(&with_id).with_context(|| {
        format!(
            "invalid MQTT URL {:?} (want mqtt://host:port or mqtts://…)",
            crate::telemetry::redact_url(url)
        )
    })?;
    if let Some(user) = username {
        options.set_credentials(user, password.unwrap_or_default());
    }
    // Cards carry base64 faces; rumqttc's 10 KiB default drops the connection
    // on them. Oversized payloads are rejected by ingest with a reason instead.
    options.set_max_packet_size(16 << 20, 1 << 20);
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(ca_file) = ca_file
        && (url.starts_with("mqtts://") || url.starts_with("ssl://"))
    {
        let ca = std::fs::read(ca_file)
            .with_context(|| format!("reading the MQTT CA file {}", ca_file.display()))?;
        options.set_transport(rumqttc::Transport::tls(ca, None, None));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_credentials() {
        let o = options("mqtt://u:p@broker:1884", "id", None, None, None).unwrap();
        assert_eq!(o.broker_address(), ("broker".into(), 1884));
        assert_eq!(o.client_id(), "id");
        assert_eq!(o.credentials().unwrap().username, "u");
        let o = options("mqtt://broker", "id", Some("x"), Some("y"), None).unwrap();
        assert_eq!(o.broker_address().1, 1883);
        assert_eq!(o.credentials().unwrap().username, "x");
        assert!(options("http://broker", "id", None, None, None).is_err());
    }
}
