//! Fan-out: every fix the reader takes from Kafka is offered to the streams of its tenant.
//!
//! Offering never blocks and never waits for a client: each stream has a queue that holds
//! at most one fix per user (a newer fix replaces the undelivered one: positions supersede
//! each other), a per-user rate cap, and a bound on how many users may be pending.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::metrics::M;

/// One fix as the streams send it: decoded once, serialized once, shared by every stream.
#[derive(Debug)]
pub struct FixEvent {
    pub partition: i32,
    pub offset: i64,
    pub tenant: Arc<str>,
    pub user: Arc<str>,
    pub lat: f64,
    pub lon: f64,
    /// When the bridge received it (ms since the epoch).
    pub received_at: i64,
    /// When it was taken (event time, ms since the epoch).
    pub ts: i64,
    /// The `data:` of the `fix` event (JSON).
    pub json: Bytes,
}

/// What a stream asked for, within what its token allows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub users: Option<HashSet<String>>,
    /// min lon, min lat, max lon, max lat.
    pub bbox: Option<[f64; 4]>,
}

impl Filter {
    pub fn matches(&self, f: &FixEvent) -> bool {
        if let Some(u) = &self.users
            && !u.contains(&*f.user)
        {
            return false;
        }
        if let Some([x0, y0, x1, y1]) = self.bbox
            && !(f.lon >= x0 && f.lon <= x1 && f.lat >= y0 && f.lat <= y1)
        {
            return false;
        }
        true
    }
}

/// Without a rate cap, this many fixes queue in order before conflation starts: a client
/// that keeps up gets every fix even when the reader hands over a burst.
pub const IN_ORDER_MAX: usize = 4096;

#[derive(Debug, Default)]
struct Queue {
    /// Fixes in arrival order (only without a rate cap, and only up to `IN_ORDER_MAX`).
    in_order: VecDeque<Arc<FixEvent>>,
    /// The undelivered fix of each user conflated so far (at most one per user).
    pending: HashMap<Arc<str>, Arc<FixEvent>>,
    /// Users whose fix may go now, oldest first.
    ready: VecDeque<Arc<str>>,
    /// Users whose fix waits for their rate slot.
    delayed: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// When each user's last fix went out (only while the rate cap may still apply).
    last_sent: HashMap<Arc<str>, Instant>,
    overflow: bool,
}

/// One stream's subscription.
#[derive(Debug)]
pub struct Client {
    id: u64,
    pub tenant: Arc<str>,
    pub filter: Filter,
    /// Per partition, offsets below this were already delivered by another connection
    /// (a resume from a replica that was ahead of this one).
    skip_below: Option<Box<[i64]>>,
    interval: Option<Duration>,
    max_pending: usize,
    queue: Mutex<Queue>,
    pub notify: Notify,
    /// The log its event ids name (see [`crate::cursor`]).
    pub log: u32,
}

/// What a stream takes from its queue in one go.
#[derive(Debug, Default)]
pub struct Batch {
    /// Each fix with the event id to send with it.
    pub events: Vec<(Arc<FixEvent>, String)>,
    pub overflow: bool,
    /// When the next rate-capped fix becomes due.
    pub next_due: Option<Instant>,
}

