//! One open stream: what it sends next (the opening snapshot or resume, then live fixes,
//! heartbeats, and the event that ends it), and the slot it frees however it ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::PushApi;
use crate::cursor;
use crate::hub::Client;
use crate::metrics::{M, STAGE};
use crate::snapshot::SnapshotQuery;
use crate::source::ReplayItem;

/// Frees the connection slot and the subscription when the stream ends, however it ends.
pub(super) struct Guard {
    pub(super) api: Arc<PushApi>,
    pub(super) client: Arc<Client>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.api.hub.unsubscribe(&self.client);
        self.api.connections.fetch_sub(1, Ordering::Relaxed);
        M.connections.dec();
        if self.api.config.max_connections_per_tenant > 0 {
            let mut t = self
                .api
                .per_tenant
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = t.get_mut(&self.client.tenant) {
                *n -= 1;
                if *n == 0 {
                    t.remove(&self.client.tenant);
                }
            }
        }
    }
}

pub(super) enum Opening {
    Snapshot { gap: Option<String> },
    Replay(mpsc::Receiver<ReplayItem>),
    Live,
}

pub(super) struct Session {
    pub(super) guard: Guard,
    /// Positions from which the live queue has every fix.
    pub(super) live_from: Vec<i64>,
    pub(super) opening: Option<Opening>,
    pub(super) heartbeat: Duration,
    pub(super) expires_at: Instant,
    pub(super) last_write: Instant,
    pub(super) replay: Option<mpsc::Receiver<ReplayItem>>,
    pub(super) done: bool,
    pub(super) sent_retry: bool,
}

const MAX_EVENTS_PER_WRITE: usize = 256;
const EXPIRED: &[u8] = br#"{"error":"the token expired; reconnect with a fresh one"}"#;
const OVERFLOW: &[u8] = br#"{"error":"this stream fell too far behind; reconnect to resume"}"#;

