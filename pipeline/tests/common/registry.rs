//! A Schema Registry in front of the local one that answers `500` to the first requests of a
//! kind (then forwards everything), and counts what it refused: an outage the test controls.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::registry_url;

pub struct FailingRegistry {
    pub url: String,
    refused: Arc<AtomicUsize>,
}

impl FailingRegistry {
    /// Answers `500` to the first `fail` requests whose path starts with `prefix`.
    pub async fn start(prefix: &'static str, fail: usize) -> FailingRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = registry_url()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let refused = Arc::new(AtomicUsize::new(0));
        let count = refused.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (count, upstream) = (count.clone(), upstream.clone());
                tokio::spawn(async move {
                    // One request per connection (the registry clients here send bodies only
                    // with POST, which this test's paths do not fail): read its head.
                    let mut req = Vec::new();
                    let mut buf = [0u8; 8192];
                    let head_end = loop {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                        if let Some(at) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at;
                        }
                    };
                    let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or_default();
                    let body_len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    while req.len() < head_end + 4 + body_len {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    if path.starts_with(prefix) && count.fetch_add(1, Ordering::SeqCst) < fail {
                        let body = r#"{"error_code":50001,"message":"the store is down"}"#;
                        let resp = format!(
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(resp.as_bytes()).await;
                        return;
                    }
                    let forwarded = String::from_utf8_lossy(&req).replacen(
                        "\r\n",
                        "\r\nconnection: close\r\n",
                        1,
                    );
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = up.write_all(forwarded.as_bytes()).await;
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp).await;
                    let _ = client.write_all(&resp).await;
                });
            }
        });
        FailingRegistry { url, refused }
    }

    /// Requests of the kind refused so far (and passed, past `fail`).
    pub fn seen(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}
