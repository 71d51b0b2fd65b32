use locus_schemas::tls::PemFiles;
use locus_schemas::{FixLimits, MAX_AGE_MS, MAX_FUTURE_MS, MAX_ID_LEN, Secret};
use serde::{Deserialize, Serialize};

use crate::BridgeError;
use crate::payload::TopicTemplate;

/// `[bridge]`: the MQTT → Kafka bridge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// MQTT broker host.
    #[serde(default = "default_host")]
    pub mqtt_host: String,
    /// MQTT broker port.
    #[serde(default = "default_port")]
    pub mqtt_port: u16,
    /// MQTT client id. Must be stable per replica (e.g. the StatefulSet pod name): the broker
    /// keeps a replica's unacked messages in the session of this id until it returns.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Username; empty: anonymous.
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Secret,
    /// TLS to the broker: the CA (PEM) that signed the broker's certificate; empty: plaintext.
    /// The broker's host name (or IP) must be in its certificate.
    #[serde(default)]
    pub tls_ca_file: String,
    /// Client certificate and key (PEM) for brokers that require one; empty: none.
    #[serde(default)]
    pub tls_client_cert_file: String,
    #[serde(default)]
    pub tls_client_key_file: String,
    /// Shared-subscription group: replicas in one group split the messages.
    #[serde(default = "default_share_group")]
    pub share_group: String,
    /// Topic devices publish to; `{tenant}` and `{user_id}` are single levels.
    #[serde(default = "default_topic_template")]
    pub topic_template: String,
    /// How long the broker keeps the session (and queued messages) while the bridge is
    /// away, seconds. Longer than any outage the bridge must survive.
    #[serde(default = "default_session_expiry_s")]
    pub session_expiry_s: u32,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Messages received but not yet acknowledged (MQTT receive maximum). Bounds memory;
    /// when Kafka is slow or down, the broker stops sending beyond it. One replica bridges
    /// at most about this many messages per Kafka round trip (produce + delivery report).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u16,
    /// Messages the bridge holds beyond the receive maximum when the broker ignores it
    /// (Mosquitto 2.0.11 does). At this many the bridge stops reading what the broker sends
    /// (TCP back-pressure) until half of them are taken up; it goes on acknowledging.
    #[serde(default = "default_max_held_messages")]
    pub max_held_messages: usize,
    /// Read from the broker through a local relay that can stop reading (see
    /// `max_held_messages`). Needed with a broker that ignores the receive maximum; with
    /// one that honours it, `false` connects directly (one hop less).
    #[serde(default = "default_pause_reads")]
    pub pause_reads: bool,
    /// Largest MQTT packet the bridge reads; larger ones are refused by the broker. Must be
    /// at least the broker's message_size_limit.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: u32,
    /// Largest payload accepted as fixes; larger messages go to the DLQ (reason oversize).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Most bytes of a rejected message kept in its DLQ record; the rest is cut off and the
    /// record says so (`locus-truncated`, `locus-original-bytes`), so a DLQ record always fits
    /// Kafka's message size limit.
    #[serde(default = "default_max_dlq_value_bytes")]
    pub max_dlq_value_bytes: usize,
    /// Most fixes in one batch payload (a JSON array).
    #[serde(default = "default_max_batch_len")]
    pub max_batch_len: usize,
    /// How far in the future an event time may be (device clock skew), ms.
    #[serde(default = "default_max_future_ms")]
    pub max_future_ms: i64,
    /// How old an event time may be (offline buffering), ms.
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: i64,
    /// Longest tenant, user and device id, bytes.
    #[serde(default = "default_max_id_len")]
    pub max_id_len: usize,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "locus-bridge-0".into()
}
fn default_share_group() -> String {
    "locus-bridge".into()
}
fn default_topic_template() -> String {
    "locus/{tenant}/{user_id}/location".into()
}
fn default_session_expiry_s() -> u32 {
    7 * 24 * 3600
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_max_in_flight() -> u16 {
    4000
}
fn default_pause_reads() -> bool {
    true
}
fn default_max_held_messages() -> usize {
    10_000
}
fn default_max_packet_bytes() -> u32 {
    1024 * 1024
}
fn default_max_payload_bytes() -> usize {
    256 * 1024
}
fn default_max_dlq_value_bytes() -> usize {
    256 * 1024
}
fn default_max_batch_len() -> usize {
    1000
}
fn default_max_future_ms() -> i64 {
    FixLimits::default().max_future_ms
}
fn default_max_age_ms() -> i64 {
    FixLimits::default().max_age_ms
}
fn default_max_id_len() -> usize {
    FixLimits::default().max_id_len
}

impl BridgeConfig {
    /// The TLS files for the broker connection (read now), or `None` for plaintext.
    pub fn tls_files(&self) -> Result<Option<PemFiles>, BridgeError> {
        if self.tls_ca_file.is_empty() {
            return Ok(None);
        }
        let files = PemFiles::read(
            "bridge",
            &self.tls_ca_file,
            &self.tls_client_cert_file,
            &self.tls_client_key_file,
        )
        .map_err(BridgeError::Config)?;
        if !files.ca.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(BridgeError::Config(format!(
                "bridge.tls_ca_file: {} is not a PEM certificate",
                self.tls_ca_file
            )));
        }
        Ok(Some(files))
    }

    /// The TLS settings of a direct rumqttc connection, or `None` for plaintext.
    pub fn tls(&self) -> Result<Option<rumqttc::TlsConfiguration>, BridgeError> {
        Ok(self.tls_files()?.map(rumqttc_tls))
    }
}

