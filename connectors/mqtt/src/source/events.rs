//! The MQTT event loop: polled continuously and never blocked by the pipeline. It
//! (re)subscribes on every connect (or unsubscribes, when draining), hands publishes to the
//! worker, holds what a broker sends beyond the receive maximum, and reconnects with backoff.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use locus_kafka::Backoff;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop as MqttEventLoop};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{BridgeHealth, DrainWatch, Received, Session, now_ms};
use crate::metrics::M;
use crate::relay::Relay;

/// Everything the event loop owns.
pub(super) struct EventLoop {
    pub(super) eventloop: MqttEventLoop,
    pub(super) client: AsyncClient,
    pub(super) subscription: String,
    pub(super) publish_tx: mpsc::Sender<Received>,
    /// The pausing relay (`bridge.pause_reads`): kept alive here, its gate closed while the
    /// bridge holds `max_held` messages.
    pub(super) relay: Option<Relay>,
    pub(super) health: BridgeHealth,
    pub(super) drain: Option<Arc<DrainWatch>>,
    pub(super) receive_maximum: usize,
    pub(super) max_held: usize,
    /// The MQTT session messages arrive in (a new one at every CONNACK without
    /// `session_present`): a PUBACK is only sent in the session of its message.
    pub(super) session: Session,
}

/// Messages the pipeline has no room for yet. The broker should never send more than the
/// receive maximum unacknowledged, but some do (Mosquitto 2.0.11, live and on session
/// resume): they are held here, and at `max_held` the relay's gate closes so nothing more is
/// read from the broker until the pipeline has taken half of them. Polling goes on (PUBACKs,
/// pings): stopping it would stall the acks.
#[derive(Default)]
struct Held {
    queue: VecDeque<Received>,
    paused: bool,
    warned: bool,
}

/// Whether the loop goes on.
enum Next {
    Continue,
    Stop,
}

impl EventLoop {
    pub(super) async fn run(mut self, stop: CancellationToken) {
        self.serve(stop).await;
        self.health.ready.store(false, Ordering::Relaxed);
        M.mqtt_connected.set(0);
        // Close the client's connection, then let the relay forward what it still has (the
        // last PUBACKs and the DISCONNECT) before the process may exit.
        let EventLoop {
            eventloop, relay, ..
        } = self;
        drop(eventloop);
        if let Some(relay) = relay {
            relay
                .finish(crate::relay::CLOSE_WAIT + std::time::Duration::from_secs(2))
                .await;
        }
    }

