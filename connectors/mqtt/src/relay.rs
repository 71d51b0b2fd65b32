//! A relay between the bridge's MQTT client and the broker, so that the bridge can stop
//! reading from the broker while it goes on writing PUBACKs.
//!
//! rumqttc reads and writes its connection from one event loop: not polling it would stop
//! the PUBACKs as well, and the pipeline with them. A broker that holds to the bridge's
//! receive maximum never sends more than the pipeline takes, but Mosquitto 2.0.11 sends a
//! shared subscription's messages regardless of it (a resumed session's whole backlog at
//! once; hundreds of thousands outstanding under load). So the client connects to this
//! relay over a Unix socket in a private directory, and the relay holds the connection to
//! the broker (TCP, or TLS with `bridge.tls_*`): what the client writes is always
//! forwarded, what the broker sends only while the gate is open. While it is closed the
//! broker's bytes wait in the kernel's buffers, then at the broker: TCP back-pressure,
//! bounded memory.
//!
//! The relay follows MQTT packet boundaries both ways, which is what lets it keep the
//! connection's control flow going while the gate is closed:
//! - the first packet of a connection (the broker's CONNACK) always passes: a reconnect
//!   while the bridge is full must not time out;
//! - a packet the broker had started to send when the gate closed is finished;
//! - the client's PINGREQs are answered by the relay itself while the gate is closed (the
//!   broker's own PINGRESP waits behind the held messages; rumqttc would otherwise give up
//!   the connection after a keep-alive and reconnect, and the broker would send everything
//!   unacknowledged again). The PINGREQ still goes to the broker, which keeps the session
//!   alive; a dead broker shows up as a write error (TCP user timeout).
//!
//! Each client connection (rumqttc reconnects) gets its own broker connection; when either
//! side closes, both are closed, so the client sees what the broker connection does.
//!
//! The relay also writes the bridge's PUBACKs itself ([`RelayAcks`]): handed over from the
//! acker through a channel, gathered for a moment and written to the broker many at a time,
//! between the client's own packets. Through rumqttc each PUBACK would cost a request, an
//! event-loop turn and a write of its own (its event loop flushes after every request).
//! A PUBACK names a packet id, which only means something within the MQTT session the
//! message came in on: each one carries its session's number (see [`Relay::connected`]),
//! is held until the connection it would go out on has had its CONNACK, and is dropped if
//! that connection started a new session (the broker reuses packet ids for new messages).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::metrics::M;

/// What the broker sends is forwarded in reads of at most this many bytes; with the gate
/// closed, only the rest of a packet already started is still read.
const CHUNK: usize = 16 * 1024;

/// How long the relay lets what the client writes gather before the next forward.
const COALESCE: Duration = Duration::from_millis(1);

/// The send buffer of the relay's side of the Unix socket: what the client has not read
/// yet when the gate closes is at most about this much (Linux doubles it).
const CLIENT_SNDBUF: usize = 16 * 1024;

/// Unacknowledged bytes to the broker older than this end the connection: with the gate
/// closed the relay reads nothing, so a broker that went away is only seen by writing.
const BROKER_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing relay waits for the broker to close its side after the client's.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Longest TCP connect plus TLS handshake to the broker: under rumqttc's connection timeout
/// (5 s), so a client that gave up never has its CONNECT forwarded late.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

const PINGREQ: u8 = 0xc0;
const PINGRESP: [u8; 2] = [0xd0, 0x00];

/// A PUBACK to write: the packet id, and the number of the session the message came in on.
type Ack = (u16, u64);

/// The newest client connection: where PUBACKs go, and its session once it is connected.
struct Route {
    acks: mpsc::UnboundedSender<Ack>,
    session: Arc<watch::Sender<Option<u64>>>,
}

type AckRoute = Arc<Mutex<Option<Route>>>;

