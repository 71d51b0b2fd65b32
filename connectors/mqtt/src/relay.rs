//! A relay between the bridge's MQTT client and the broker, so that the bridge can stop
//! reading from the broker while it goes on writing PUBACKs.
//!
//! rumqttc reads and writes its connection from one event loop: not polling it would stop
//! the PUBACKs as well, and the pipeline with them. A broker that holds to the bridge's
//! receive maximum never sends more than the pipeline takes, but Mosquitto 2.0.11 sends a
//! shared subscription's messages regardless of it (a resumed session's whole backlog at
//! once; hundreds of thousands outstanding under load). So the client connects to this
//! relay over a Unix socket in a private directory, and the relay holds the TCP connection
//! to the broker: what the client writes is always forwarded, what the broker sends only
//! while the gate is open. While it is closed the broker's bytes wait in the kernel's
//! buffers, then at the broker: TCP back-pressure, bounded memory.
//!
//! Each client connection (rumqttc reconnects) gets its own broker connection; when either
//! side closes, both are closed, so the client sees what the broker connection does.
//!
//! The relay also writes the bridge's PUBACKs itself ([`RelayAcks`]): handed over from the
//! acker through a channel, gathered for a moment and written to the broker many at a time,
//! between the client's own packets. Through rumqttc each PUBACK would cost a request, an
//! event-loop turn and a write of its own (its event loop flushes after every request).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;

/// What the broker sends is forwarded in reads of at most this many bytes; with the gate
/// closed, at most one such read is still on its way to the client.
const CHUNK: usize = 16 * 1024;

/// How long the relay lets what the client writes gather before the next forward.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(1);

/// The send buffer of the relay's side of the Unix socket: what the client has not read
/// yet when the gate closes is at most about this much (Linux doubles it).
const CLIENT_SNDBUF: usize = 16 * 1024;

/// Where PUBACKs go: the channel of the newest client connection's relay, if any.
type AckRoute = Arc<Mutex<Option<mpsc::UnboundedSender<u16>>>>;

#[derive(Debug)]
pub struct Relay {
    dir: PathBuf,
    socket: PathBuf,
    gate: watch::Sender<bool>,
    acks: AckRoute,
    accept: JoinHandle<()>,
}

/// Sends QoS 1 PUBACKs through the relay, on the current broker connection.
#[derive(Debug, Clone)]
pub struct RelayAcks {
    route: AckRoute,
}

impl RelayAcks {
    /// Queues the PUBACK of packet `pkid`. Returns false if no broker connection takes it
    /// (the bridge is between connections): the broker then sends the message again, as it
    /// does for every message not acknowledged when a connection ends.
    pub fn ack(&self, pkid: u16) -> bool {
        let route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        route.as_ref().is_some_and(|tx| tx.send(pkid).is_ok())
    }
}

impl Relay {
    /// Listens on a fresh Unix socket (in a directory only this user may enter) and relays
    /// each connection to `broker` (`host:port`).
    pub fn start(broker: String) -> io::Result<Relay> {
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
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        // PUBACKs go to the newest connection from now on.
                        let (tx, rx) = mpsc::unbounded_channel();
                        *route.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
                        tokio::spawn(relay(client, broker.clone(), open.clone(), rx));
                    }
                    Err(error) => {
                        warn!(%error, "MQTT relay: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Tracks MQTT packet boundaries in a byte stream, so that PUBACKs are put between the
/// client's packets, never inside one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Frames {
    /// Between packets.
    #[default]
    Boundary,
    /// In the remaining-length field (a varint of up to four bytes).
    Length { value: usize, shift: u32 },
    /// In a packet's variable header and payload: this many bytes to go.
    Body(usize),
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&b, rest)) = bytes.split_first() {
            *self = match *self {
                Frames::Boundary => {
                    bytes = rest;
                    Frames::Length { value: 0, shift: 0 }
                }
                Frames::Length { value, shift } => {
                    bytes = rest;
                    let value = value | (usize::from(b & 0x7f) << shift);
                    // A fifth length byte is malformed: the broker closes the connection.
                    if b & 0x80 != 0 && shift < 21 {
                        Frames::Length {
                            value,
                            shift: shift + 7,
                        }
                    } else if value == 0 {
                        Frames::Boundary
                    } else {
                        Frames::Body(value)
                    }
                }
                Frames::Body(left) => {
                    let take = left.min(bytes.len());
                    bytes = &bytes[take..];
                    if take == left {
                        Frames::Boundary
                    } else {
                        Frames::Body(left - take)
                    }
                }
            };
        }
    }
}

/// A v5 PUBACK with reason Success and no properties (remaining length 2).
fn puback(out: &mut Vec<u8>, pkid: u16) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&pkid.to_be_bytes());
}

