//! The producer every stage uses: idempotent, acks=all, murmur2 partitioning, and a full
//! local queue treated as back-pressure (wait and retry), never as a reason to drop.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _, PurgeConfig};

use crate::{KafkaConfig, KafkaError};

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A delivery that failed for good (the broker refused the record, or the producer was
/// configured with a finite message timeout that passed).
#[derive(Debug, thiserror::Error)]
#[error("Kafka did not take the record: {0}")]
pub struct DeliveryError(pub RdError);

impl DeliveryError {
    /// True when the record itself is the problem (too large, invalid), so sending it again
    /// cannot help. Everything else (broker down, leader moving, timeouts, unknown errors)
    /// is worth retrying.
    pub fn is_permanent(&self) -> bool {
        use RDKafkaErrorCode::*;
        matches!(
            self.0.rdkafka_error_code(),
            Some(
                MessageSizeTooLarge
                    | InvalidMessageSize
                    | InvalidMessage
                    | InvalidRecord
                    | MessageBatchTooLarge
                    | InvalidArgument
            )
        )
    }

    /// True when the record is too large for Kafka (the producer's `message.max.bytes` or the
    /// broker's limit): the same record without its bytes may go.
    pub fn is_too_large(&self) -> bool {
        use RDKafkaErrorCode::*;
        matches!(
            self.0.rdkafka_error_code(),
            Some(MessageSizeTooLarge | InvalidMessageSize | MessageBatchTooLarge)
        )
    }

    /// A short, fixed label for metrics and DLQ headers.
    pub fn reason(&self) -> String {
        match self.0.rdkafka_error_code() {
            Some(code) => format!("kafka_{code:?}").to_ascii_lowercase(),
            None => "kafka_error".into(),
        }
    }
}

/// The delivery report of one record, awaited separately from the send.
pub struct Pending(DeliveryFuture, u64);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Pending {
    /// Which producer instance took the record (see [`Producer::renew`]).
    pub fn generation(&self) -> u64 {
        self.1
    }

    pub async fn delivered(self) -> Result<Delivered, DeliveryError> {
        match self.0.await {
            Ok(Ok(d)) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((e, _))) => Err(DeliveryError(e)),
            Err(_canceled) => Err(DeliveryError(RdError::Canceled)),
        }
    }
}

/// A producer that can be renewed: librdkafka's idempotent producer can get stuck on
/// sequence state a broker lost or rejects after a restart (seen with tansu), and a new
/// producer (new producer id, fresh sequences) is the way out.
#[derive(Clone)]
pub struct Producer {
    cfg: KafkaConfig,
    stage: String,
    inner: Arc<RwLock<(u64, FutureProducer)>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(cfg: &KafkaConfig, stage: &str) -> Result<Producer, KafkaError> {
        cfg.validate()?;
        let inner: FutureProducer = cfg
            .producer_config(stage)
            .create()
            .map_err(KafkaError::Client)?;
        Ok(Producer {
            cfg: cfg.clone(),
            stage: stage.to_string(),
            inner: Arc::new(RwLock::new((0, inner))),
        })
    }

    fn current(&self) -> (u64, FutureProducer) {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// Replaces the producer that had `generation` with a new one, purging what the old
    /// one still held (those deliveries fail, and their senders send again). A no-op if it
    /// was already renewed.
    pub fn renew(&self, generation: u64) -> Result<(), KafkaError> {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if g.0 != generation {
            return Ok(());
        }
        let fresh: FutureProducer = self
            .cfg
            .producer_config(&self.stage)
            .create()
            .map_err(KafkaError::Client)?;
        g.1.purge(PurgeConfig::default().queue().inflight().non_blocking());
        tracing::warn!(
            stage = self.stage,
            generation = generation + 1,
            "Kafka producer renewed"
        );
        *g = (generation + 1, fresh);
        Ok(())
    }

    /// Enqueues one record. Waits (without blocking the runtime) while the local queue is
    /// full; returns the pending delivery report.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Pending, DeliveryError> {
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        self.enqueue(FutureRecord::to(topic).key(key).payload(payload).headers(h))
            .await
    }

    /// Enqueues a tombstone (a record with no value: on a compacted topic, deletes `key`).
    pub async fn send_tombstone(&self, topic: &str, key: &[u8]) -> Result<Pending, DeliveryError> {
        self.enqueue(FutureRecord::to(topic).key(key)).await
    }

    /// Hands `record` to librdkafka, waiting while its local queue is full.
    async fn enqueue(
        &self,
        mut record: FutureRecord<'_, [u8], [u8]>,
    ) -> Result<Pending, DeliveryError> {
        loop {
            let (generation, producer) = self.current();
            match producer.send_result(record) {
                Ok(f) => return Ok(Pending(f, generation)),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(DeliveryError(e)),
            }
        }
    }

    /// Waits up to `timeout` for every enqueued record to be delivered.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let (_, p) = self.current();
        tokio::task::spawn_blocking(move || p.flush(timeout))
            .await
            .map_err(|e| KafkaError::Join(e.to_string()))?
            .map_err(KafkaError::Client)
    }

    /// Records enqueued but not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.current().1.in_flight_count()
    }
}
