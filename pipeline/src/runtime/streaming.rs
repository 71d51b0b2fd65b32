//! A lean HTTP/1.1 path for long-lived streaming responses (the SSE stream).
//!
//! hyper keeps an 8 KiB read buffer and a write buffer for every connection for as long as
//! it is open; for thousands of idle event streams those buffers are most of their memory.
//! So the server reads each new connection's request line itself:
//!
//! - a `GET` of one of the streaming paths is answered here: the head is parsed from a small
//!   buffer that is freed before the response starts, the router answers as for any other
//!   request, and the body is written to the socket frame by frame (chunked encoding, or
//!   up to the close for HTTP/1.0; `connection: close`: a stream is the connection's last
//!   response);
//! - anything else goes to hyper, with the bytes already read put back in front
//!   ([`Rewind`]), so keep-alive, bodies and every other route behave as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Version, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::metrics::HTTP;

/// The largest request head the streaming path reads (a token in the query string and a
/// browser's headers fit easily); a larger one is refused with 431.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// What the first bytes of a connection turned out to be.
pub enum Opening {
    /// A request for a streaming path, parsed.
    Stream(Box<Request<Body>>),
    /// Anything else: the bytes read so far, for hyper.
    Other(Vec<u8>),
    /// A streaming request whose head is malformed or too large: answered and closed here.
    Refused(&'static str),
    /// The client closed the connection before sending a request line.
    Closed,
}

/// Reads from `stream` until it can tell whether the request is a `GET` of one of `paths`,
/// and if it is, until its head is complete.
pub async fn open(stream: &mut TcpStream, paths: &[&str]) -> io::Result<Opening> {
    use tokio::io::AsyncReadExt;
    let mut head = Head::default();
    loop {
        if head.buf.len() == head.buf.capacity() {
            head.buf.reserve(head.buf.len().max(1024));
        }
        if stream.read_buf(&mut head.buf).await? == 0 {
            return Ok(if head.buf.is_empty() {
                Opening::Closed
            } else {
                Opening::Other(head.buf)
            });
        }
        if let Some(opening) = head.advance(paths) {
            return Ok(opening);
        }
    }
}

/// A request head as it arrives. Each call of [`Head::advance`] looks only at the bytes that
/// came since the last one (and three before, for a `\r\n\r\n` across reads), so a client
/// sending one byte at a time costs linear work, not a fresh scan of the whole head per byte.
#[derive(Default)]
struct Head {
    buf: Vec<u8>,
    /// How far the buffer has been searched.
    scanned: usize,
    /// Whether the request line named a streaming path.
    is_stream: bool,
    /// Bytes examined so far (tests check it stays linear).
    work: usize,
}

impl Head {
    fn advance(&mut self, paths: &[&str]) -> Option<Opening> {
        if !self.is_stream {
            let from = self.scanned.saturating_sub(1);
            let found = self.buf[from..].windows(2).position(|w| w == b"\r\n");
            self.work += self.buf.len() - from;
            self.scanned = self.buf.len();
            let Some(at) = found else {
                if self.buf.len() > MAX_HEAD {
                    return Some(Opening::Other(std::mem::take(&mut self.buf)));
                }
                return None;
            };
            if !wants_stream(&self.buf[..from + at], paths) {
                return Some(Opening::Other(std::mem::take(&mut self.buf)));
            }
            self.is_stream = true;
            self.scanned = from + at;
        }
        // The head ends at the first empty line: parse it once that has arrived.
        let from = self.scanned.saturating_sub(3);
        let end = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n");
        self.work += self.buf.len() - from;
        self.scanned = self.buf.len();
        let Some(end) = end else {
            return (self.buf.len() >= MAX_HEAD)
                .then_some(Opening::Refused("431 Request Header Fields Too Large"));
        };
        let head = &self.buf[..from + end + 4];
        if head.len() > MAX_HEAD {
            return Some(Opening::Refused("431 Request Header Fields Too Large"));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        self.work += head.len();
        Some(match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => match to_request(&req) {
                Some(r) => Opening::Stream(Box::new(r)),
                None => Opening::Refused("400 Bad Request"),
            },
            Err(httparse::Error::TooManyHeaders) => {
                Opening::Refused("431 Request Header Fields Too Large")
            }
            Ok(httparse::Status::Partial) | Err(_) => Opening::Refused("400 Bad Request"),
        })
    }
}

/// `GET <one of paths>[?query] HTTP/1.x`, with nothing announcing a request body (such a
/// request is hyper's to handle).
fn wants_stream(request_line: &[u8], paths: &[&str]) -> bool {
    let Some(target) = request_line.strip_prefix(b"GET ") else {
        return false;
    };
    let path_end = target
        .iter()
        .position(|&b| b == b'?' || b == b' ')
        .unwrap_or(target.len());
    paths.iter().any(|p| &target[..path_end] == p.as_bytes())
}

fn to_request(req: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let version = match req.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(req.path?)
        .version(version);
    for h in req.headers.iter() {
        // A streaming GET with a body is not one this path serves.
        if h.name.eq_ignore_ascii_case("content-length") && h.value != b"0"
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        }
        builder = builder.header(h.name, h.value);
    }
    builder.body(Body::empty()).ok()
}