/// rumqttc's TLS settings from the files' contents.
pub fn rumqttc_tls(f: PemFiles) -> rumqttc::TlsConfiguration {
    rumqttc::TlsConfiguration::Simple {
        ca: f.ca,
        alpn: None,
        client_auth: f.client_auth,
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            mqtt_host: default_host(),
            mqtt_port: default_port(),
            client_id: default_client_id(),
            username: String::new(),
            password: Secret::default(),
            tls_ca_file: String::new(),
            tls_client_cert_file: String::new(),
            tls_client_key_file: String::new(),
            share_group: default_share_group(),
            topic_template: default_topic_template(),
            session_expiry_s: default_session_expiry_s(),
            keep_alive_s: default_keep_alive_s(),
            max_in_flight: default_max_in_flight(),
            max_held_messages: default_max_held_messages(),
            pause_reads: default_pause_reads(),
            max_packet_bytes: default_max_packet_bytes(),
            max_payload_bytes: default_max_payload_bytes(),
            max_dlq_value_bytes: default_max_dlq_value_bytes(),
            max_batch_len: default_max_batch_len(),
            max_future_ms: default_max_future_ms(),
            max_age_ms: default_max_age_ms(),
            max_id_len: default_max_id_len(),
        }
    }
}

impl BridgeConfig {
    pub fn limits(&self) -> FixLimits {
        FixLimits {
            max_future_ms: self.max_future_ms,
            max_age_ms: self.max_age_ms,
            max_id_len: self.max_id_len,
        }
    }

    pub fn template(&self) -> Result<TopicTemplate, BridgeError> {
        TopicTemplate::parse(&self.topic_template).map_err(BridgeError::Config)
    }