/// TLS to the broker: the connector and the name the broker's certificate must carry.
#[derive(Clone)]
pub struct RelayTls {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for RelayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl RelayTls {
    /// From PEM files' contents: the CA that signs the broker's certificate, and
    /// optionally the bridge's client certificate chain and key.
    pub fn new(host: &str, files: locus_schemas::tls::TlsFiles<'_>) -> Result<RelayTls, String> {
        let config = locus_schemas::tls::client_config(files)?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
        Ok(RelayTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

#[derive(Debug)]
pub struct Relay {
    dir: PathBuf,
    socket: PathBuf,
    gate: watch::Sender<bool>,
    acks: AckRoute,
    accept: JoinHandle<()>,
    connections: TaskTracker,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("session", &*self.session.borrow())
            .finish_non_exhaustive()
    }
}

/// Sends QoS 1 PUBACKs through the relay, on the current broker connection.
#[derive(Debug, Clone)]
pub struct RelayAcks {
    route: AckRoute,
}

impl RelayAcks {
    /// Queues the PUBACK of packet `pkid` of a message received in session `session`.
    /// Returns false if no broker connection takes it (the bridge is between connections):
    /// the broker then sends the message again, as it does for every message not
    /// acknowledged when a connection ends.
    pub fn ack(&self, pkid: u16, session: u64) -> bool {
        let route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        route
            .as_ref()
            .is_some_and(|r| r.acks.send((pkid, session)).is_ok())
    }
}

impl Relay {
    /// Listens on a fresh Unix socket (in a directory only this user may enter) and relays
    /// each connection to `broker` (`host:port`), over TLS if `tls` is set.
    pub fn start(broker: String, tls: Option<RelayTls>) -> io::Result<Relay> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "locus-bridge-{}-{nanos:x}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let socket = dir.join("mqtt.sock");
        let listener = UnixListener::bind(&socket)?;
        let (gate, open) = watch::channel(true);
        let acks = AckRoute::default();
        let route = acks.clone();
        let connections = TaskTracker::new();
        let tracker = connections.clone();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        // PUBACKs go to the newest connection from now on; they wait there
                        // until it is connected and its session known.
                        let (tx, rx) = mpsc::unbounded_channel();
                        let session = Arc::new(watch::channel(None).0);
                        *route.lock().unwrap_or_else(|e| e.into_inner()) = Some(Route {
                            acks: tx,
                            session: session.clone(),
                        });
                        let conn = Connection {
                            open: open.clone(),
                            acks: rx,
                            session,
                        };
                        tracker.spawn(conn.run(client, broker.clone(), tls.clone()));
                    }
                    Err(error) => {
                        warn!(%error, "MQTT relay: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Relay {
            dir,
            socket,
            gate,
            acks,
            accept,
            connections,
        })
    }

    /// The path the MQTT client connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A handle that sends PUBACKs through the relay.
    pub fn acks(&self) -> RelayAcks {
        RelayAcks {
            route: self.acks.clone(),
        }
    }

    /// Opens or closes the gate for what the broker sends.
    pub fn set_reading(&self, open: bool) {
        self.gate
            .send_if_modified(|g| std::mem::replace(g, open) != open);
    }

    /// The newest connection got its CONNACK, in session number `session` (the event loop
    /// counts a new session at every CONNACK without `session_present`). Its PUBACKs of
    /// that session go out from now on; those of any other session are dropped.
    pub fn connected(&self, session: u64) {
        if let Some(r) = &*self.acks.lock().unwrap_or_else(|e| e.into_inner()) {
            r.session.send_replace(Some(session));
        }
    }

