//! A TCP proxy in front of the local Mosquitto that counts the PUBACKs a client sends, as
//! the broker receives them: what the bridge acknowledged, seen from the broker's side.
//! It can also make the broker ignore the client's receive maximum (as Mosquitto does for
//! shared subscriptions under load, though not reliably enough for a test): it raises the
//! value in the client's CONNECT, so the broker sends up to its own in-flight limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct MqttTap {
    pub port: u16,
    pubacks: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl MqttTap {
    /// Listens on a free local port and forwards every connection to `broker_port`.
    pub async fn start(broker_port: u16) -> MqttTap {
        Self::with(broker_port, false, None).await
    }

    /// As [`MqttTap::start`], and the broker is told a receive maximum of 65,535.
    pub async fn ignoring_receive_maximum(broker_port: u16) -> MqttTap {
        Self::with(broker_port, true, None).await
    }

    /// As [`MqttTap::start`], and each connection's first SUBSCRIBE reaches the broker only
    /// `hold` after the client sent it (a broker slow to take a subscription).
    pub async fn holding_subscribe(broker_port: u16, hold: std::time::Duration) -> MqttTap {
        Self::with(broker_port, false, Some(hold)).await
    }

    async fn with(
        broker_port: u16,
        raise: bool,
        hold_subscribe: Option<std::time::Duration>,
    ) -> MqttTap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pubacks = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (count, conns) = (pubacks.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::Relaxed);
                let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                    continue;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_broker, mut to_broker) = broker.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut pending: Vec<u8> = vec![];
                        // The CONNECT, whole, before anything is forwarded.
                        let mut connect = raise;
                        let mut hold = hold_subscribe;
                        while let Ok(n) = from_client.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if connect {
                                pending.extend_from_slice(&buf[..n]);
                                let Some(end) = packet_end(&pending, 0) else {
                                    continue;
                                };
                                assert!(
                                    raise_receive_maximum(&mut pending[..end]),
                                    "no receive maximum in the CONNECT"
                                );
                                connect = false;
                                if to_broker.write_all(&pending).await.is_err() {
                                    break;
                                }
                            } else {
                                if hold.is_some() {
                                    let mut all = pending.clone();
                                    all.extend_from_slice(&buf[..n]);
                                    if count_packets(&all, SUBSCRIBE).0 > 0
                                        && let Some(wait) = hold.take()
                                    {
                                        tokio::time::sleep(wait).await;
                                    }
                                }
                                if to_broker.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                pending.extend_from_slice(&buf[..n]);
                            }
                            let (acks, used) = count_packets(&pending, PUBACK);
                            count.fetch_add(acks, Ordering::Relaxed);
                            pending.drain(..used);
                        }
                        // Pass the client's close on as a close, not a reset: the broker
                        // must still read what came before it.
                        let _ = to_broker.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    };
                    // Both directions to their end: closing with unread bytes would reset
                    // the broker's connection and lose what it had not read yet.
                    let _ = tokio::join!(up, down);
                });
            }
        });
        MqttTap {
            port,
            pubacks,
            connections,
            accept,
        }
    }

    /// PUBACKs that reached the broker so far.
    pub fn pubacks(&self) -> u64 {
        self.pubacks.load(Ordering::Relaxed)
    }

    /// Connections made through the tap so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for MqttTap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Where the packet starting at `at` ends, if `bytes` hold all of it.
fn packet_end(bytes: &[u8], at: usize) -> Option<usize> {
    let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
    loop {
        let b = *bytes.get(i)?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    (bytes.len() >= i + len).then_some(i + len)
}

/// MQTT packet types (the high four bits of a packet's first byte).
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;

/// Counts the packets of type `kind` among the complete packets at the start of `bytes`;
/// returns the count and how many bytes those complete packets take.
fn count_packets(bytes: &[u8], kind: u8) -> (u64, usize) {
    let (mut count, mut at) = (0, 0);
    while let Some(end) = packet_end(bytes, at) {
        if bytes[at] >> 4 == kind {
            count += 1;
        }
        at = end;
    }
    (count, at)
}

/// Sets the Receive Maximum property of an MQTT v5 CONNECT to 65,535, in place. False if
/// the packet has none (or a property this walk does not know comes first).
fn raise_receive_maximum(connect: &mut [u8]) -> bool {
    let varint = |b: &[u8], mut i: usize| -> Option<(usize, usize)> {
        let (mut v, mut shift) = (0usize, 0);
        loop {
            let x = *b.get(i)?;
            v |= usize::from(x & 0x7f) << shift;
            shift += 7;
            i += 1;
            if x & 0x80 == 0 {
                return Some((v, i));
            }
        }
    };
    let Some((_, header_end)) = varint(connect, 1) else {
        return false;
    };
    // Protocol name (2 + 4), version, flags, keep-alive (2).
    let Some((props_len, mut i)) = varint(connect, header_end + 10) else {
        return false;
    };
    let end = i + props_len;
    let two = |b: &[u8], i: usize| usize::from(b[i]) << 8 | usize::from(b[i + 1]);
    while i < end.min(connect.len()) {
        let id = connect[i];
        i += 1;
        match id {
            0x21 => {
                connect[i] = 0xff;
                connect[i + 1] = 0xff;
                return true;
            }
            0x11 | 0x27 => i += 4,
            0x22 => i += 2,
            0x17 | 0x19 => i += 1,
            0x15 | 0x16 => i += 2 + two(connect, i),
            0x26 => {
                i += 2 + two(connect, i);
                i += 2 + two(connect, i);
            }
            _ => return false,
        }
    }
    false
}
