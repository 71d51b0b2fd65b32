//! Dead-lettering a consumed record: the same record, with why, into the DLQ topic.

use locus_schemas::{Codec, CodecError, LocationFix};
use tracing::warn;

use crate::{Backoff, Producer, Record, StageMetrics};

/// The dead-letter reason of a decoded fix that fails [`LocationFix::check_consumed`].
pub const INVALID_FIX: &str = "invalid_fix";

/// Where a consuming stage sends records it cannot apply (undecodable, empty). The record
/// goes as it was read (key and value) with headers naming the reason, the error and where
/// it came from; sending is retried until Kafka takes it, so nothing is committed past a
/// record that is neither applied nor dead-lettered.
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
            self.send(r, reason, &error).await;
        }
        Ok(fixes)
    }

    /// Sends `r` to the DLQ with `reason` (a short label) and `error` (the message).
    pub async fn send(&self, r: &Record, reason: &str, error: &str) {
        let Some((producer, topic)) = &self.to else {
            warn!(
                reason,
                error,
                partition = r.partition,
                offset = r.offset,
                "undecodable record skipped"
            );
            return;
        };
        let (partition, offset) = (r.partition.to_string(), r.offset.to_string());
        let headers: [(&str, &[u8]); 5] = [
            ("locus-reason", reason.as_bytes()),
            ("locus-error", error.as_bytes()),
            ("locus-source-topic", r.topic.as_bytes()),
            ("locus-source-partition", partition.as_bytes()),
            ("locus-source-offset", offset.as_bytes()),
        ];
        let key = r.key.as_deref().unwrap_or_default();
        let value = r.value.as_deref().unwrap_or_default();
        let mut backoff = Backoff::default();
        loop {
            let sent = match producer.send(topic, key, value, &headers).await {
                Ok(p) => p.delivered().await.map(|_| ()),
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff.current(), "DLQ write failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}