    pub fn validate(&self) -> Result<(), BridgeError> {
        let bad = |m: String| Err(BridgeError::Config(m));
        self.template()?;
        if self.client_id.is_empty() || self.client_id.len() > 23 * 8 {
            return bad("bridge.client_id must be 1 to 184 characters".into());
        }
        if self.share_group.is_empty() || self.share_group.contains(['/', '+', '#']) {
            return bad(format!(
                "bridge.share_group '{}' must be non-empty without '/', '+' or '#'",
                self.share_group
            ));
        }
        if self.max_in_flight == 0 {
            return bad("bridge.max_in_flight must be > 0".into());
        }
        if !(1..=MAX_ID_LEN).contains(&self.max_id_len) {
            return bad(format!(
                "bridge.max_id_len must be between 1 and {MAX_ID_LEN} (the longest id the consuming stages take)"
            ));
        }
        if !(2..=10_000_000).contains(&self.max_held_messages) {
            return bad("bridge.max_held_messages must be between 2 and 10000000".into());
        }
        if self.tls_ca_file.is_empty() && !self.tls_client_cert_file.is_empty() {
            return bad(
                "bridge.tls_client_cert_file needs bridge.tls_ca_file (a client certificate \
                 without TLS would send the credentials in clear)"
                    .into(),
            );
        }
        if self.tls_client_cert_file.is_empty() != self.tls_client_key_file.is_empty() {
            return bad(
                "bridge.tls_client_cert_file and bridge.tls_client_key_file go together".into(),
            );
        }
        if !(1..=900_000).contains(&self.max_dlq_value_bytes) {
            return bad(
                "bridge.max_dlq_value_bytes must be between 1 and 900000 (under Kafka's default \
                 message.max.bytes of 1000000, with room for the headers)"
                    .into(),
            );
        }
        if self.max_payload_bytes == 0
            || self.max_payload_bytes as u64 > u64::from(self.max_packet_bytes)
        {
            return bad(format!(
                "bridge.max_payload_bytes must be between 1 and bridge.max_packet_bytes ({})",
                self.max_packet_bytes
            ));
        }
        if self.max_batch_len == 0 {
            return bad("bridge.max_batch_len must be > 0".into());
        }
        if !(0..=MAX_FUTURE_MS).contains(&self.max_future_ms)
            || !(1..=MAX_AGE_MS).contains(&self.max_age_ms)
        {
            return bad(format!(
                "bridge.max_future_ms must be 0 to {MAX_FUTURE_MS} and bridge.max_age_ms 1 to {MAX_AGE_MS} (what the consuming stages take)"
            ));
        }
        if self.keep_alive_s < 5 {
            return bad("bridge.keep_alive_s must be >= 5".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_may_not_be_longer_than_the_consuming_stages_take() {
        let with = |max_id_len| BridgeConfig {
            max_id_len,
            ..BridgeConfig::default()
        };
        with(MAX_ID_LEN).validate().unwrap();
        for bad in [0, MAX_ID_LEN + 1] {
            let e = with(bad).validate().unwrap_err().to_string();
            assert!(e.contains("bridge.max_id_len"), "{e}");
        }
        let times = |max_future_ms, max_age_ms| BridgeConfig {
            max_future_ms,
            max_age_ms,
            ..BridgeConfig::default()
        };
        times(MAX_FUTURE_MS, MAX_AGE_MS).validate().unwrap();
        for (future, age) in [(MAX_FUTURE_MS + 1, 1), (-1, 1), (0, MAX_AGE_MS + 1), (0, 0)] {
            let e = times(future, age).validate().unwrap_err().to_string();
            assert!(e.contains("bridge.max_future_ms"), "{e}");
        }
    }

    #[test]
    fn tls_settings_are_checked() {
        let tls = |ca: &str, cert: &str, key: &str, pause: bool| BridgeConfig {
            tls_ca_file: ca.into(),
            tls_client_cert_file: cert.into(),
            tls_client_key_file: key.into(),
            pause_reads: pause,
            ..BridgeConfig::default()
        };
        tls("ca.pem", "", "", true).validate().unwrap();
        let e = tls("", "c.pem", "k.pem", false)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("in clear"), "{e}");
        let e = tls("ca.pem", "c.pem", "", false)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together"), "{e}");
        tls("ca.pem", "c.pem", "k.pem", false).validate().unwrap();
        let e = tls("/nonexistent/ca.pem", "", "", false)
            .tls()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bridge.tls_ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        assert!(
            tls("", "", "", true).tls().unwrap().is_none(),
            "plaintext by default"
        );
    }
}