    async fn serve(&mut self, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut held = Held::default();
        // Registered once, not per event: this loop runs for every MQTT packet.
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let event = tokio::select! {
                biased;
                _ = &mut stopped => break,
                permit = self.publish_tx.reserve(), if !held.queue.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(p) = held.queue.pop_front() {
                                permit.send(p);
                            }
                        }
                        Err(_) => {
                            // Stopping: the worker takes nothing more. What is held stays
                            // unacknowledged (the broker sends it again).
                            M.in_flight.sub(held.queue.len() as i64);
                            held.queue.clear();
                        }
                    }
                    self.released(&mut held);
                    continue;
                }
                e = self.eventloop.poll() => e,
            };
            let next = match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.connected(&ack);
                    backoff = Backoff::default();
                    Next::Continue
                }
                Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                    if let Some(w) = &self.drain {
                        info!("unsubscribed: draining what the session holds");
                        w.last_message_ms.store(now_ms(), Ordering::Relaxed);
                        w.unsubscribed.store(true, Ordering::Relaxed);
                        self.health.ready.store(true, Ordering::Relaxed);
                    }
                    Next::Continue
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    // Ready once the broker routes the devices' messages to this session: a
                    // message published to a shared subscription nobody holds yet is dropped.
                    let granted = !ack.return_codes.is_empty()
                        && ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                    if granted {
                        info!(reasons = ?ack.return_codes, "MQTT subscription acknowledged");
                        self.health.ready.store(true, Ordering::Relaxed);
                    } else {
                        error!(reasons = ?ack.return_codes, subscription = self.subscription, "the MQTT broker refused the subscription; not ready");
                    }
                    Next::Continue
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.received(p, &mut held),
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    debug!("MQTT disconnect sent");
                    Next::Stop
                }
                Ok(_) => Next::Continue,
                Err(error) => {
                    self.disconnected(&error, &backoff);
                    let next = tokio::select! {
                        _ = &mut stopped => Next::Stop,
                        _ = tokio::time::sleep(backoff.current()) => Next::Continue,
                    };
                    backoff.grow();
                    next
                }
            };
            if let Next::Stop = next {
                break;
            }
        }
    }

    /// Connected: subscribe (a no-op if the session kept it), or, when draining, unsubscribe
    /// so that only what the session holds arrives.
    fn connected(&self, ack: &ConnAck) {
        let session = if ack.session_present {
            self.session.current()
        } else {
            self.session.start_new()
        };
        if let Some(r) = &self.relay {
            r.connected(session);
        }
        info!(
            session_present = ack.session_present,
            session, "MQTT connected"
        );
        if let Some(w) = &self.drain {
            if !ack.session_present {
                warn!("the broker holds no session for this client id: nothing to drain");
            }
            w.last_message_ms.store(now_ms(), Ordering::Relaxed);
        }
        // Ready (`/readyz`) only once subscribed (or, draining, unsubscribed): see `serve`.
        M.mqtt_connected.set(1);
        let queued = if self.drain.is_some() {
            self.client.try_unsubscribe(self.subscription.clone())
        } else {
            self.client
                .try_subscribe(self.subscription.clone(), QoS::AtLeastOnce)
        };
        if let Err(error) = queued {
            error!(%error, draining = self.drain.is_some(), "cannot queue the MQTT (un)subscription");
        }
    }

    /// A publish: to the worker, or held (in order) while the worker has no room.
    fn received(&self, publish: Publish, held: &mut Held) -> Next {
        let p = Received {
            publish,
            session: self.session.current(),
        };
        M.received.inc();
        M.in_flight.inc();
        if let Some(w) = &self.drain {
            w.last_message_ms.store(now_ms(), Ordering::Relaxed);
        }
        if !held.queue.is_empty() {
            held.queue.push_back(p);
        } else {
            match self.publish_tx.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) => held.queue.push_back(p),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // Stopping: the worker takes nothing more. Left unacknowledged (the
                    // broker sends it again), while the loop goes on to send the DISCONNECT.
                    M.in_flight.dec();
                    return Next::Continue;
                }
            }
        }
        if !held.paused && held.queue.len() >= self.max_held {
            if !held.warned {
                held.warned = true;
                warn!(
                    held = held.queue.len(),
                    receive_maximum = self.receive_maximum,
                    pause_reads = self.relay.is_some(),
                    "the MQTT broker sends beyond the receive maximum; with bridge.pause_reads the bridge stops reading whenever it holds bridge.max_held_messages, without it they are held in memory"
                );
            }
            if let Some(r) = &self.relay {
                held.paused = true;
                r.set_reading(false);
                M.read_pauses.inc();
            }
        }
        M.overflow.set(held.queue.len() as i64);
        Next::Continue
    }

    /// A held message went to the worker: reopen the gate once half of them have.
    fn released(&self, held: &mut Held) {
        if held.paused && held.queue.len() <= self.max_held / 2 {
            held.paused = false;
            if let Some(r) = &self.relay {
                r.set_reading(true);
            }
        }
        M.overflow.set(held.queue.len() as i64);
    }

    fn disconnected(&self, error: &ConnectionError, backoff: &Backoff) {
        self.health.ready.store(false, Ordering::Relaxed);
        if let Some(w) = &self.drain {
            // Unsubscribed again after the reconnect, before drain may end.
            w.unsubscribed.store(false, Ordering::Relaxed);
        }
        M.mqtt_connected.set(0);
        M.mqtt_errors.inc();
        warn!(%error, retry_in = ?backoff.current(), "MQTT connection error; reconnecting");
    }
}
