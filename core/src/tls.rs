//! TLS for every listener and every connecting component (rustls with the `ring` provider):
//! the `tls = { … }` settings tables, loading PEM files into rustls configs, and the server-side
//! handshake with a clear error for a plaintext client.
//!
//! Flume configures TLS from Java keystores; weir takes PEM files. Config errors name the file
//! (and, from [`TlsServerSettings::check`], the config key).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};

pub use tokio_rustls::rustls;
pub use tokio_rustls::server::TlsStream as ServerTlsStream;
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

/// `tls = { cert = "…", key = "…" }` on a listening component (and `[http]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerSettings {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsServerSettings {
    /// The rustls server config; errors name the file.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&self.cert, &self.key)
    }

    /// An acceptor for handshakes ([`accept`]).
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        self.server_config().map(TlsAcceptor::from)
    }

    /// What is wrong, by config key under the component (`tls.cert`, `tls.key`, or `tls` when
    /// the two files do not belong together), each message naming the file.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let certs = load_certs(&self.cert).map_err(|e| ("tls.cert", e.to_string()));
        let key = load_key(&self.key).map_err(|e| ("tls.key", e.to_string()));
        match (certs, key) {
            (Ok(certs), Ok(key)) => match build_server_config(certs, key) {
                Ok(_) => Vec::new(),
                Err(e) => vec![(
                    "tls",
                    format!("{} / {}: {e}", self.cert.display(), self.key.display()),
                )],
            },
            (certs, key) => [certs.err(), key.err()].into_iter().flatten().collect(),
        }
    }
}

/// `tls = { ca = "…" }` or `tls = { trust_all = true }` on a connecting component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientSettings {
    /// PEM file of CA certificates to trust; unset = the system bundle.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Accept any certificate (Flume's `trust-all-certs`): encrypts, does not authenticate.
    #[serde(default)]
    pub trust_all: bool,
    /// Name to verify in the certificate; defaults to the host connected to.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsClientSettings {
    /// The rustls client config; errors name the CA file.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_tls_config(self.ca.as_deref(), self.trust_all)
    }
}

/// Debian's system CA bundle, used when a TLS client names no CA file.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A rustls client config: trust `ca` (PEM), or everything (`trust_all`, Flume's
/// `trust-all-certs`), or else the system CA bundle ([`SYSTEM_CA_BUNDLE`]).
pub fn client_tls_config(
    ca: Option<&Path>,
    trust_all: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let trust = match (trust_all, ca) {
        (true, _) => ClientTrust::TrustAll,
        (false, Some(ca)) => ClientTrust::CaFile(ca.to_path_buf()),
        (false, None) => ClientTrust::CaFile(SYSTEM_CA_BUNDLE.into()),
    };
    client_config(&trust)
}

/// The first byte of every TLS connection: a handshake record.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why a server-side TLS handshake did not complete. One line each in the log.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("plaintext client on a TLS port: first byte {first:#04x} does not start a TLS handshake (0x16); closing")]
    Plaintext { first: u8 },
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("peer closed before the TLS handshake")]
    Closed,
}

impl HandshakeError {
    /// A bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Plaintext { .. } => "plaintext_on_tls_port",
            HandshakeError::Failed(_) => "tls_handshake_failed",
            HandshakeError::Timeout(_) => "tls_handshake_timeout",
            HandshakeError::Closed => "closed_before_handshake",
        }
    }
}

/// The first byte the peer sent, without consuming it; `None` when it closed first.
pub async fn first_byte(tcp: &TcpStream) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    Ok((tcp.peek(&mut b).await? == 1).then_some(b[0]))
}

/// Refuses a peer whose first byte cannot start TLS, by name instead of with rustls' "corrupt
/// message", so an operator sees at once that a client is not configured for TLS.
pub async fn expect_tls_client(tcp: &TcpStream) -> Result<(), HandshakeError> {
    match first_byte(tcp).await {
        Ok(Some(TLS_HANDSHAKE_RECORD)) => Ok(()),
        Ok(Some(first)) => Err(HandshakeError::Plaintext { first }),
        Ok(None) => Err(HandshakeError::Closed),
        Err(e) => Err(HandshakeError::Failed(e)),
    }
}