async fn relay(
    client: UnixStream,
    broker: String,
    mut open: watch::Receiver<bool>,
    mut acks: mpsc::UnboundedReceiver<u16>,
) {
    let upstream = match TcpStream::connect(&broker).await {
        Ok(s) => s,
        Err(error) => {
            // Dropping the client's side ends its connection: it retries with its backoff.
            warn!(%error, broker, "cannot reach the MQTT broker");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = socket2::SockRef::from(&client).set_send_buffer_size(CLIENT_SNDBUF);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_broker, mut to_broker) = upstream.into_split();
    // Client → broker, always, with the PUBACKs put in between the client's packets. After
    // each write the relay waits a moment, so that the next write takes everything that came
    // meanwhile: under load one write carries hundreds of PUBACKs.
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut held: Vec<u16> = vec![];
        let mut frames = Frames::default();
        // PUBACKs handed over before the client's next bytes were read go out before them
        // (between packets): at shutdown the acker is done before the client's DISCONNECT.
        let take_acks = |acks: &mut mpsc::UnboundedReceiver<u16>,
                         held: &mut Vec<u16>,
                         frames: Frames,
                         out: &mut Vec<u8>| {
            while let Ok(pkid) = acks.try_recv() {
                held.push(pkid);
            }
            if frames == Frames::Boundary {
                for pkid in held.drain(..) {
                    puback(out, pkid);
                }
            }
        };
        loop {
            tokio::select! {
                biased;
                Some(pkid) = acks.recv() => held.push(pkid),
                r = from_client.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        take_acks(&mut acks, &mut held, frames, &mut out);
                        frames.feed(&buf[..n]);
                        out.extend_from_slice(&buf[..n]);
                    }
                },
            }
            take_acks(&mut acks, &mut held, frames, &mut out);
            if !out.is_empty() {
                if to_broker.write_all(&out).await.is_err() {
                    break;
                }
                out.clear();
                tokio::time::sleep(COALESCE).await;
            }
        }
    };
    // Broker → client, while the gate is open.
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            while !*open.borrow_and_update() {
                if open.changed().await.is_err() {
                    return;
                }
            }
            match from_broker.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

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

    #[tokio::test]
    async fn forwards_both_ways_and_holds_back_the_brokers_bytes_while_closed() {
        let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(broker.local_addr().unwrap().to_string()).unwrap();
        let mut client = UnixStream::connect(relay.socket()).await.unwrap();
        let (mut upstream, _) = broker.accept().await.unwrap();

        client.write_all(b"connect").await.unwrap();
        let got = read_some(&mut upstream, Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&b"connect"[..]));
        upstream.write_all(b"connack").await.unwrap();
        let got = read_some(&mut client, Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&b"connack"[..]));

        // Closed: what the broker sends waits (after the one read already waiting when the
        // gate closed); what the client sends still goes through.
        relay.set_reading(false);
        upstream.write_all(b"1").await.unwrap();
        let got = read_some(&mut client, Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&b"1"[..]));
        upstream.write_all(b"publish").await.unwrap();
        assert_eq!(
            read_some(&mut client, Duration::from_millis(300)).await,
            None
        );
        client.write_all(b"puback").await.unwrap();
        let got = read_some(&mut upstream, Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&b"puback"[..]));
        // Open again: the held bytes arrive.
        relay.set_reading(true);
        let got = read_some(&mut client, Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&b"publish"[..]));

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

    #[test]
    fn frames_follow_packet_boundaries_across_reads() {
        let mut f = Frames::default();
        // PINGREQ: no body.
        f.feed(&[0xc0, 0x00]);
        assert_eq!(f, Frames::Boundary);
        // A 200-byte SUBSCRIBE (two length bytes), fed in three pieces.
        let mut sub = vec![0x82, 0xc8, 0x01];
        sub.extend(std::iter::repeat_n(7u8, 200));
        f.feed(&sub[..2]);
        assert_eq!(
            f,
            Frames::Length {
                value: 0x48,
                shift: 7
            }
        );
        f.feed(&sub[2..100]);
        assert_eq!(f, Frames::Body(200 - 97));
        f.feed(&sub[100..]);
        assert_eq!(f, Frames::Boundary);
        // Two packets in one read, the second cut short.
        f.feed(&[0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00]);
        assert_eq!(f, Frames::Body(1));
        f.feed(&[0x02]);
        assert_eq!(f, Frames::Boundary);
    }

    #[tokio::test]
    async fn pubacks_go_out_between_the_clients_packets() {
        let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(broker.local_addr().unwrap().to_string()).unwrap();
        let acks = relay.acks();
        let mut client = UnixStream::connect(relay.socket()).await.unwrap();
        let (mut upstream, _) = broker.accept().await.unwrap();
        // Wait until the relay routes acks to this connection.
        while !acks.ack(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = read_at_least(&mut upstream, 4).await;
        assert_eq!(got, [0x40, 2, 0, 1]);

        // The client is in the middle of a packet: acks wait for its end.
        client.write_all(&[0x82, 0x05, 1, 2]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(acks.ack(0x0102) && acks.ack(0xfffe));
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(&[3, 4, 5, 0xc0, 0]).await.unwrap();
        let want = [
            0x82, 0x05, 1, 2, 3, 4, 5, 0xc0, 0, 0x40, 2, 1, 2, 0x40, 2, 0xff, 0xfe,
        ];
        let got = read_at_least(&mut upstream, want.len()).await;
        assert_eq!(got, want);

        // Handed over just before the client writes its DISCONNECT: they go out first (at
        // shutdown the last PUBACKs must not be overtaken by it).
        assert!(acks.ack(6) && acks.ack(7));
        client.write_all(&[0xe0, 0]).await.unwrap();
        let want = [0x40, 2, 0, 6, 0x40, 2, 0, 7, 0xe0, 0];
        let got = read_at_least(&mut upstream, want.len()).await;
        assert_eq!(got, want);

        // A new connection takes the acks from then on.
        let _second = UnixStream::connect(relay.socket()).await.unwrap();
        let (mut upstream2, _) = broker.accept().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(acks.ack(9));
        let got = read_some(&mut upstream2, Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&[0x40, 2, 0, 9][..]));
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
        let relay = Relay::start(format!("127.0.0.1:{port}")).unwrap();
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
        let relay = Relay::start("127.0.0.1:1".into()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&relay.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
