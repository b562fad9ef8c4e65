//! TLS configuration helpers (rustls with the `ring` provider).
//!
//! Flume configures TLS from Java keystores; weir takes PEM files. Wrap the TCP stream (or the
//! deflate stream, see the crate docs) with `tokio_rustls::TlsAcceptor`/`TlsConnector` built
//! from these configs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};

pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why a TLS configuration could not be built. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificates { path: PathBuf },
    #[error("{path}: no private key found (expected a PEM PKCS#8, PKCS#1 or SEC1 key)")]
    NoPrivateKey { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid TLS server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Read all certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { path: path.into() });
    }
    Ok(certs)
}

/// Read the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: path.into() },
        e => TlsError::Pem {
            path: path.into(),
            reason: e.to_string(),
        },
    })
}

/// A server config from a PEM certificate chain and a PEM private key.
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert_pem)?;
    let key = load_key(key_pem)?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// How a client decides to trust the server.
#[derive(Debug, Clone)]
pub enum ClientTrust {
    /// Trust certificates signed by the CAs in this PEM file (Flume's `truststore`).
    CaFile(PathBuf),
    /// Accept any certificate (Flume's `trust-all-certs = true`). Encrypts but does not
    /// authenticate the server.
    TrustAll,
}

/// A client config.
pub fn client_config(trust: &ClientTrust) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let cfg = match trust {
        ClientTrust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    path: path.clone(),
                    reason: format!("unusable CA certificate: {e}"),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ClientTrust::TrustAll => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAll(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// The name to verify the server certificate against: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|e| TlsError::ServerName {
        name: host.to_owned(),
        reason: e.to_string(),
    })
}

/// Accepts any server certificate but still checks the handshake signatures, so the session
/// keys belong to whoever holds the presented certificate.
#[derive(Debug)]
struct TrustAll(Arc<CryptoProvider>);

impl ServerCertVerifier for TrustAll {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("write cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
        (cert, key)
    }

    async fn roundtrip(trust: ClientTrust, server: Arc<ServerConfig>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let acceptor = TlsAcceptor::from(server);
        let srv = tokio::spawn(async move {
            let mut s = acceptor.accept(b).await.expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(&buf).await.expect("echo");
            s.flush().await.expect("flush");
        });
        let connector = TlsConnector::from(client_config(&trust).expect("client config"));
        let mut c = connector
            .connect(server_name("localhost").expect("name"), a)
            .await
            .expect("connect");
        c.write_all(b"hello").await.expect("write");
        c.flush().await.expect("flush");
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
        srv.await.expect("server task");
    }

    #[tokio::test]
    async fn self_signed_with_ca_file_and_trust_all() {
        let dir = TempDir::new("ok");
        let (cert, key) = self_signed(dir.path());
        let server = server_config(&cert, &key).expect("server config");
        roundtrip(ClientTrust::CaFile(cert.clone()), server.clone()).await;
        roundtrip(ClientTrust::TrustAll, server).await;
    }

    #[test]
    fn errors_name_the_file() {
        let dir = TempDir::new("err");
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").expect("write");
        let e = load_certs(&empty).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificates { .. }), "{e}");
        assert!(e.to_string().contains("empty.pem"));
        let (cert, _) = self_signed(dir.path());
        let e = server_config(&cert, &cert).unwrap_err();
        assert!(matches!(e, TlsError::NoPrivateKey { .. }), "{e}");
        assert!(e.to_string().contains("cert.pem"));
    }
}