/// Server side of a handshake on an accepted TCP connection, bounded by `timeout`.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<ServerTlsStream<TcpStream>, HandshakeError> {
    let handshake = async {
        expect_tls_client(&tcp).await?;
        acceptor.accept(tcp).await.map_err(HandshakeError::Failed)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout)))
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
    build_server_config(load_certs(cert_pem)?, load_key(key_pem)?)
}

fn build_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
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
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path());
        let server = server_config(&cert, &key).expect("server config");
        roundtrip(ClientTrust::CaFile(cert.clone()), server.clone()).await;
        roundtrip(ClientTrust::TrustAll, server).await;
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
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

    #[test]
    fn client_config_errors_name_the_file() {
        let e = client_tls_config(Some(Path::new("/nonexistent/ca.pem")), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(client_tls_config(None, true).is_ok());
    }

    #[test]
    fn settings_check_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path());
        let ok = TlsServerSettings {
            cert: cert.clone(),
            key: key.clone(),
        };
        assert!(ok.check().is_empty(), "{:?}", ok.check());
        let missing = dir.path().join("nope.pem");
        let bad = TlsServerSettings {
            cert: missing.clone(),
            key: cert.clone(),
        };
        let problems = bad.check();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, "tls.cert");
        assert!(problems[0].1.contains("nope.pem"), "{problems:?}");
        assert_eq!(problems[1].0, "tls.key");
        assert!(problems[1].1.contains("cert.pem"), "{problems:?}");
        // A key that does not belong to the certificate.
        let (_, other_key) = self_signed(&{
            let d = dir.path().join("other");
            std::fs::create_dir(&d).expect("mkdir");
            d
        });
        let mismatched = TlsServerSettings {
            cert,
            key: other_key,
        };
        let problems = mismatched.check();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "tls");
        assert!(problems[0].1.contains("cert.pem"), "{problems:?}");
    }

    async fn tls_listener(
        server: Arc<ServerConfig>,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<Vec<Result<(), String>>>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(server);
        // Serves three connections one after the other, echoing 5 bytes on each.
        let task = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..3 {
                let (tcp, _) = l.accept().await.expect("accept");
                let r = match accept(&acceptor, tcp, Duration::from_secs(10)).await {
                    Ok(mut s) => {
                        let mut buf = [0u8; 5];
                        s.read_exact(&mut buf).await.expect("read");
                        s.write_all(&buf).await.expect("echo");
                        s.flush().await.expect("flush");
                        Ok(())
                    }
                    Err(e) => Err(format!("{}: {e}", e.kind())),
                };
                results.push(r);
            }
            results
        });
        (addr, task)
    }

    #[tokio::test]
    async fn handshake_refuses_untrusting_and_plaintext_clients_and_serves_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path());
        let other = dir.path().join("other");
        std::fs::create_dir(&other).expect("mkdir");
        let (other_ca, _) = self_signed(&other);
        let (addr, task) = tls_listener(server_config(&cert, &key).expect("config")).await;

        // 1. A client trusting another CA: its handshake fails.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let untrusting = TlsConnector::from(
            client_config(&ClientTrust::CaFile(other_ca)).expect("client config"),
        );
        assert!(untrusting
            .connect(server_name("localhost").expect("name"), tcp)
            .await
            .is_err());

        // 2. A plaintext client: refused by name.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"hello\n").await.expect("write");
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;

        // 3. A trusting client still gets served.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let trusting = TlsConnector::from(
            client_config(&ClientTrust::CaFile(cert.clone())).expect("client config"),
        );
        let mut s = trusting
            .connect(server_name("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        s.write_all(b"hello").await.expect("write");
        s.flush().await.expect("flush");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");

        let results = task.await.expect("server task");
        assert!(
            matches!(&results[0], Err(e) if e.starts_with("tls_handshake_failed")),
            "{results:?}"
        );
        assert!(
            matches!(&results[1], Err(e) if e.starts_with("plaintext_on_tls_port") && e.contains("0x68")),
            "{results:?}"
        );
        assert_eq!(results[2], Ok(()));
    }
}
