//! Dead-lettering a consumed record: the same record, with why, into the DLQ topic.

use crate::{Backoff, Producer, Record};
use tracing::warn;

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
