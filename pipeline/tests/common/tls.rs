//! TLS for tests: a CA and a server certificate for 127.0.0.1 made with openssl, and a TLS
//! terminator that forwards to a plaintext port (a stand-in for a node's TLS listener).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// `ca.pem`, and `server.pem` / `server.key` signed by it for IP 127.0.0.1, in `dir`.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        for args in [
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=locus-test-ca",
            "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext.cnf",
        ] {
            let ok = Command::new("openssl")
                .args(args.split(' '))
                .current_dir(dir)
                .stderr(Stdio::null())
                .status()
                .expect("openssl")
                .success();
            assert!(ok, "openssl {args}");
        }
        TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    /// Another CA of its own (for a client that must refuse this one's certificates).
    pub fn other(dir: &Path) -> PathBuf {
        let ok = Command::new("openssl")
            .args("req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 1 -subj /CN=other-ca".split(' '))
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok);
        dir.join("other.pem")
    }
}

/// Listens on a free port with TLS (`ca`'s server certificate) and forwards each connection,
/// decrypted, to 127.0.0.1:`target`. Returns the port.
pub async fn tls_terminator(ca: &TestCa, target: u16) -> u16 {
    let certs = rustls_pemfile::certs(&mut &std::fs::read(&ca.cert).unwrap()[..])
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(&ca.key).unwrap()[..])
        .unwrap()
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}
