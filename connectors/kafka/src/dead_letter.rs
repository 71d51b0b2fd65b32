//! Dead-lettering a consumed record: the same record, with why, into the DLQ topic.

use locus_schemas::{Codec, CodecError, LocationFix};
use tracing::{error, warn};

use crate::{Backoff, Producer, Record, StageMetrics};

/// The dead-letter reason of a decoded fix that fails [`LocationFix::check_consumed`].
pub const INVALID_FIX: &str = "invalid_fix";

/// Every reason [`DeadLetter::decode_fixes`] dead-letters with: no value, a codec error's
/// reason, or a fix that fails the consumed-fix check (for a stage's metrics, at zero from
/// the start).
pub const DECODE_REASONS: &[&str] = &[
    "empty_value",
    "framing",
    "avro_decode",
    "avro_shape",
    INVALID_FIX,
];

/// `text` cut to at most `max_chars` characters, marked with `…` where it was cut (an error
/// can quote what it failed on: a DLQ header stays bounded).
pub fn clip(text: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
        None => text.into(),
    }
}

/// Where a consuming stage sends records it cannot apply (undecodable, empty, not a fix the
/// stages take). The record goes as it was read (key and value) with headers naming the
/// reason, the error and where it came from; sending is retried while Kafka is away, so
/// nothing is committed past a record that is neither applied nor dead-lettered. The one
/// exception is a record Kafka refuses for itself even without its key and value: logged,
/// counted (`locus_stage_errors_total{kind="kafka"}`) and passed over, so that no record can
/// stop a stage.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    to: Option<(Producer, String)>,
}

impl DeadLetter {
    /// Dead-letters into `topic` through `producer`.
    pub fn to(producer: Producer, topic: impl Into<String>) -> DeadLetter {
        DeadLetter {
            to: Some((producer, topic.into())),
        }
    }

    /// Logs and skips instead (re-reads such as a rebuild or a replay: the live group
    /// already dead-lettered these records).
    pub fn skip() -> DeadLetter {
        DeadLetter { to: None }
    }

    /// Decodes a batch into fixes, dead-lettering the records that are not fixes (counted in
    /// `stage` by reason), and the fixes that fail [`LocationFix::check_consumed`] (reason
    /// [`INVALID_FIX`]): any producer may write to the topic, and a fix the bridge would not
    /// have admitted (an id longer than a store's key, a longitude Redis's GEOADD refuses)
    /// would otherwise be retried against a store that refuses it for ever, stalling the stage.
    /// A registry outage fails the whole batch: it is not the records' fault, and nothing may
    /// be committed past them.
    pub async fn decode_fixes(
        &self,
        codec: &Codec,
        batch: &[Record],
        stage: &StageMetrics,
    ) -> Result<Vec<LocationFix>, CodecError> {
        let mut fixes = Vec::with_capacity(batch.len());
        for r in batch {
            let (reason, error) = match r.value.as_deref() {
                None => ("empty_value", "record has no value".to_string()),
                Some(v) => match codec.decode(v).await {
                    Ok(f) => match f.check_consumed() {
                        Ok(()) => {
                            fixes.push(f);
                            continue;
                        }
                        Err(e) => (INVALID_FIX, format!("not a fix the stages take: {e}")),
                    },
                    Err(e @ CodecError::Registry(_)) => {
                        stage.error("registry");
                        return Err(e);
                    }
                    Err(e) => (e.reason(), e.to_string()),
                },
            };
            stage.dead_lettered(reason);
            if !self.send(r, reason, &error).await {
                stage.error("kafka");
            }
        }
        Ok(fixes)
    }

    /// Sends `r` to the DLQ with `reason` (a short label) and `error` (the message). A copy
    /// Kafka refuses for itself (over `message.max.bytes`: the headers make it larger than the
    /// record it copies) is sent again without its key and value, which the `locus-key-bytes`
    /// and `locus-value-bytes` headers then measure and the source headers locate; one refused
    /// even so is logged and given up on, so that no record can stop a stage. Anything else
    /// (Kafka away) is retried until Kafka takes it.
    pub async fn send(&self, r: &Record, reason: &str, error: &str) -> bool {
        let Some((producer, topic)) = &self.to else {
            warn!(
                reason,
                error,
                partition = r.partition,
                offset = r.offset,
                "undecodable record skipped"
            );
            return true;
        };
        let (partition, offset) = (r.partition.to_string(), r.offset.to_string());
        let error = clip(error, 1024);
        let mut key = r.key.as_deref().unwrap_or_default();
        let mut value = r.value.as_deref().unwrap_or_default();
        let (key_bytes, value_bytes) = (key.len().to_string(), value.len().to_string());
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("locus-reason", reason.as_bytes()),
            ("locus-error", error.as_bytes()),
            ("locus-source-topic", r.topic.as_bytes()),
            ("locus-source-partition", partition.as_bytes()),
            ("locus-source-offset", offset.as_bytes()),
        ];
        let mut backoff = Backoff::default();
        loop {
            let sent = match producer.send(topic, key, value, &headers).await {
                Ok(p) => p.delivered().await.map(|_| ()),
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => return true,
                Err(e) if e.is_too_large() && !(key.is_empty() && value.is_empty()) => {
                    warn!(error = %e, partition = r.partition, offset = r.offset, "Kafka refused a DLQ record; sending it again without its key and value");
                    (key, value) = (&[], &[]);
                    headers.push(("locus-key-bytes", key_bytes.as_bytes()));
                    headers.push(("locus-value-bytes", value_bytes.as_bytes()));
                }
                Err(e) if e.is_permanent() => {
                    error!(error = %e, reason, partition = r.partition, offset = r.offset, "Kafka refuses the DLQ record (without its key and value, if it was too large); the record is passed over without one");
                    return false;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff.current(), "DLQ write failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}