/// Answers a malformed streaming request and closes.
pub async fn refuse(mut stream: TcpStream, status: &str) {
    let msg = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(msg.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The send buffer of a streaming connection: a client that stops reading blocks the
/// server's writes once about this much waits for it (Linux doubles it), so a stall shows.
const STREAM_SNDBUF: usize = 64 * 1024;

/// Lets the router answer `req` and writes the response to `stream` as its body produces
/// it, until the body ends or the client goes away. A client that takes nothing for `stall`
/// while a write waits (a zero receive window: it stopped reading) is closed: its slot must
/// not be held by a reader that is not there. (A client that reads slowly but steadily keeps
/// its stream, with conflated fixes; one whose kernel still takes the heartbeats into its
/// buffers is closed once those buffers are full.)
pub async fn respond(mut stream: TcpStream, router: Router, req: Request<Body>, stall: Duration) {
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(STREAM_SNDBUF);
    // HTTP/1.0 has no chunked encoding: its body ends where the connection does.
    let chunked = req.version() != Version::HTTP_10;
    let Ok(response) = router.oneshot(req).await;
    let (parts, mut body) = response.into_parts();
    let length = http_body::Body::size_hint(&body).exact();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match length {
        Some(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None if chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    if write_within(&mut stream, &head, stall).await.is_err() {
        return;
    }
    drop(head);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = client_gone(&stream) => return,
        };
        let data = match frame {
            None => break,
            Some(Err(error)) => {
                tracing::debug!(%error, "streaming response body failed");
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        let written = if length.is_some() || !chunked {
            write_within(&mut stream, &data, stall).await
        } else {
            let mut chunk = Vec::with_capacity(data.len() + 12);
            chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            write_within(&mut stream, &chunk, stall).await
        };
        if written.is_err() {
            return;
        }
    }
    if length.is_none() && chunked {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    let _ = stream.shutdown().await;
}

/// Writes `bytes`, or fails if the client takes none of them for `stall`.
async fn write_within(stream: &mut TcpStream, bytes: &[u8], stall: Duration) -> io::Result<()> {
    let mut left = bytes;
    while !left.is_empty() {
        match tokio::time::timeout(stall, stream.write(left)).await {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => left = &left[n..],
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                HTTP.stalled.inc();
                tracing::info!(
                    ?stall,
                    "a streaming client took nothing; closing its stream"
                );
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
    }
    Ok(())
}

/// Resolves when the client closed its side (or the socket failed). Whatever else it sends
/// meanwhile is read and ignored, a few bytes at a time, without a buffer of its own.
async fn client_gone(stream: &TcpStream) {
    let mut scratch = [0u8; 64];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// A connection whose first bytes were already read: they are read again first. Every
/// response hyper writes on it gets the streaming path's stall bound too: a write the client
/// takes nothing of for `stall` fails (a stream can also reach hyper — a later request on a
/// kept-alive connection, an absolute-form target — and must not hold its slot forever).
pub struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
    stall: Duration,
    /// Set while a write waits for the client; it fails when this fires.
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Rewind {
    pub fn new(prefix: Vec<u8>, inner: TcpStream, stall: Duration) -> Rewind {
        Rewind {
            prefix,
            at: 0,
            inner,
            stall,
            blocked: None,
        }
    }

    /// What a write's `Pending` means: the client takes nothing; past `stall`, an error.
    fn waited<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.blocked = None;
            return polled;
        }
        let stall = self.stall;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            HTTP.stalled.inc();
            tracing::info!(
                ?stall,
                "a client took nothing of a response; closing its connection"
            );
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.waited(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.waited(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.waited(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_get_of_a_streaming_path_is_taken() {
        let paths = ["/v1/stream"];
        assert!(wants_stream(b"GET /v1/stream HTTP/1.1", &paths));
        assert!(wants_stream(
            b"GET /v1/stream?access_token=x HTTP/1.1",
            &paths
        ));
        assert!(!wants_stream(b"GET /v1/streams HTTP/1.1", &paths));
        assert!(!wants_stream(b"GET /v1/stream/x HTTP/1.1", &paths));
        assert!(!wants_stream(b"HEAD /v1/stream HTTP/1.1", &paths));
        assert!(!wants_stream(b"POST /v1/stream HTTP/1.1", &paths));
        assert!(!wants_stream(b"GET / HTTP/1.1", &paths));
        assert!(!wants_stream(b"GET", &paths));
    }

    /// Feeds `bytes` to a head reader `step` bytes at a time; what it decided, and the work.
    fn feed(bytes: &[u8], step: usize) -> (Option<Opening>, usize) {
        let mut head = Head::default();
        for piece in bytes.chunks(step) {
            head.buf.extend_from_slice(piece);
            if let Some(o) = head.advance(&["/v1/stream"]) {
                return (Some(o), head.work);
            }
        }
        (None, head.work)
    }

    #[test]
    fn a_head_is_read_whole_in_any_pieces() {
        let req = b"GET /v1/stream?x=1 HTTP/1.1\r\nhost: a\r\naccept: text/event-stream\r\n\r\n";
        for step in [1, 2, 3, 5, 1000] {
            match feed(req, step).0 {
                Some(Opening::Stream(r)) => {
                    assert_eq!(r.uri(), "/v1/stream?x=1", "step {step}");
                    assert_eq!(r.headers()["accept"], "text/event-stream");
                }
                _ => panic!("step {step}: not a stream"),
            }
        }
        assert!(matches!(
            feed(b"GET /metrics HTTP/1.1\r\n", 1).0,
            Some(Opening::Other(_))
        ));
        assert!(
            feed(b"GET /v1/stream HTTP/1.1\r\nhost: a\r\n", 1)
                .0
                .is_none()
        );
        assert!(matches!(
            feed(b"GET /v1/stream HTTP/1.1\r\nbad header\r\n\r\n", 1).0,
            Some(Opening::Refused("400 Bad Request"))
        ));
    }

    /// A client dripping a 16 KiB head one byte at a time costs linear work (before, each
    /// byte re-scanned and re-parsed the whole head: ~n²/2 = 130 M bytes examined).
    #[test]
    fn a_dripped_head_costs_linear_work() {
        let mut req = b"GET /v1/stream HTTP/1.1\r\n".to_vec();
        while req.len() < MAX_HEAD - 100 {
            req.extend_from_slice(b"x-filler: 0123456789abcdef0123456789abcdef\r\n");
        }
        let (opening, work) = feed(&req, 1);
        assert!(opening.is_none(), "not complete yet");
        assert!(
            work < 8 * req.len(),
            "{work} bytes examined for {}",
            req.len()
        );
        req.extend_from_slice(b"\r\n");
        let (opening, work) = feed(&req, 1);
        assert!(
            matches!(opening, Some(Opening::Refused(_))),
            "64 headers at most"
        );
        assert!(work < 8 * req.len(), "{work}");
        // Past the limit without an end: refused, not read on.
        let mut long = b"GET /v1/stream HTTP/1.1\r\nx: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert!(matches!(
            feed(&long, 1).0,
            Some(Opening::Refused("431 Request Header Fields Too Large"))
        ));
    }
}
