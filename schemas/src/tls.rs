//! TLS client settings every connector that speaks TLS itself shares (the MQTT relay, the
//! Scylla session): a CA to trust, an optional client certificate, and whether the server's
//! name is checked. Kafka's TLS is librdkafka's (`kafka.properties`).

use std::sync::Arc;

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme, crypto,
};

pub use tokio_rustls::rustls;

/// PEM files' contents: the CA(s) that sign the server's certificate, and optionally the
/// client's certificate chain and key.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    pub ca: &'a [u8],
    pub client_auth: Option<(&'a [u8], &'a [u8])>,
    /// Whether the certificate must name the server (its host name or IP). Off: only its
    /// chain to the CA is checked (for clusters whose node certificates do not carry the
    /// addresses the client connects to).
    pub verify_hostname: bool,
}

/// A rustls client configuration from `files`.
pub fn client_config(files: TlsFiles<'_>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &files.ca[..]) {
        let cert = cert.map_err(|e| format!("the CA file: {e}"))?;
        roots.add(cert).map_err(|e| format!("the CA file: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if files.verify_hostname {
        builder.with_root_certificates(roots)
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
    };
    match files.client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => {
            let chain = rustls_pemfile::certs(&mut &chain[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate file: {e}"))?;
            let key = rustls_pemfile::private_key(&mut &key[..])
                .map_err(|e| format!("the client key file: {e}"))?
                .ok_or("the client key file holds no private key")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate: {e}"))
        }
    }
}

/// Checks the chain to the CA (and the signatures), not the name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The contents of the files a `tls_*` config names.
#[derive(Debug, Clone)]
pub struct PemFiles {
    pub ca: Vec<u8>,
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl PemFiles {
    /// Reads them (`section` prefixes the errors, e.g. `scylla`).
    pub fn read(
        section: &str,
        ca_file: &str,
        cert_file: &str,
        key_file: &str,
    ) -> Result<PemFiles, String> {
        let read = |key: &str, path: &str| {
            std::fs::read(path).map_err(|e| format!("{section}.{key}: cannot read {path}: {e}"))
        };
        let ca = read("tls_ca_file", ca_file)?;
        let client_auth = match (cert_file.is_empty(), key_file.is_empty()) {
            (true, true) => None,
            (false, false) => Some((
                read("tls_client_cert_file", cert_file)?,
                read("tls_client_key_file", key_file)?,
            )),
            _ => {
                return Err(format!(
                    "{section}.tls_client_cert_file and {section}.tls_client_key_file go together"
                ));
            }
        };
        Ok(PemFiles { ca, client_auth })
    }

    pub fn as_files(&self, verify_hostname: bool) -> TlsFiles<'_> {
        TlsFiles {
            ca: &self.ca,
            client_auth: self
                .client_auth
                .as_ref()
                .map(|(c, k)| (c.as_slice(), k.as_slice())),
            verify_hostname,
        }
    }
}