    /// Stops accepting and waits (up to `wait`) until every connection has ended: once the
    /// client has sent its DISCONNECT and closed its side, what it wrote (and the PUBACKs
    /// before it) has reached the broker.
    pub async fn finish(self, wait: Duration) {
        self.accept.abort();
        self.connections.close();
        if tokio::time::timeout(wait, self.connections.wait())
            .await
            .is_err()
        {
            warn!(?wait, "the MQTT relay's connections did not end in time");
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Tracks MQTT packet boundaries in a byte stream, so that PUBACKs are put between the
/// client's packets, never inside one, and the broker's packets are never cut by the gate.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Frames {
    /// Between packets.
    #[default]
    Boundary,
    /// In the remaining-length field (a varint of up to four bytes) of a packet whose first
    /// byte was `first`.
    Length { first: u8, value: usize, shift: u32 },
    /// In a packet's variable header and payload: this many bytes to go.
    Body { first: u8, left: usize },
}

impl Frames {
    /// Follows `bytes`, calling `ended` with the first byte of every packet they complete.
    fn feed(&mut self, mut bytes: &[u8], mut ended: impl FnMut(u8)) {
        while let Some((&b, rest)) = bytes.split_first() {
            *self = match *self {
                Frames::Boundary => {
                    bytes = rest;
                    Frames::Length {
                        first: b,
                        value: 0,
                        shift: 0,
                    }
                }
                Frames::Length {
                    first,
                    value,
                    shift,
                } => {
                    bytes = rest;
                    let value = value | (usize::from(b & 0x7f) << shift);
                    // A fifth length byte is malformed: the broker closes the connection.
                    if b & 0x80 != 0 && shift < 21 {
                        Frames::Length {
                            first,
                            value,
                            shift: shift + 7,
                        }
                    } else if value == 0 {
                        ended(first);
                        Frames::Boundary
                    } else {
                        Frames::Body { first, left: value }
                    }
                }
                Frames::Body { first, left } => {
                    let take = left.min(bytes.len());
                    bytes = &bytes[take..];
                    if take == left {
                        ended(first);
                        Frames::Boundary
                    } else {
                        Frames::Body {
                            first,
                            left: left - take,
                        }
                    }
                }
            };
        }
    }
}

impl Frames {
    /// How many of `bytes` (which follow what was fed so far) complete the current packet,
    /// or the next one when between packets; all of them if they do not reach its end.
    fn rest_of_packet(mut self, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            let step = match self {
                Frames::Body { left, .. } => left.min(bytes.len() - i),
                _ => 1,
            };
            self.feed(&bytes[i..i + step], |_| {});
            i += step;
            if self == Frames::Boundary {
                break;
            }
        }
        i
    }
}

/// A v5 PUBACK with reason Success and no properties (remaining length 2).
fn puback(out: &mut Vec<u8>, pkid: u16) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&pkid.to_be_bytes());
}

/// One client connection's side of the relay.
struct Connection {
    open: watch::Receiver<bool>,
    acks: mpsc::UnboundedReceiver<Ack>,
    session: Arc<watch::Sender<Option<u64>>>,
}

