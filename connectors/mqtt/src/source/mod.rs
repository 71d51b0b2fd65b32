//! The bridge's run loop: three tasks joined by bounded channels.
//!
//! ```text
//! MQTT event loop ──publish──▶ worker ──(message, pending deliveries)──▶ acker ──PUBACK──▶ broker
//!  (never blocks)              parse, validate, encode, send             awaits deliveries in order
//! ```
//! With the relay (`bridge.pause_reads`, the default) the acker hands QoS 1 PUBACKs to the
//! relay, which writes them to the broker in bulk; without it they go through rumqttc.
//! The broker never has more than `max_in_flight` unacknowledged messages out (MQTT receive
//! maximum), so the channels never hold more than that, and when Kafka stops acknowledging,
//! the acker stops acking, the broker stops sending, and the devices' messages wait at the
//! broker: back-pressure, never loss and never unbounded memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use locus_kafka::{Backoff, DeliveryError, KafkaConfig, Pending, Producer};
use locus_schemas::{Codec, CodecError, FixLimits, LocationFix, RegistryConfig, TENANT_HEADER};
use rumqttc::Transport;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

mod events;

use events::EventLoop;

use crate::metrics::M;
use crate::payload::{Rejection, TopicTemplate, check_fix, parse_payload};
use crate::relay::{Relay, RelayAcks, RelayTls};
use crate::{BridgeConfig, BridgeError};

/// Readiness of the bridge's MQTT side, for `/readyz`: connected and subscribed (a draining
/// bridge: unsubscribed).
#[derive(Debug, Clone, Default)]
pub struct BridgeHealth {
    ready: Arc<AtomicBool>,
}

impl BridgeHealth {
    pub fn check(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not connected to the MQTT broker, or not subscribed yet".into())
        }
    }
}

/// A built bridge, ready to [`Bridge::run`].
#[derive(Debug)]
pub struct Bridge {
    cfg: BridgeConfig,
    template: TopicTemplate,
    limits: FixLimits,
    producer: Producer,
    codec: Arc<Codec>,
    locations: String,
    dlq: String,
    health: BridgeHealth,
    shutdown_grace: Duration,
    /// Set by [`Bridge::drain`]: unsubscribe instead of subscribing, and record activity.
    drain: Option<Arc<DrainWatch>>,
    /// TLS to the broker (`bridge.tls_*`), read at build.
    tls: Option<rumqttc::TlsConfiguration>,
    /// The same, for the relay's connections (`bridge.pause_reads`).
    relay_tls: Option<RelayTls>,
}

/// What a draining bridge has seen: whether the broker confirmed the unsubscription, and
/// when the last message arrived.
#[derive(Debug, Default)]
struct DrainWatch {
    unsubscribed: AtomicBool,
    last_message_ms: std::sync::atomic::AtomicI64,
}

/// The number of the MQTT session messages arrive in: the broker's packet ids only mean
/// something within one session. A CONNACK without `session_present` starts a new one.
#[derive(Debug, Clone, Default)]
struct Session(Arc<AtomicU64>);