fn event(buf: &mut BytesMut, kind: &str, id: Option<&str>, data: &[u8]) {
    buf.put_slice(b"event: ");
    buf.put_slice(kind.as_bytes());
    if let Some(id) = id {
        buf.put_slice(b"\nid: ");
        buf.put_slice(id.as_bytes());
    }
    buf.put_slice(b"\ndata: ");
    buf.put_slice(data);
    buf.put_slice(b"\n\n");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Session {
    fn api(&self) -> &PushApi {
        &self.guard.api
    }

    pub(super) async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut buf = BytesMut::new();
        // Checked at every write, not only while idle: a stream that always has fixes
        // waiting (a slow reader) must still end when its token does.
        if Instant::now() >= self.expires_at {
            return Some(self.end(buf, "expired", EXPIRED));
        }
        if !self.sent_retry {
            self.sent_retry = true;
            buf.put_slice(format!("retry: {}\n\n", self.api().config.retry_ms).as_bytes());
        }
        match self.opening.take() {
            Some(Opening::Snapshot { gap }) => {
                if let Some(reason) = gap {
                    self.gap(&mut buf, &reason);
                }
                // Boxed: the Redis query is large and runs once; an idle stream should not
                // carry its space for its whole life.
                Box::pin(self.snapshot(&mut buf)).await;
                return Some(self.wrote(buf));
            }
            Some(Opening::Replay(rx)) => self.replay = Some(rx),
            Some(Opening::Live) => {}
            None => {}
        }
        if self.replay.is_some() {
            return Some(Box::pin(self.replay_chunk(buf)).await);
        }
        loop {
            let client = self.guard.client.clone();
            let batch = client.take(&self.guard.api.hub, MAX_EVENTS_PER_WRITE);
            if !batch.events.is_empty() {
                let now = now_ms();
                for (f, id) in &batch.events {
                    event(&mut buf, "fix", Some(id), &f.json);
                    M.latency
                        .observe((now.saturating_sub(f.received_at).max(0) as f64) / 1000.0);
                }
                STAGE.applied(batch.events.len() as u64);
                STAGE.fresh(batch.events.iter().map(|(f, _)| f.ts));
                M.events
                    .with_label_values(&["fix"])
                    .inc_by(batch.events.len() as u64);
                return Some(self.wrote(buf));
            }
            if batch.overflow {
                return Some(self.end(buf, "overflow", OVERFLOW));
            }
            if !buf.is_empty() {
                return Some(self.wrote(buf));
            }
            let heartbeat_at = self.last_write + self.heartbeat;
            let due = batch.next_due.map(Instant::from_std);
            tokio::select! {
                _ = client.notify.notified() => {}
                _ = async { if let Some(d) = due { tokio::time::sleep_until(d).await } else { std::future::pending::<()>().await } } => {}
                _ = tokio::time::sleep_until(heartbeat_at) => {
                    return Some(self.wrote(Bytes::from_static(b":\n\n").into()));
                }
                _ = tokio::time::sleep_until(self.expires_at) => {
                    return Some(self.end(buf, "expired", EXPIRED));
                }
                _ = self.guard.api.cancel.cancelled() => {
                    M.closed.with_label_values(&["shutdown"]).inc();
                    return None;
                }
            }
        }
    }

    /// The last event of a stream the server ends (`expired`, `overflow`), counted by reason.
    fn end(&mut self, mut buf: BytesMut, reason: &str, data: &[u8]) -> Bytes {
        M.closed.with_label_values(&[reason]).inc();
        M.events.with_label_values(&[reason]).inc();
        event(&mut buf, reason, None, data);
        self.done = true;
        buf.freeze()
    }

    fn wrote(&mut self, buf: BytesMut) -> Bytes {
        self.last_write = Instant::now();
        buf.freeze()
    }

    fn gap(&mut self, buf: &mut BytesMut, reason: &str) {
        let kind = if reason.contains("resume_max_records") {
            "too_far_behind"
        } else if reason.contains("retention") {
            "retention"
        } else if reason.contains("ahead of the log") {
            "ahead_of_log"
        } else if reason.contains("another topic or cluster") {
            "other_log"
        } else {
            "unknown_id"
        };
        M.gaps.with_label_values(&[kind]).inc();
        M.events.with_label_values(&["gap"]).inc();
        let data = json!({ "reason": reason }).to_string();
        event(buf, "gap", None, data.as_bytes());
    }

    async fn snapshot(&mut self, buf: &mut BytesMut) {
        let api = self.guard.api.clone();
        let c = &self.guard.client;
        let max = api.config.snapshot_max;
        let (positions, complete) = match api.snapshots.get() {
            None => (vec![], false),
            Some(source) => {
                let users: Option<Vec<String>> = c.filter.users.as_ref().map(|users| {
                    let mut u: Vec<String> = users.iter().cloned().collect();
                    u.sort();
                    u.truncate(max);
                    u
                });
                let query = match (&users, c.filter.bbox) {
                    (Some(u), _) => SnapshotQuery::Users(u),
                    (None, Some(b)) => SnapshotQuery::BBox(b),
                    (None, None) => SnapshotQuery::Recent,
                };
                match source.snapshot(&c.tenant, query, max).await {
                    Ok(p) => {
                        let p: Vec<serde_json::Value> = p
                            .into_iter()
                            .filter(|p| {
                                c.filter.bbox.is_none_or(|[x0, y0, x1, y1]| {
                                    p.lon >= x0 && p.lon <= x1 && p.lat >= y0 && p.lat <= y1
                                })
                            })
                            .map(|p| p.json)
                            .collect();
                        let complete = p.len() < max;
                        (p, complete)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot: the position cache did not answer");
                        (vec![], false)
                    }
                }
            }
        };
        let mut id = self.live_from.clone();
        c.raise_to_skip(&mut id);
        let data = json!({ "positions": positions, "complete": complete }).to_string();
        M.events.with_label_values(&["snapshot"]).inc();
        event(
            buf,
            "snapshot",
            Some(&cursor::encode(c.log, &id)),
            data.as_bytes(),
        );
    }

    async fn replay_chunk(&mut self, mut buf: BytesMut) -> Bytes {
        let Some(rx) = self.replay.as_mut() else {
            return buf.freeze();
        };
        let first = tokio::select! {
            item = rx.recv() => item,
            _ = tokio::time::sleep_until(self.last_write + self.heartbeat) => {
                buf.put_slice(b":\n\n");
                return self.wrote(buf);
            }
        };
        let mut item = first;
        let mut n = 0;
        loop {
            match item {
                Some(ReplayItem::Fix(f, id)) => {
                    event(&mut buf, "fix", Some(&id), &f.json);
                    // Sent, but not fresh: a resume replays fixes that may be minutes old, and
                    // freshness is the live path's.
                    STAGE.applied(1);
                    n += 1;
                }
                Some(ReplayItem::Done) | None => {
                    self.replay = None;
                    break;
                }
                Some(ReplayItem::Gap(reason)) => {
                    self.replay = None;
                    self.gap(&mut buf, &reason);
                    Box::pin(self.snapshot(&mut buf)).await;
                    break;
                }
                Some(ReplayItem::Failed(e)) => {
                    tracing::warn!(error = e, "resume replay failed; closing the stream");
                    M.closed.with_label_values(&["replay_failed"]).inc();
                    self.replay = None;
                    self.done = true;
                    break;
                }
            }
            if n >= MAX_EVENTS_PER_WRITE {
                break;
            }
            item = match self.replay.as_mut().map(|rx| rx.try_recv()) {
                Some(Ok(i)) => Some(i),
                _ => break,
            };
        }
        M.events.with_label_values(&["replay"]).inc_by(n as u64);
        self.wrote(buf)
    }
}