impl Connection {
    async fn run(self, client: UnixStream, broker: String, tls: Option<RelayTls>) {
        // Dropping the client's side ends its connection: it retries with its backoff. A
        // connection that took longer than the client waits for its CONNACK is given up too:
        // forwarded late, its CONNECT would take the session over from the client's next one.
        let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&broker))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => {
                warn!(%error, broker, "cannot reach the MQTT broker");
                return;
            }
            Err(_) => {
                warn!(broker, timeout = ?CONNECT_TIMEOUT, "no TCP connection to the MQTT broker in time");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let sock = socket2::SockRef::from(&upstream);
        let _ = sock.set_tcp_user_timeout(Some(BROKER_USER_TIMEOUT));
        let _ = sock.set_keepalive(true);
        let _ = socket2::SockRef::from(&client).set_send_buffer_size(CLIENT_SNDBUF);
        match tls {
            None => self.pipe(client, upstream.into_split()).await,
            Some(tls) => {
                let handshake = tls.connector.connect(tls.server_name, upstream);
                match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => self.pipe(client, tokio::io::split(stream)).await,
                    Ok(Err(error)) => {
                        warn!(%error, broker, "TLS handshake with the MQTT broker failed");
                    }
                    Err(_) => warn!(broker, "no TLS handshake with the MQTT broker in time"),
                }
            }
        }
    }

    /// Relays until either side closes. When the client closes first (after its
    /// DISCONNECT), the relay closes its writing side and reads what the broker still sends
    /// until the broker closes too: closing a socket with unread bytes resets the
    /// connection, and the broker could then lose the last PUBACKs.
    async fn pipe<R, W>(self, client: UnixStream, (mut from_broker, mut to_broker): (R, W))
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (from_client, to_client) = client.into_split();
        let (pings_tx, pings_rx) = mpsc::unbounded_channel();
        let client_closed = {
            let up = up(
                from_client,
                &mut to_broker,
                self.acks,
                self.session.subscribe(),
                pings_tx,
            );
            let down = down(&mut from_broker, to_client, self.open, pings_rx);
            tokio::pin!(up, down);
            tokio::select! {
                closed = &mut up => closed,
                end = &mut down => match end {
                    // The client stopped reading (it closed its socket after its
                    // DISCONNECT): forward what it wrote to the end, then close cleanly.
                    DownEnd::ClientGone => up.await,
                    DownEnd::BrokerClosed => false,
                },
            }
        };
        if client_closed {
            let _ = to_broker.shutdown().await;
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                let mut buf = vec![0u8; CHUNK];
                while let Ok(n) = from_broker.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// Client → broker, always, with the PUBACKs put in between the client's packets. After
/// each write the relay waits a moment, so that the next write takes everything that came
/// meanwhile: under load one write carries hundreds of PUBACKs. Returns true when the
/// client closed its side (everything it wrote has been forwarded), false on an error.
async fn up(
    mut from_client: OwnedReadHalf,
    to_broker: &mut (impl AsyncWrite + Unpin),
    mut acks: mpsc::UnboundedReceiver<Ack>,
    mut session: watch::Receiver<Option<u64>>,
    pings: mpsc::UnboundedSender<()>,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut held: Vec<Ack> = vec![];
    let mut frames = Frames::default();
    // PUBACKs handed over before the client's next bytes were read go out before them
    // (between packets): at shutdown the acker is done before the client's DISCONNECT. None
    // goes out before the connection's CONNACK (so never before its CONNECT), and only those
    // of the connection's own session.
    let take_acks = |acks: &mut mpsc::UnboundedReceiver<Ack>,
                     held: &mut Vec<Ack>,
                     session: Option<u64>,
                     frames: Frames,
                     out: &mut Vec<u8>| {
        while let Ok(ack) = acks.try_recv() {
            held.push(ack);
        }
        if let (Some(current), Frames::Boundary) = (session, frames) {
            for (pkid, s) in held.drain(..) {
                if s == current {
                    puback(out, pkid);
                } else {
                    M.stale_acks.inc();
                }
            }
        }
    };
    loop {
        let known = session.borrow_and_update().is_some();
        let mut closed_by_client = false;
        // The client's bytes first: a steady stream of acks must not delay its packets (a
        // PINGREQ waits for its answer); the acks that came meanwhile go out before them.
        tokio::select! {
            biased;
            r = from_client.read(&mut buf) => match r {
                Ok(0) => closed_by_client = true,
                Err(_) => return false,
                Ok(n) => {
                    let current = *session.borrow();
                    take_acks(&mut acks, &mut held, current, frames, &mut out);
                    frames.feed(&buf[..n], |first| {
                        if first == PINGREQ {
                            let _ = pings.send(());
                        }
                    });
                    out.extend_from_slice(&buf[..n]);
                }
            },
            Some(ack) = acks.recv() => held.push(ack),
            _ = session.changed(), if !known => {}
        }
        let current = *session.borrow();
        take_acks(&mut acks, &mut held, current, frames, &mut out);
        if !out.is_empty() {
            if to_broker.write_all(&out).await.is_err() || to_broker.flush().await.is_err() {
                return false;
            }
            out.clear();
            if !closed_by_client {
                tokio::time::sleep(COALESCE).await;
            }
        }
        if closed_by_client {
            return true;
        }
    }
}

/// Why `down` ended.
enum DownEnd {
    /// The broker closed the connection (or reading from it failed).
    BrokerClosed,
    /// Writing to the client failed: it closed its side.
    ClientGone,
}

/// Broker → client: everything while the gate is open; while it is closed, the rest of a
/// packet already started and the connection's first packet (the CONNACK). A read made
/// while the gate was open can bring more than may pass once it closed: the rest waits in
/// `buf` (at most `CHUNK`). `up` reports every PINGREQ the client sent; while the gate is
/// closed, those the broker has not answered yet are answered here, between packets (the
/// broker's own PINGRESP waits behind the held messages; when it comes, it is one more).
async fn down(
    from_broker: &mut (impl AsyncRead + Unpin),
    mut to_client: OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
    mut pings: mpsc::UnboundedReceiver<()>,
) -> DownEnd {
    let mut buf = vec![0u8; CHUNK];
    // Read from the broker, not yet forwarded.
    let (mut start, mut end) = (0, 0);
    let mut frames = Frames::default();
    let mut first_done = false;
    // PINGREQs neither the broker nor the relay has answered yet.
    let mut owed: u32 = 0;
    loop {
        let gate_open = *open.borrow_and_update();
        if !gate_open && owed > 0 && frames == Frames::Boundary {
            owed -= 1;
            if to_client.write_all(&PINGRESP).await.is_err() {
                return DownEnd::ClientGone;
            }
            continue;
        }
        let may_pass = |bytes: &[u8]| match frames {
            _ if gate_open => bytes.len(),
            Frames::Boundary if first_done => 0,
            _ => frames.rest_of_packet(bytes),
        };
        let pass = may_pass(&buf[start..end]);
        if pass > 0 {
            let bytes = &buf[start..start + pass];
            frames.feed(bytes, |first| {
                if first == PINGRESP[0] {
                    owed = owed.saturating_sub(1);
                }
            });
            first_done |= frames == Frames::Boundary;
            if to_client.write_all(bytes).await.is_err() {
                return DownEnd::ClientGone;
            }
            start += pass;
            continue;
        }
        let budget = match frames {
            _ if start < end => 0,
            _ if gate_open => CHUNK,
            Frames::Boundary if first_done => 0,
            Frames::Boundary | Frames::Length { .. } => 1,
            Frames::Body { left, .. } => left.min(CHUNK),
        };
        tokio::select! {
            biased;
            Some(()) = pings.recv() => owed = owed.saturating_add(1),
            // Always watched: a read waiting while the gate closes is given up (reads are
            // cancel-safe), so pings owed are answered at once.
            r = open.changed() => if r.is_err() {
                return DownEnd::BrokerClosed;
            },
            r = from_broker.read(&mut buf[..budget.max(1)]), if budget > 0 => match r {
                Ok(0) | Err(_) => return DownEnd::BrokerClosed,
                Ok(n) => (start, end) = (0, n),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const CONNECT: [u8; 4] = [0x10, 2, 0xaa, 0xbb];
    const CONNACK: [u8; 5] = [0x20, 3, 0, 0, 0];

    async fn read_some(s: &mut (impl AsyncReadExt + Unpin), wait: Duration) -> Option<Vec<u8>> {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Reads until at least `n` bytes came (each read within 2 s).
    async fn read_at_least(s: &mut (impl AsyncReadExt + Unpin), n: usize) -> Vec<u8> {
        let mut got = vec![];
        while got.len() < n {
            got.extend(read_some(s, Duration::from_secs(2)).await.unwrap());
        }
        got
    }

    /// A relay to a scripted broker, and one connection through it.
    async fn connected() -> (Relay, TcpListener, UnixStream, TcpStream) {
        let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(broker.local_addr().unwrap().to_string(), None).unwrap();
        let client = UnixStream::connect(relay.socket()).await.unwrap();
        let (upstream, _) = broker.accept().await.unwrap();
        (relay, broker, client, upstream)
    }

    #[tokio::test]
    async fn forwards_both_ways_and_holds_back_the_brokers_packets_while_closed() {
        let (relay, _broker, mut client, mut upstream) = connected().await;
        client.write_all(&CONNECT).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 4).await, CONNECT);
        upstream.write_all(&CONNACK).await.unwrap();
        assert_eq!(read_at_least(&mut client, 5).await, CONNACK);

        // The broker has started a PUBLISH when the gate closes: that one is finished, the
        // next waits; what the client sends still goes through.
        upstream.write_all(&[0x30, 5, 1, 2]).await.unwrap();
        assert_eq!(read_at_least(&mut client, 4).await, [0x30, 5, 1, 2]);
        relay.set_reading(false);
        upstream.write_all(&[3, 4, 5, 0x30, 1, 9]).await.unwrap();
        assert_eq!(read_at_least(&mut client, 3).await, [3, 4, 5]);
        assert_eq!(
            read_some(&mut client, Duration::from_millis(300)).await,
            None
        );
        client.write_all(&[0x40, 2, 0, 1]).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 4).await, [0x40, 2, 0, 1]);
        // Open again: the held packet arrives.
        relay.set_reading(true);
        assert_eq!(read_at_least(&mut client, 3).await, [0x30, 1, 9]);

        // The broker hangs up: so does the client's side.
        drop(upstream);
        let got = read_some(&mut client, Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&b""[..]));

        let (socket, dir) = (relay.socket().to_path_buf(), relay.dir.clone());
        drop(relay);
        assert!(
            !socket.exists() && !dir.exists(),
            "the socket and its directory are removed"
        );
    }

    #[tokio::test]
    async fn the_connack_passes_a_closed_gate_and_pings_are_answered_behind_it() {
        let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(broker.local_addr().unwrap().to_string(), None).unwrap();
        // Closed before the connection exists (a reconnect while the bridge is full).
        relay.set_reading(false);
        let mut client = UnixStream::connect(relay.socket()).await.unwrap();
        let (mut upstream, _) = broker.accept().await.unwrap();
        client.write_all(&CONNECT).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 4).await, CONNECT);
        upstream.write_all(&CONNACK).await.unwrap();
        upstream.write_all(&[0x30, 1, 7]).await.unwrap();
        assert_eq!(
            read_at_least(&mut client, 5).await,
            CONNACK,
            "only the CONNACK"
        );
        assert_eq!(
            read_some(&mut client, Duration::from_millis(300)).await,
            None
        );
        // A PINGREQ: forwarded, and answered by the relay (the broker's PINGRESP would wait
        // behind the held PUBLISH).
        for _ in 0..3 {
            client.write_all(&[PINGREQ, 0]).await.unwrap();
            assert_eq!(read_at_least(&mut upstream, 2).await, [PINGREQ, 0]);
            assert_eq!(read_at_least(&mut client, 2).await, PINGRESP);
        }
        upstream.write_all(&PINGRESP).await.unwrap();
        relay.set_reading(true);
        assert_eq!(read_at_least(&mut client, 5).await, [0x30, 1, 7, 0xd0, 0]);
        // Open: pings are the broker's to answer.
        client.write_all(&[PINGREQ, 0]).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 2).await, [PINGREQ, 0]);
        assert_eq!(
            read_some(&mut client, Duration::from_millis(300)).await,
            None
        );
    }

    #[tokio::test]
    async fn a_ping_sent_while_open_is_answered_when_the_gate_closes_before_the_broker_does() {
        let (relay, _broker, mut client, mut upstream) = connected().await;
        client.write_all(&CONNECT).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 4).await, CONNECT);
        upstream.write_all(&CONNACK).await.unwrap();
        assert_eq!(read_at_least(&mut client, 5).await, CONNACK);
        // Open: the PINGREQ is the broker's to answer...
        client.write_all(&[PINGREQ, 0]).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 2).await, [PINGREQ, 0]);
        assert_eq!(
            read_some(&mut client, Duration::from_millis(200)).await,
            None
        );
        // ...but the gate closes first, with its answer behind held messages.
        relay.set_reading(false);
        assert_eq!(read_at_least(&mut client, 2).await, PINGRESP);
    }

    #[tokio::test]
    async fn a_client_that_closes_while_the_broker_sends_gets_a_clean_close_not_a_reset() {
        let (relay, _broker, mut client, upstream) = connected().await;
        let (mut from_relay, mut to_relay) = upstream.into_split();
        client.write_all(&CONNECT).await.unwrap();
        relay.connected(1);
        // The broker keeps sending PUBLISHes the client will never read.
        let sender = tokio::spawn(async move {
            let publish = [0x30u8, 3, 0, 1, 7];
            while to_relay.write_all(&publish).await.is_ok() {}
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(relay.acks().ack(5, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&[0xe0, 0]).await.unwrap();
        drop(client);
        let mut got = vec![];
        let mut buf = [0u8; 64];
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(5), from_relay.read(&mut buf)).await {
                Ok(Ok(0)) => break Ok(()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => break Err(e.kind()),
                Err(_) => panic!("the relay did not close"),
            }
        };
        sender.abort();
        assert_eq!(got, [0x10, 2, 0xaa, 0xbb, 0x40, 2, 0, 5, 0xe0, 0]);
        assert_eq!(end, Ok(()), "a FIN after the DISCONNECT, not a reset");
    }

    #[test]
    fn frames_follow_packet_boundaries_across_reads() {
        let mut f = Frames::default();
        let mut ended = vec![];
        // PINGREQ: no body.
        f.feed(&[0xc0, 0x00], |b| ended.push(b));
        assert_eq!(f, Frames::Boundary);
        // A 200-byte SUBSCRIBE (two length bytes), fed in three pieces.
        let mut sub = vec![0x82, 0xc8, 0x01];
        sub.extend(std::iter::repeat_n(7u8, 200));
        f.feed(&sub[..2], |b| ended.push(b));
        assert_eq!(
            f,
            Frames::Length {
                first: 0x82,
                value: 0x48,
                shift: 7
            }
        );
        f.feed(&sub[2..100], |b| ended.push(b));
        assert_eq!(
            f,
            Frames::Body {
                first: 0x82,
                left: 200 - 97
            }
        );
        f.feed(&sub[100..], |b| ended.push(b));
        assert_eq!(f, Frames::Boundary);
        // Two packets in one read, the second cut short.
        f.feed(&[0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00], |b| {
            ended.push(b)
        });
        assert_eq!(
            f,
            Frames::Body {
                first: 0x40,
                left: 1
            }
        );
        f.feed(&[0x02], |b| ended.push(b));
        assert_eq!(f, Frames::Boundary);
        assert_eq!(ended, [0xc0, 0x82, 0x40, 0x40]);
        // How much of what follows completes a packet.
        let rest = |f: Frames, b: &[u8]| f.rest_of_packet(b);
        assert_eq!(rest(Frames::Boundary, &[0x30, 1, 9, 0x30, 1, 8]), 3);
        assert_eq!(rest(Frames::Boundary, &[0xd0, 0, 0xd0, 0]), 2);
        assert_eq!(
            rest(
                Frames::Body {
                    first: 0x30,
                    left: 2
                },
                &[1, 2, 3]
            ),
            2
        );
        assert_eq!(
            rest(
                Frames::Body {
                    first: 0x30,
                    left: 9
                },
                &[1, 2, 3]
            ),
            3
        );
        assert_eq!(rest(Frames::Boundary, &[0x30, 0x80]), 2, "not complete yet");
    }

    #[tokio::test]
    async fn pubacks_go_out_between_the_clients_packets_after_the_connack() {
        let (relay, broker, mut client, mut upstream) = connected().await;
        let acks = relay.acks();
        // Handed over before the connection's CONNECT went out: held (a PUBACK as the first
        // bytes of a connection makes the broker close it).
        while !acks.ack(1, 1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            read_some(&mut upstream, Duration::from_millis(200)).await,
            None
        );
        client.write_all(&CONNECT).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 4).await, CONNECT);
        upstream.write_all(&CONNACK).await.unwrap();
        assert_eq!(read_at_least(&mut client, 5).await, CONNACK);
        assert_eq!(
            read_some(&mut upstream, Duration::from_millis(200)).await,
            None,
            "nothing before the event loop saw the CONNACK"
        );
        relay.connected(1);
        assert_eq!(read_at_least(&mut upstream, 4).await, [0x40, 2, 0, 1]);

        // The client is in the middle of a packet: acks wait for its end.
        client.write_all(&[0x82, 0x05, 1, 2]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(acks.ack(0x0102, 1) && acks.ack(0xfffe, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(&[3, 4, 5, 0xc0, 0]).await.unwrap();
        let want = [
            0x82, 0x05, 1, 2, 3, 4, 5, 0xc0, 0, 0x40, 2, 1, 2, 0x40, 2, 0xff, 0xfe,
        ];
        assert_eq!(read_at_least(&mut upstream, want.len()).await, want);

        // Handed over just before the client writes its DISCONNECT: they go out first (at
        // shutdown the last PUBACKs must not be overtaken by it).
        assert!(acks.ack(6, 1) && acks.ack(7, 1));
        client.write_all(&[0xe0, 0]).await.unwrap();
        let want = [0x40, 2, 0, 6, 0x40, 2, 0, 7, 0xe0, 0];
        assert_eq!(read_at_least(&mut upstream, want.len()).await, want);

        // A new connection takes the acks from then on, in the same session.
        let mut second = UnixStream::connect(relay.socket()).await.unwrap();
        let (mut upstream2, _) = broker.accept().await.unwrap();
        second.write_all(&CONNECT).await.unwrap();
        assert_eq!(read_at_least(&mut upstream2, 4).await, CONNECT);
        relay.connected(1);
        assert!(acks.ack(9, 1));
        assert_eq!(read_at_least(&mut upstream2, 4).await, [0x40, 2, 0, 9]);
    }

    /// After a reconnect without `session_present` the broker numbers new messages from
    /// packet id 1 again: the PUBACK of the old session's packet 1 must not acknowledge the
    /// new session's.
    #[tokio::test]
    async fn a_new_session_never_gets_the_old_sessions_pubacks() {
        let (relay, broker, mut client, mut upstream) = connected().await;
        let acks = relay.acks();
        client.write_all(&CONNECT).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 4).await, CONNECT);
        relay.connected(1);
        // The broker sends PUBLISH packet id 1 of session 1, then the connection drops
        // before the bridge has acknowledged it.
        upstream.write_all(&[0x32, 4, 0, 1, 0, 1]).await.unwrap();
        read_at_least(&mut client, 6).await;
        drop(upstream);
        read_some(&mut client, Duration::from_secs(2)).await;
        drop(client);

        let mut client = UnixStream::connect(relay.socket()).await.unwrap();
        let (mut upstream, _) = broker.accept().await.unwrap();
        client.write_all(&CONNECT).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 4).await, CONNECT);
        // Delivered to Kafka meanwhile: the acker hands over session 1's PUBACK.
        let stale = M.stale_acks.get();
        assert!(acks.ack(1, 1));
        // CONNACK without session_present: a new session, number 2, whose packet id 1 is a
        // different message.
        relay.connected(2);
        upstream.write_all(&[0x32, 4, 0, 1, 0, 1]).await.unwrap();
        read_at_least(&mut client, 6).await;
        assert_eq!(
            read_some(&mut upstream, Duration::from_millis(300)).await,
            None,
            "the old session's PUBACK is not sent"
        );
        assert_eq!(M.stale_acks.get(), stale + 1);
        // The new message's own PUBACK goes out.
        assert!(acks.ack(1, 2));
        assert_eq!(read_at_least(&mut upstream, 4).await, [0x40, 2, 0, 1]);
    }

    #[tokio::test]
    async fn finish_waits_until_what_the_client_wrote_reached_the_broker() {
        let (relay, _broker, mut client, mut upstream) = connected().await;
        client.write_all(&CONNECT).await.unwrap();
        assert_eq!(read_at_least(&mut upstream, 4).await, CONNECT);
        relay.connected(1);
        assert!(relay.acks().ack(5, 1));
        client.write_all(&[0xe0, 0]).await.unwrap();
        drop(client);
        relay.finish(Duration::from_secs(2)).await;
        let got = read_at_least(&mut upstream, 6).await;
        assert_eq!(got, [0x40, 2, 0, 5, 0xe0, 0]);
        assert_eq!(
            read_some(&mut upstream, Duration::from_secs(2)).await,
            Some(vec![]),
            "then the connection is closed"
        );
    }

    #[tokio::test]
    async fn an_unreachable_broker_ends_the_clients_connection() {
        // A port nothing listens on: bind one, note it, free it.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let relay = Relay::start(format!("127.0.0.1:{port}"), None).unwrap();
        let mut client = UnixStream::connect(relay.socket()).await.unwrap();
        let got = read_some(&mut client, Duration::from_secs(2)).await;
        assert_eq!(
            got.as_deref(),
            Some(&b""[..]),
            "the client sees the end at once"
        );
    }

    #[test]
    fn the_directory_is_private() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let relay = Relay::start("127.0.0.1:1".into(), None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&relay.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
