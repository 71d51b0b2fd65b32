//! A minimal SSE client over a raw TCP socket: the tests need to cut connections at will,
//! read slowly with a small receive buffer, and see heartbeat comments.
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `fix`, `snapshot`, `gap`, ... or `:` for a comment (heartbeat).
    pub kind: String,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    raw: Vec<u8>,
    text: String,
    ended: bool,
}

impl SseClient {
    /// `GET path` with extra headers; `rcvbuf`: a small receive buffer (a slow client).
    pub async fn open(
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        rcvbuf: Option<u32>,
    ) -> SseClient {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let stream = socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect to locus");
        let mut reader = BufReader::new(stream);
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        reader.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = vec![];
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        SseClient {
            reader,
            status,
            headers,
            raw: Vec::new(),
            text: String::new(),
            ended: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole body of a non-streaming answer (error responses).
    pub async fn body(&mut self) -> String {
        let len: usize = self
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut b = vec![0; len];
        self.reader.read_exact(&mut b).await.unwrap();
        String::from_utf8_lossy(&b).into_owned()
    }

    /// Moves one chunk of the chunked body into the text buffer; false at the end. Safe to
    /// cancel (a timeout loses nothing): bytes are kept in `raw` until a chunk is whole.
    async fn fill(&mut self) -> bool {
        loop {
            if let Some(pos) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.raw[..pos])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                    .unwrap_or(0);
                if size == 0 {
                    return false;
                }
                if self.raw.len() >= pos + 2 + size + 2 {
                    let chunk =
                        String::from_utf8_lossy(&self.raw[pos + 2..pos + 2 + size]).into_owned();
                    self.text.push_str(&chunk);
                    self.raw.drain(..pos + 2 + size + 2);
                    return true;
                }
            }
            let mut tmp = [0u8; 8192];
            let n = self.reader.read(&mut tmp).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            self.raw.extend_from_slice(&tmp[..n]);
        }
    }

    /// The next event or comment; `None` when the stream ended or nothing came in `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut ev = Event {
                    kind: String::new(),
                    id: None,
                    data: String::new(),
                };
                let mut comment = false;
                for l in block.lines() {
                    if l.starts_with(':') {
                        comment = true;
                    } else if let Some(v) = l.strip_prefix("event: ") {
                        ev.kind = v.to_string();
                    } else if let Some(v) = l.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                    } else if let Some(v) = l.strip_prefix("data: ") {
                        ev.data.push_str(v);
                    }
                }
                if !ev.kind.is_empty() {
                    return Some(ev);
                }
                if comment {
                    ev.kind = ":".into();
                    return Some(ev);
                }
                // `retry:` only: nothing to report
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => {}
                Ok(false) => self.ended = true,
                Err(_) => return None,
            }
        }
    }

    pub fn ended(&self) -> bool {
        self.ended
    }
}