impl Client {
    pub fn new(
        tenant: &str,
        filter: Filter,
        skip_below: Option<Vec<i64>>,
        user_rate_per_s: f64,
        max_pending: usize,
    ) -> Client {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Client {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            tenant: tenant.into(),
            filter,
            skip_below: skip_below.map(Vec::into_boxed_slice),
            interval: (user_rate_per_s > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / user_rate_per_s)),
            max_pending,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            log: 0,
        }
    }

    /// Its event ids name log `log`.
    pub fn with_log(mut self, log: u32) -> Client {
        self.log = log;
        self
    }

    fn skips(&self, f: &FixEvent) -> bool {
        self.skip_below
            .as_ref()
            .and_then(|s| s.get(f.partition as usize))
            .is_some_and(|&below| f.offset < below)
    }

    /// Whether this stream wants `f` at all (tenant checked by the hub).
    pub fn wants(&self, f: &FixEvent) -> bool {
        self.filter.matches(f) && !self.skips(f)
    }

    /// Queues a fix; never waits. A user's undelivered fix is replaced (conflated).
    pub fn offer(&self, f: &Arc<FixEvent>) {
        if !self.wants(f) {
            return;
        }
        let Ok(mut q) = self.queue.lock() else { return };
        if q.overflow {
            return;
        }
        // In order while the client keeps up (and no rate cap applies); a user already
        // conflated stays conflated, so the user's fixes never overtake each other.
        if self.interval.is_none()
            && q.in_order.len() < IN_ORDER_MAX
            && !q.pending.contains_key(&f.user)
        {
            q.in_order.push_back(f.clone());
            drop(q);
            self.notify.notify_one();
            return;
        }
        if let Some(slot) = q.pending.get_mut(&f.user) {
            *slot = f.clone();
            M.conflated.inc();
            return;
        }
        let due = match (self.interval, q.last_sent.get(&f.user)) {
            (Some(iv), Some(&t)) => Some(t + iv).filter(|&d| d > Instant::now()),
            _ => None,
        };
        q.pending.insert(f.user.clone(), f.clone());
        match due {
            Some(d) => q.delayed.push(Reverse((d, f.user.clone()))),
            None => q.ready.push_back(f.user.clone()),
        }
        if q.pending.len() > self.max_pending {
            q.overflow = true;
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Takes up to `max` fixes that may go now, each with the event id that is true once it
    /// has been delivered: per partition, the lowest offset still pending for this stream,
    /// or the hub's position if none is.
    pub fn take(&self, hub: &Hub, max: usize) -> Batch {
        let now = Instant::now();
        let Ok(mut q) = self.queue.lock() else {
            return Batch::default();
        };
        while let Some(Reverse((due, _))) = q.delayed.peek() {
            if *due > now {
                break;
            }
            if let Some(Reverse((_, u))) = q.delayed.pop() {
                q.ready.push_back(u);
            }
        }
        let mut out: Vec<Arc<FixEvent>> = Vec::new();
        while out.len() < max {
            let Some(f) = q.in_order.pop_front() else {
                break;
            };
            out.push(f);
        }
        while out.len() < max {
            let Some(u) = q.ready.pop_front() else { break };
            if let Some(f) = q.pending.remove(&u) {
                if self.interval.is_some() {
                    q.last_sent.insert(u, now);
                }
                out.push(f);
            }
        }
        if let Some(iv) = self.interval
            && q.last_sent.len() > 2 * q.pending.len() + 1024
        {
            q.last_sent.retain(|_, t| now.duration_since(*t) < iv);
        }
        let overflow = q.overflow;
        let next_due = q.delayed.peek().map(|Reverse((d, _))| *d);
        if out.is_empty() {
            return Batch {
                events: vec![],
                overflow,
                next_due,
            };
        }
        // Positions with everything still pending held back (read under the queue lock: the
        // hub queues a fix before it moves its position past it).
        let mut base = hub.positions();
        self.raise_to_skip(&mut base);
        for f in q.pending.values().chain(q.in_order.iter()) {
            if let Some(b) = base.get_mut(f.partition as usize) {
                *b = (*b).min(f.offset);
            }
        }
        drop(q);
        // Walk back: the id of event k also holds back the events after it in this batch.
        let mut ids = vec![String::new(); out.len()];
        let mut cur = base;
        for (k, f) in out.iter().enumerate().rev() {
            ids[k] = crate::cursor::encode(self.log, &cur);
            if let Some(b) = cur.get_mut(f.partition as usize) {
                *b = (*b).min(f.offset);
            }
        }
        Batch {
            events: out.into_iter().zip(ids).collect(),
            overflow,
            next_due,
        }
    }

    /// Positions never go below what the client already had (resume from a replica ahead).
    pub fn raise_to_skip(&self, pos: &mut [i64]) {
        if let Some(s) = &self.skip_below {
            for (p, &below) in pos.iter_mut().zip(s.iter()) {
                *p = (*p).max(below);
            }
        }
    }
}

/// One tenant's streams by id.
type Streams = HashMap<u64, Arc<Client>>;

/// Every stream of this process, by tenant, and how far the reader has routed each partition.
#[derive(Debug, Default)]
pub struct Hub {
    /// The log the reader reads (see [`crate::cursor::log_id`]); 0 until it started.
    log: std::sync::atomic::AtomicU32,
    tenants: RwLock<HashMap<Arc<str>, Streams>>,
    /// Per partition, the next offset the hub will route (empty until the reader started).
    next: RwLock<Vec<i64>>,
}

impl Hub {
    /// The log the reader reads.
    pub fn log(&self) -> u32 {
        self.log.load(Ordering::Acquire)
    }

    pub fn set_log(&self, log: u32) {
        self.log.store(log, Ordering::Release);
    }

    /// Ready once the reader has its starting positions.
    pub fn is_ready(&self) -> bool {
        self.next.read().map(|n| !n.is_empty()).unwrap_or(false)
    }

    pub fn positions(&self) -> Vec<i64> {
        self.next.read().map(|n| n.clone()).unwrap_or_default()
    }

    /// Sets the starting positions (and adds partitions the topic grew).
    pub fn start_at(&self, next: &[i64]) {
        if let Ok(mut n) = self.next.write() {
            for (p, &o) in next.iter().enumerate() {
                if p >= n.len() {
                    n.push(o);
                } else if n[p] < o {
                    n[p] = o;
                }
            }
        }
    }

    /// Offers one fix to the tenant's streams, then moves the partition's position past it.
    /// Both under the streams' read lock: a stream subscribing meanwhile (write lock) sees
    /// either the fix offered or the position before it, never neither.
    pub fn route(&self, f: Arc<FixEvent>) {
        let t = self.tenants.read();
        if let Ok(t) = &t
            && let Some(clients) = t.get(&f.tenant)
        {
            for c in clients.values() {
                c.offer(&f);
            }
        }
        self.advance(f.partition, f.offset + 1);
    }

    /// A record of `tenant` that no stream of this process watches: moves the partition's
    /// position past it and says so (`true`), so the reader need not decode it. Under the
    /// read lock, as in [`Hub::route`].
    pub fn skip_unwatched(&self, tenant: &[u8], partition: i32, offset: i64) -> bool {
        let Ok(tenant) = std::str::from_utf8(tenant) else {
            return false;
        };
        let t = self.tenants.read();
        let watched = t.as_ref().map_or(true, |t| t.contains_key(tenant));
        if !watched {
            self.advance(partition, offset + 1);
        }
        !watched
    }

    /// Moves a partition's position (a record that is not for any stream).
    pub fn advance(&self, partition: i32, next: i64) {
        if let Ok(mut n) = self.next.write()
            && let Some(p) = n.get_mut(partition as usize)
        {
            *p = (*p).max(next);
        }
    }

    /// Adds a stream; returns the positions from which it gets every fix live.
    pub fn subscribe(&self, c: &Arc<Client>) -> Vec<i64> {
        let Ok(mut t) = self.tenants.write() else {
            return vec![];
        };
        t.entry(c.tenant.clone())
            .or_default()
            .insert(c.id, c.clone());
        // Read while holding the write lock: no fix is being routed, so every fix at or
        // above these positions reaches the new stream.
        self.positions()
    }

    pub fn unsubscribe(&self, c: &Client) {
        if let Ok(mut t) = self.tenants.write()
            && let Some(m) = t.get_mut(&c.tenant)
        {
            m.remove(&c.id);
            if m.is_empty() {
                t.remove(&c.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(p: i32, o: i64, user: &str) -> Arc<FixEvent> {
        Arc::new(FixEvent {
            partition: p,
            offset: o,
            tenant: "t".into(),
            user: user.into(),
            lat: 1.0,
            lon: 2.0,
            received_at: 0,
            ts: 0,
            json: Bytes::from(format!("{{\"user_id\":\"{user}\",\"o\":{o}}}")),
        })
    }

    fn ids(b: &Batch) -> Vec<Vec<i64>> {
        b.events
            .iter()
            .map(|(_, id)| crate::cursor::decode(id).expect("own id").1)
            .collect()
    }

    #[test]
    fn ids_hold_back_what_is_still_pending_and_are_exact_when_nothing_is() {
        let hub = Hub::default();
        hub.start_at(&[0, 0]);
        let c = Arc::new(Client::new("t", Filter::default(), None, 0.0, 100));
        assert_eq!(hub.subscribe(&c), vec![0, 0]);
        hub.route(fix(0, 0, "a"));
        hub.route(fix(1, 0, "b"));
        hub.route(fix(0, 1, "c"));
        let b = c.take(&hub, 2);
        // after a@0/0: b@1/0 and c@0/1 still pending
        assert_eq!(ids(&b), vec![vec![1, 0], vec![1, 1]]);
        let b = c.take(&hub, 10);
        assert_eq!(ids(&b), vec![vec![2, 1]]);
    }

    #[test]
    fn without_a_rate_cap_a_burst_is_delivered_in_order_then_conflated_past_the_bound() {
        let hub = Hub::default();
        hub.start_at(&[0]);
        let c = Arc::new(Client::new("t", Filter::default(), None, 0.0, 100));
        hub.subscribe(&c);
        hub.route(fix(0, 0, "a"));
        hub.route(fix(0, 1, "a"));
        let b = c.take(&hub, 10);
        let offsets: Vec<i64> = b.events.iter().map(|(f, _)| f.offset).collect();
        assert_eq!(offsets, vec![0, 1], "a client that keeps up gets every fix");
        // fill the in-order queue, then a and b are conflated beyond it
        let mut o = 2;
        for _ in 0..IN_ORDER_MAX {
            hub.route(fix(0, o, "x"));
            o += 1;
        }
        hub.route(fix(0, o, "a"));
        hub.route(fix(0, o + 1, "b"));
        hub.route(fix(0, o + 2, "a"));
        let b = c.take(&hub, IN_ORDER_MAX + 10);
        let tail: Vec<i64> = b.events[IN_ORDER_MAX..]
            .iter()
            .map(|(f, _)| f.offset)
            .collect();
        assert_eq!(
            tail,
            vec![o + 2, o + 1],
            "a's newer fix replaced the older, kept its turn"
        );
        assert_eq!(ids(&b).last(), Some(&vec![o + 3]));
    }

    #[test]
    fn the_rate_cap_delays_then_sends_only_the_latest() {
        let hub = Hub::default();
        hub.start_at(&[0]);
        let c = Arc::new(Client::new("t", Filter::default(), None, 20.0, 100));
        hub.subscribe(&c);
        hub.route(fix(0, 0, "a"));
        assert_eq!(c.take(&hub, 10).events.len(), 1);
        hub.route(fix(0, 1, "a"));
        hub.route(fix(0, 2, "a"));
        let b = c.take(&hub, 10);
        assert!(b.events.is_empty());
        let due = b.next_due.expect("a waits for its slot");
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let b = c.take(&hub, 10);
        let offsets: Vec<i64> = b.events.iter().map(|(f, _)| f.offset).collect();
        assert_eq!(offsets, vec![2]);
    }

    #[test]
    fn filters_and_tenants_route_only_what_a_stream_may_see() {
        let hub = Hub::default();
        hub.start_at(&[0]);
        let users = Filter {
            users: Some(["a".to_string()].into_iter().collect()),
            bbox: None,
        };
        let c = Arc::new(Client::new("t", users, None, 0.0, 100));
        let other = Arc::new(Client::new("other", Filter::default(), None, 0.0, 100));
        hub.subscribe(&c);
        hub.subscribe(&other);
        hub.route(fix(0, 0, "a"));
        hub.route(fix(0, 1, "b"));
        assert_eq!(c.take(&hub, 10).events.len(), 1);
        assert!(other.take(&hub, 10).events.is_empty());
        let boxed = Filter {
            users: None,
            bbox: Some([0.0, 0.0, 1.5, 1.5]),
        };
        assert!(!boxed.matches(&fix(0, 0, "a")), "lon 2 is outside");
    }

    #[test]
    fn a_tenant_nobody_watches_is_passed_over_and_its_position_moves_on() {
        let hub = Hub::default();
        hub.start_at(&[0, 0]);
        let c = Arc::new(Client::new("t", Filter::default(), None, 0.0, 100));
        hub.subscribe(&c);
        assert!(hub.skip_unwatched(b"nobody", 1, 41));
        assert_eq!(hub.positions(), [0, 42], "a new stream starts after it");
        assert!(
            !hub.skip_unwatched(b"t", 0, 7),
            "a watched tenant is decoded and routed"
        );
        assert_eq!(hub.positions(), [0, 42]);
        assert!(
            !hub.skip_unwatched(&[0xff, 0xfe], 0, 8),
            "not UTF-8: decoded, not skipped"
        );
        hub.unsubscribe(&c);
        assert!(hub.skip_unwatched(b"t", 0, 9), "the last stream of t left");
    }

    #[test]
    fn too_many_pending_users_marks_the_stream_as_overflowing() {
        let hub = Hub::default();
        hub.start_at(&[0]);
        let c = Arc::new(Client::new("t", Filter::default(), None, 1000.0, 3));
        hub.subscribe(&c);
        for (o, u) in ["a", "b", "c", "d"].iter().enumerate() {
            hub.route(fix(0, o as i64, u));
        }
        assert!(c.take(&hub, 1).overflow);
        hub.unsubscribe(&c);
        hub.route(fix(0, 9, "e"));
        assert_eq!(hub.positions(), vec![10]);
    }
}