impl Session {
    fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn start_new(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// A message as received: the publish, and the session it came in on.
struct Received {
    publish: Publish,
    session: u64,
}

/// One MQTT message on its way to being acknowledged.
struct InFlight {
    publish: Publish,
    session: u64,
    received: Instant,
    deliveries: Vec<(Pending, Outgoing)>,
}

/// How the acker acknowledges a message to the broker.
#[derive(Clone)]
struct Acks {
    client: AsyncClient,
    relay: Option<RelayAcks>,
    session: Session,
}

impl Acks {
    async fn ack(&self, p: &Publish, session: u64) {
        if let Some(relay) = &self.relay
            && p.qos == QoS::AtLeastOnce
        {
            // The relay holds it until the connection is in a known session, and drops it
            // if that is not `session`.
            if relay.ack(p.pkid, session) {
                M.acked.inc();
            } else {
                // Between connections: every PUBACK due until the next one lands here, and
                // the reconnect is already logged.
                debug!("no broker connection for the PUBACK; the broker will redeliver");
            }
            return;
        }
        if p.qos == QoS::AtLeastOnce && session != self.session.current() {
            // A new session since the message came: its packet id names another message
            // now. (Without the relay an ack already queued in rumqttc when the connection
            // drops can still go out on the next one; the relay is exact.)
            M.stale_acks.inc();
            return;
        }
        match self.client.ack(p).await {
            Ok(()) => M.acked.inc(),
            Err(error) => warn!(%error, "cannot queue the PUBACK; the broker will redeliver"),
        }
    }
}

/// A record as sent, kept until Kafka acknowledges it so it can be sent again.
struct Outgoing {
    dlq: bool,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

impl Outgoing {
    /// Keeps at most `max` bytes of the value; a cut value is marked in the headers (once,
    /// with the size of the original).
    fn truncate_value(&mut self, max: usize) {
        if self.value.len() <= max {
            return;
        }
        if !self.headers.iter().any(|(k, _)| *k == "locus-truncated") {
            let original = self.value.len().to_string().into_bytes();
            self.headers.push(("locus-original-bytes", original));
            self.headers.push(("locus-truncated", b"true".to_vec()));
        }
        self.value.truncate(max);
        self.value.shrink_to_fit();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Bridge {
    /// Builds the bridge (Kafka producer, registry codec) and its health handle. Connectivity
    /// is checked separately (`/readyz`), so a bridge starts even while a dependency is down.
    pub fn build(
        cfg: &BridgeConfig,
        kafka: &KafkaConfig,
        registry: &RegistryConfig,
        locations: &str,
        dlq: &str,
        shutdown_grace: Duration,
    ) -> Result<(Bridge, BridgeHealth), BridgeError> {
        cfg.validate()?;
        let health = BridgeHealth::default();
        let files = cfg.tls_files()?;
        let relay_tls = files
            .as_ref()
            .map(|f| RelayTls::new(&cfg.mqtt_host, f.as_files(true)))
            .transpose()
            .map_err(|e| BridgeError::Config(format!("bridge.tls_*: {e}")))?;
        let tls = files.map(crate::config::rumqttc_tls);
        let bridge = Bridge {
            template: cfg.template()?,
            limits: cfg.limits(),
            producer: Producer::new(kafka, "bridge")?,
            codec: Arc::new(Codec::new(registry, locations)?),
            cfg: cfg.clone(),
            locations: locations.to_string(),
            dlq: dlq.to_string(),
            health: health.clone(),
            shutdown_grace,
            drain: None,
            tls,
            relay_tls,
        };
        Ok((bridge, health))
    }

    /// Empties and ends the persistent session of `bridge.client_id` — a replica removed by
    /// scaling down, whose session would otherwise keep taking its share of the traffic while
    /// nobody reads it. Connects as that client id, unsubscribes at once (no new messages are
    /// routed to the session), bridges everything the session holds exactly as a running
    /// replica would (PUBACK after Kafka), and once nothing has arrived for `idle` and nothing
    /// is in flight, disconnects and ends the session (a clean start with session expiry 0).
    /// Returns how many messages it acknowledged.
    pub async fn drain(mut self, idle: Duration) -> Result<u64, BridgeError> {
        let watch = Arc::new(DrainWatch::default());
        self.drain = Some(watch.clone());
        let cfg = self.cfg.clone();
        let tls = self.tls.clone();
        let health = self.health.clone();
        let acked_before = M.acked.get();
        let mut acked_seen = acked_before;
        let cancel = CancellationToken::new();
        let run = tokio::spawn(self.run(cancel.clone()));
        let mut last_report = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if run.is_finished() {
                break;
            }
            // Quiet means: connected, unsubscribed, nothing in flight, and neither a message
            // nor a PUBACK for `idle` (a PUBACK frees the broker to send the next ones).
            let acked = M.acked.get();
            if acked != acked_seen {
                acked_seen = acked;
                watch.last_message_ms.store(now_ms(), Ordering::Relaxed);
            }
            let quiet_ms = now_ms() - watch.last_message_ms.load(Ordering::Relaxed);
            if health.ready.load(Ordering::Relaxed)
                && watch.unsubscribed.load(Ordering::Relaxed)
                && M.in_flight.get() == 0
                && quiet_ms >= idle.as_millis() as i64
            {
                cancel.cancel();
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                info!(
                    acked = M.acked.get() - acked_before,
                    in_flight = M.in_flight.get(),
                    "draining"
                );
                last_report = Instant::now();
            }
        }
        run.await
            .map_err(|e| BridgeError::Mqtt(format!("the draining bridge stopped: {e}")))??;
        end_session(&cfg, tls).await?;
        let acked = M.acked.get() - acked_before;
        info!(
            client_id = cfg.client_id,
            acked, "session drained and ended"
        );
        Ok(acked)
    }

    /// The client connects to the broker directly, or through `relay` (see [`crate::relay`]).
    fn mqtt_options(&self, relay: Option<&Relay>) -> MqttOptions {
        let c = &self.cfg;
        let mut o = match relay {
            Some(r) => {
                let socket = r.socket().to_string_lossy().into_owned();
                let mut o = MqttOptions::new(c.client_id.clone(), socket, 0);
                o.set_transport(Transport::Unix);
                o
            }
            None => {
                let mut o = MqttOptions::new(c.client_id.clone(), c.mqtt_host.clone(), c.mqtt_port);
                if let Some(tls) = &self.tls {
                    o.set_transport(Transport::tls_with_config(tls.clone()));
                }
                o
            }
        };
        o.set_keep_alive(Duration::from_secs(c.keep_alive_s))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(c.session_expiry_s))
            .set_manual_acks(true)
            .set_receive_maximum(Some(c.max_in_flight))
            .set_max_packet_size(Some(c.max_packet_bytes));
        if !c.username.is_empty() {
            o.set_credentials(c.username.clone(), c.password.expose().to_string());
        }
        o
    }

    /// Runs until `cancel`; then stops reading, waits (up to the shutdown grace) for the
    /// deliveries of what it already read, acknowledges those, and disconnects. What was
    /// read but not delivered stays unacknowledged: the broker redelivers it.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), BridgeError> {
        let me = Arc::new(self);
        let cap = usize::from(me.cfg.max_in_flight);
        let relay = if me.cfg.pause_reads {
            let broker = format!("{}:{}", me.cfg.mqtt_host, me.cfg.mqtt_port);
            Some(Relay::start(broker, me.relay_tls.clone()).map_err(BridgeError::Relay)?)
        } else {
            None
        };
        let relay_acks = relay.as_ref().map(Relay::acks);
        let (client, eventloop) = AsyncClient::new(me.mqtt_options(relay.as_ref()), cap * 2 + 16);
        let subscription = format!("$share/{}/{}", me.cfg.share_group, me.template.filter());
        info!(
            broker = format!("{}:{}", me.cfg.mqtt_host, me.cfg.mqtt_port),
            client_id = me.cfg.client_id,
            subscription,
            topic = me.locations,
            dlq = me.dlq,
            "bridge starting"
        );

        let (publish_tx, publish_rx) = mpsc::channel::<Received>(cap);
        let session = Session::default();
        let (ack_tx, ack_rx) = mpsc::channel::<InFlight>(cap);
        let loop_stop = CancellationToken::new();

        // 1. The MQTT event loop: polled continuously, never blocked by the pipeline.
        let event_loop = tokio::spawn(
            EventLoop {
                eventloop,
                client: client.clone(),
                subscription,
                publish_tx,
                relay,
                health: me.health.clone(),
                drain: me.drain.clone(),
                receive_maximum: cap,
                max_held: me.cfg.max_held_messages,
                session: session.clone(),
            }
            .run(loop_stop.clone()),
        );
        // 2. The worker: one message at a time, in arrival order.
        let worker = tokio::spawn(me.clone().work(publish_rx, ack_tx, cancel.clone()));
        // 3. The acker: awaits each message's deliveries in order, then PUBACKs it.
        let acks = Acks {
            client: client.clone(),
            relay: relay_acks,
            session,
        };
        let acker = tokio::spawn(me.clone().acknowledge(ack_rx, acks));

        cancel.cancelled().await;
        info!("bridge stopping: no new messages; settling what is in flight");
        let _ = worker.await;
        if tokio::time::timeout(me.shutdown_grace, acker)
            .await
            .is_err()
        {
            warn!(grace = ?me.shutdown_grace, "deliveries still pending at the end of the grace period; those messages stay unacknowledged");
        }
        let _ = client.try_disconnect();
        // The event loop ends once the DISCONNECT is out and the relay closed cleanly.
        let close = crate::relay::CLOSE_WAIT + Duration::from_secs(3);
        if tokio::time::timeout(close, event_loop).await.is_err() {
            loop_stop.cancel();
        }
        info!("bridge stopped");
        Ok(())
    }

    /// The worker: parses, validates, encodes and sends one message at a time, in arrival
    /// order, and passes it to the acker. Messages not taken when `cancel` fires are left
    /// unacknowledged: the broker redelivers them.
    async fn work(
        self: Arc<Self>,
        mut publish_rx: mpsc::Receiver<Received>,
        ack_tx: mpsc::Sender<InFlight>,
        cancel: CancellationToken,
    ) {
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let publish = tokio::select! {
                biased;
                _ = &mut cancelled => break,
                p = publish_rx.recv() => match p { Some(p) => p, None => break },
            };
            let inflight = self.process(publish, &cancel).await;
            if ack_tx.send(inflight).await.is_err() {
                break;
            }
        }
        let left = publish_rx.len();
        if left > 0 {
            info!(messages = left, "left unacknowledged for redelivery");
            M.in_flight.sub(left as i64);
        }
    }

    /// The acker: settles each message's deliveries in order, then acknowledges it.
    async fn acknowledge(self: Arc<Self>, mut ack_rx: mpsc::Receiver<InFlight>, acks: Acks) {
        while let Some(m) = ack_rx.recv().await {
            self.settle(m, &acks).await;
        }
    }

    /// Waits for every record of one message, sending again what Kafka failed to take
    /// (backing off, for as long as it takes: the pipeline stalls, nothing is skipped), and
    /// diverting to the DLQ a fix Kafka refuses for good. Then acknowledges the message.
    async fn settle(&self, m: InFlight, acks: &Acks) {
        for (mut pending, mut out) in m.deliveries {
            let mut backoff = Backoff::default();
            let mut failures = 0u32;
            loop {
                let generation = pending.generation();
                match pending.delivered().await {
                    Ok(_) => {
                        if !out.dlq {
                            M.produced.inc();
                        }
                        break;
                    }
                    Err(e) if e.is_permanent() && !out.dlq => {
                        warn!(error = %e, "Kafka refused a fix for good; sending the message to the DLQ");
                        let r = Rejection::new("kafka_refused", format!("{}: {e}", e.reason()));
                        out = self.dead_letter_record(&m.publish, &r, None);
                    }
                    Err(e) if e.is_permanent() => {
                        if !Self::after_dead_letter_refused(&mut out, &e) {
                            break;
                        }
                    }
                    Err(e) => {
                        M.produce_retries.inc();
                        failures += 1;
                        warn!(error = %e, retry_in = ?backoff.current(), dlq = out.dlq, "Kafka did not take a record; sending it again");
                        backoff.wait().await;
                        if failures.is_multiple_of(3) {
                            // Repeated failures of one record: the idempotent producer's
                            // state may be what the broker rejects. Start afresh.
                            if let Err(error) = self.producer.renew(generation) {
                                error!(%error, "cannot create a new Kafka producer");
                            }
                        }
                    }
                }
                match self.enqueue(&mut out, &m.publish).await {
                    Some(p) => pending = p,
                    None => break,
                }
            }
        }
        M.produce_latency
            .observe(m.received.elapsed().as_secs_f64());
        M.in_flight.dec();
        acks.ack(&m.publish, m.session).await;
    }

    /// Enqueues `out` (to the DLQ topic or the locations topic), retrying until librdkafka
    /// takes it. A fix it refuses for good is turned into a DLQ record; a DLQ record it
    /// refuses for good is shrunk, then given up on (`None`).
    async fn enqueue(&self, out: &mut Outgoing, p: &Publish) -> Option<Pending> {
        let mut backoff = Backoff::default();
        loop {
            let topic = if out.dlq { &self.dlq } else { &self.locations };
            let headers: Vec<(&str, &[u8])> = out
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_slice()))
                .collect();
            match self
                .producer
                .send(topic, &out.key, &out.value, &headers)
                .await
            {
                Ok(pending) => return Some(pending),
                Err(e) if e.is_permanent() && !out.dlq => {
                    warn!(error = %e, "Kafka refuses a fix; sending the message to the DLQ");
                    let r = Rejection::new("kafka_refused", format!("{}: {e}", e.reason()));
                    *out = self.dead_letter_record(p, &r, None);
                }
                Err(e) if e.is_permanent() => {
                    if !Self::after_dead_letter_refused(out, &e) {
                        return None;
                    }
                }
                Err(e) => {
                    M.produce_retries.inc();
                    error!(error = %e, topic, retry_in = ?backoff.current(), "cannot enqueue a record; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// The DLQ record of a message: its original bytes, the reason in headers.
    fn dead_letter_record(
        &self,
        p: &Publish,
        r: &Rejection,
        rejected_indexes: Option<&str>,
    ) -> Outgoing {
        M.dlq.with_label_values(&[r.reason]).inc();
        debug!(reason = r.reason, detail = r.detail, "to DLQ");
        // The detail can quote the payload (a parser's message): at most 1,024 characters, so the
        // record's size is bounded by max_dlq_value_bytes and not by the payload.
        let detail = locus_kafka::clip(&r.detail, 1024).into_owned();
        let mut headers: Vec<(&'static str, Vec<u8>)> = vec![
            ("locus-reason", r.reason.as_bytes().to_vec()),
            ("locus-error", detail.into_bytes()),
            ("locus-mqtt-topic", p.topic.to_vec()),
            ("locus-received-at", now_ms().to_string().into_bytes()),
        ];
        if let Some(ix) = rejected_indexes {
            headers.push(("locus-rejected-indexes", ix.as_bytes().to_vec()));
        }
        let mut out = Outgoing {
            dlq: true,
            key: p.topic.to_vec(),
            value: p.payload.to_vec(),
            headers,
        };
        out.truncate_value(self.cfg.max_dlq_value_bytes);
        out
    }

    /// What to do with a DLQ record Kafka refused for good (e.g. over the broker's size
    /// limit): send it again without the message's bytes; if even that is refused, count it
    /// and give up on it, so that no single message can stop the bridge. `false`: give up.
    fn after_dead_letter_refused(out: &mut Outgoing, error: &DeliveryError) -> bool {
        if out.value.is_empty() {
            M.dlq_dropped.inc();
            error!(%error, "Kafka refuses even the DLQ record without the message's bytes; the message is acknowledged without a DLQ record");
            return false;
        }
        warn!(%error, bytes = out.value.len(), "Kafka refused a DLQ record; sending it again without the message's bytes");
        out.truncate_value(0);
        true
    }

    /// Decodes an Avro payload, waiting out a registry outage (an outage is never the
    /// device's fault: nothing is dead-lettered or acknowledged meanwhile).
    async fn decode(
        &self,
        payload: &[u8],
        cancel: &CancellationToken,
    ) -> Result<LocationFix, CodecError> {
        through_registry_outages(cancel, || self.codec.decode(payload)).await
    }

    async fn encode(
        &self,
        fix: &LocationFix,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, CodecError> {
        through_registry_outages(cancel, || self.codec.encode(fix)).await
    }

    /// Turns one MQTT message into pending Kafka deliveries (fixes and/or a DLQ record).
    async fn process(&self, r: Received, cancel: &CancellationToken) -> InFlight {
        let now = now_ms();
        let mut m = InFlight {
            received: Instant::now(),
            deliveries: vec![],
            publish: r.publish,
            session: r.session,
        };
        let p = &m.publish;
        let rejection = |r: Rejection| (vec![], vec![], Some(r));
        let (fixes, rejected, whole): (
            Vec<LocationFix>,
            Vec<(usize, Rejection)>,
            Option<Rejection>,
        ) = match std::str::from_utf8(&p.topic) {
            Err(_) => rejection(Rejection::new("bad_topic", "topic is not UTF-8")),
            Ok(topic) if p.payload.len() > self.cfg.max_payload_bytes => rejection(Rejection::new(
                "oversize",
                format!(
                    "payload of {} bytes on {topic} exceeds bridge.max_payload_bytes ({})",
                    p.payload.len(),
                    self.cfg.max_payload_bytes
                ),
            )),
            Ok(topic) => match self.template.extract(topic) {
                Err(r) => rejection(r),
                Ok((tenant, user)) if p.payload.first() == Some(&0) => {
                    match self.decode(&p.payload, cancel).await {
                        Ok(mut fix) => {
                            fix.received_at = now;
                            match check_fix(&fix, tenant, user, now, &self.limits) {
                                Ok(()) => (vec![fix], vec![], None),
                                Err(r) => rejection(r),
                            }
                        }
                        Err(e) => rejection(Rejection::new(e.reason(), e.to_string())),
                    }
                }
                Ok((tenant, user)) => match parse_payload(
                    &p.payload,
                    tenant,
                    user,
                    now,
                    &self.limits,
                    self.cfg.max_batch_len,
                ) {
                    Ok(parsed) => (parsed.fixes, parsed.rejected, None),
                    Err(r) => rejection(r),
                },
            },
        };

        let mut records: Vec<Outgoing> = Vec::with_capacity(fixes.len() + 1);
        for fix in fixes {
            M.freshness.observe(((now - fix.ts).max(0) as f64) / 1000.0);
            match self.encode(&fix, cancel).await {
                Ok(bytes) => records.push(Outgoing {
                    dlq: false,
                    // One header: the tenant, for consumers that pass over other tenants'
                    // fixes without decoding them. Everything else is in the Avro value.
                    headers: vec![(TENANT_HEADER, fix.tenant.into_bytes())],
                    key: fix.user_id.into_bytes(),
                    value: bytes,
                }),
                Err(e) => {
                    let r = Rejection::new(e.reason(), e.to_string());
                    records.push(self.dead_letter_record(p, &r, None));
                }
            }
        }
        if let Some(r) = whole {
            records.push(self.dead_letter_record(p, &r, None));
        } else if !rejected.is_empty() {
            // One DLQ record for the message: its original bytes, with which elements were
            // rejected and why (the first reason labels it; every reason is counted).
            for (_, r) in rejected.iter().skip(1) {
                M.dlq.with_label_values(&[r.reason]).inc();
            }
            let indexes: Vec<String> = rejected.iter().map(|(i, _)| i.to_string()).collect();
            let detail = rejected
                .iter()
                .map(|(i, r)| format!("[{i}] {}", r.detail))
                .collect::<Vec<_>>()
                .join("; ");
            let first = Rejection::new(rejected[0].1.reason, detail);
            records.push(self.dead_letter_record(p, &first, Some(&indexes.join(","))));
        }
        for mut out in records {
            if let Some(pending) = self.enqueue(&mut out, &m.publish).await {
                m.deliveries.push((pending, out));
            }
        }
        m
    }
}

/// Runs a codec call until it is not a registry outage (or `cancel`): an outage is not the
/// input's fault, so wait for the registry, backing off, and never drop.
async fn through_registry_outages<T, F, Fut>(
    cancel: &CancellationToken,
    mut call: F,
) -> Result<T, CodecError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CodecError>>,
{
    let mut backoff = Backoff::default();
    loop {
        match call().await {
            Err(CodecError::Registry(e)) if !cancel.is_cancelled() => {
                M.registry_retries.inc();
                warn!(error = e, retry_in = ?backoff.current(), "Schema Registry unavailable; retrying");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}

/// Ends `cfg.client_id`'s session: a connection with clean start and session expiry 0,
/// straight to the broker, then a disconnect.
async fn end_session(
    cfg: &BridgeConfig,
    tls: Option<rumqttc::TlsConfiguration>,
) -> Result<(), BridgeError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.mqtt_host.clone(), cfg.mqtt_port);
    if let Some(tls) = tls {
        o.set_transport(Transport::tls_with_config(tls));
    }
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_clean_start(true)
        .set_session_expiry_interval(Some(0));
    if !cfg.username.is_empty() {
        o.set_credentials(cfg.username.clone(), cfg.password.expose().to_string());
    }
    let (client, mut eventloop) = AsyncClient::new(o, 4);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                let _ = client.try_disconnect();
            }
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => {
                // Let the DISCONNECT reach the broker before the connection drops.
                let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
                return Ok(());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(BridgeError::Mqtt(format!("ending the session: {e}"))),
            Err(_) => {
                return Err(BridgeError::Mqtt(
                    "ending the session: no answer from the MQTT broker within 30 s".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError as RdError;
    use rdkafka::types::RDKafkaErrorCode;

    fn dead_letter(value: Vec<u8>) -> Outgoing {
        Outgoing {
            dlq: true,
            key: b"t".to_vec(),
            value,
            headers: vec![("locus-reason", b"oversize".to_vec())],
        }
    }

    fn header<'a>(out: &'a Outgoing, name: &str) -> Option<&'a [u8]> {
        out.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn a_long_value_is_cut_and_marked_once() {
        let mut out = dead_letter(vec![7; 10]);
        out.truncate_value(10);
        assert_eq!(out.value.len(), 10);
        assert_eq!(header(&out, "locus-truncated"), None, "nothing was cut");

        out.truncate_value(4);
        assert_eq!(out.value, vec![7; 4]);
        assert_eq!(header(&out, "locus-original-bytes"), Some(&b"10"[..]));
        out.truncate_value(0);
        assert!(out.value.is_empty());
        assert_eq!(header(&out, "locus-original-bytes"), Some(&b"10"[..]));
        assert_eq!(
            out.headers
                .iter()
                .filter(|(k, _)| *k == "locus-truncated")
                .count(),
            1
        );
    }

    #[test]
    fn a_refused_dead_letter_is_sent_once_more_without_bytes_then_given_up() {
        let error = DeliveryError(RdError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        let mut out = dead_letter(vec![1; 100]);
        assert!(Bridge::after_dead_letter_refused(&mut out, &error));
        assert!(out.value.is_empty());
        assert_eq!(header(&out, "locus-original-bytes"), Some(&b"100"[..]));
        let dropped = M.dlq_dropped.get();
        assert!(!Bridge::after_dead_letter_refused(&mut out, &error));
        assert_eq!(M.dlq_dropped.get(), dropped + 1);
    }
}
