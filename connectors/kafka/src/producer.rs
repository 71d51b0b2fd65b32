//! The producer every stage uses: idempotent, acks=all, murmur2 partitioning, and a full
//! local queue treated as back-pressure (wait and retry), never as a reason to drop.

use std::time::Duration;

use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

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
    /// A short, fixed label for metrics and DLQ headers.
    pub fn reason(&self) -> String {
        match self.0.rdkafka_error_code() {
            Some(code) => format!("kafka_{code:?}").to_ascii_lowercase(),
            None => "kafka_error".into(),
        }
    }
}

/// The delivery report of one record, awaited separately from the send.
pub struct Pending(DeliveryFuture);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Pending {
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

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(cfg: &KafkaConfig, stage: &str) -> Result<Producer, KafkaError> {
        cfg.validate()?;
        let inner: FutureProducer = cfg
            .producer_config(stage)
            .create()
            .map_err(KafkaError::Client)?;
        Ok(Producer { inner })
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
        let mut record = FutureRecord::to(topic).key(key).payload(payload).headers(h);
        loop {
            match self.inner.send_result(record) {
                Ok(f) => return Ok(Pending(f)),
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
        let p = self.inner.clone();
        tokio::task::spawn_blocking(move || p.flush(timeout))
            .await
            .map_err(|e| KafkaError::Join(e.to_string()))?
            .map_err(KafkaError::Client)
    }

    /// Records enqueued but not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }
}
