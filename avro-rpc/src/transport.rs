//! Stream layering: TLS and Flume's deflate on top of a TCP stream, in either order.
//!
//! Flume ≤1.9 puts TLS outermost (`TCP → TLS → zlib → packs`); Flume 1.10/1.11 put zlib
//! outermost (`TCP → zlib → TLS → packs`). The two only differ when both are enabled; the
//! default is ≤1.9's ([`Layering::TlsOutside`]). Both ends of a connection must agree.
//!
//! [`ServerLayers::wrap`] / [`ClientLayers::wrap`] return a [`BoxStream`] so that callers hold
//! one type whatever the configuration.

use std::io;
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use weir_core::tls::rustls::ClientConfig;

use crate::deflate::{DeflateStream, DEFAULT_LEVEL};
use weir_core::tls::{
    self, TlsAcceptor, TlsClientSettings, TlsConnector, TlsError, TlsServerSettings,
};

/// Flume's `compression-type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    /// One zlib stream per direction for the whole connection, sync-flushed per pack.
    Deflate,
}

/// Which wrapper is nearer the socket when both TLS and deflate are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layering {
    /// Flume ≤1.9: `TCP → TLS → zlib → packs`. The default.
    #[default]
    TlsOutside,
    /// Flume 1.10/1.11: `TCP → zlib → TLS → packs` (TLS records are compressed).
    DeflateOutside,
}

/// Any bidirectional byte stream usable by the RPC layer.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// A layered stream behind one type.
pub type BoxStream = Box<dyn AsyncStream>;

/// Server-side layers for accepted connections.
#[derive(Clone, Default)]
pub struct ServerLayers {
    pub tls: Option<TlsAcceptor>,
    pub compression: Compression,
    /// zlib level for what the server writes (Flume: 6).
    pub level: u32,
    pub layering: Layering,
}

impl std::fmt::Debug for ServerLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLayers")
            .field("tls", &self.tls.is_some())
            .field("compression", &self.compression)
            .field("level", &self.level)
            .field("layering", &self.layering)
            .finish()
    }
}

impl ServerLayers {
    /// No TLS, no compression.
    pub fn plain() -> Self {
        ServerLayers {
            level: DEFAULT_LEVEL,
            ..Default::default()
        }
    }

    /// Whether the peer's first bytes must be a TLS handshake (TLS on, and not under zlib).
    pub fn tls_outermost(&self) -> bool {
        self.tls.is_some()
            && (self.compression == Compression::None || self.layering == Layering::TlsOutside)
    }

    /// Wrap an accepted stream (runs the TLS handshake if TLS is on; bound it with a timeout).
    pub async fn wrap<S: AsyncStream + 'static>(&self, s: S) -> io::Result<BoxStream> {
        let deflate = self.compression == Compression::Deflate;
        Ok(match (&self.tls, deflate, self.layering) {
            (None, false, _) => Box::new(s),
            (None, true, _) => Box::new(DeflateStream::new(s, self.level)),
            (Some(acc), false, _) => Box::new(acc.accept(s).await?),
            (Some(acc), true, Layering::TlsOutside) => {
                Box::new(DeflateStream::new(acc.accept(s).await?, self.level))
            }
            (Some(acc), true, Layering::DeflateOutside) => {
                Box::new(acc.accept(DeflateStream::new(s, self.level)).await?)
            }
        })
    }
}

/// Client-side layers for outgoing connections.
#[derive(Clone, Default)]
pub struct ClientLayers {
    /// TLS config and an optional name to verify instead of the host connected to.
    pub tls: Option<(Arc<ClientConfig>, Option<String>)>,
    pub compression: Compression,
    /// zlib level for what the client writes (Flume's `compression-level`, default 6).
    pub level: u32,
    pub layering: Layering,
}

impl std::fmt::Debug for ClientLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLayers")
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .field("compression", &self.compression)
            .field("level", &self.level)
            .field("layering", &self.layering)
            .finish()
    }
}

impl ClientLayers {
    /// No TLS, no compression.
    pub fn plain() -> Self {
        ClientLayers {
            level: DEFAULT_LEVEL,
            ..Default::default()
        }
    }

    /// Wrap a connected stream to `host` (the TLS server name unless overridden).
    pub async fn wrap<S: AsyncStream + 'static>(&self, s: S, host: &str) -> io::Result<BoxStream> {
        let deflate = self.compression == Compression::Deflate;
        let Some((cfg, name)) = &self.tls else {
            return Ok(if deflate {
                Box::new(DeflateStream::new(s, self.level))
            } else {
                Box::new(s)
            });
        };
        let name = tls::server_name(name.as_deref().unwrap_or(host))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = TlsConnector::from(cfg.clone());
        Ok(match (deflate, self.layering) {
            (false, _) => Box::new(connector.connect(name, s).await?),
            (true, Layering::TlsOutside) => Box::new(DeflateStream::new(
                connector.connect(name, s).await?,
                self.level,
            )),
            (true, Layering::DeflateOutside) => Box::new(
                connector
                    .connect(name, DeflateStream::new(s, self.level))
                    .await?,
            ),
        })
    }
}

impl ServerLayers {
    /// The layers a listening component's settings ask for; errors name the TLS file.
    pub fn from_settings(
        tls: Option<&TlsServerSettings>,
        compression: Compression,
        level: u32,
        layering: Layering,
    ) -> Result<Self, TlsError> {
        Ok(ServerLayers {
            tls: tls.map(TlsServerSettings::acceptor).transpose()?,
            compression,
            level,
            layering,
        })
    }
}

impl ClientLayers {
    /// The layers a connecting component's settings ask for; errors name the CA file.
    pub fn from_settings(
        tls: Option<&TlsClientSettings>,
        compression: Compression,
        level: u32,
        layering: Layering,
    ) -> Result<Self, TlsError> {
        Ok(ClientLayers {
            tls: tls
                .map(|t| t.client_config().map(|c| (c, t.server_name.clone())))
                .transpose()?,
            compression,
            level,
            layering,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use crate::{
        ClientOptions, ConnectionInfo, Protocol, Responder, RpcClient, RpcServer, ServerOptions,
        Status,
    };
    use bytes::Bytes;
    use weir_core::Event;

    struct Ok;
    #[async_trait::async_trait]
    impl Responder for Ok {
        async fn call(&self, _: &str, p: Bytes, _: &ConnectionInfo) -> Result<Bytes, String> {
            crate::datum::decode_events(p).map_err(|e| e.to_string())?;
            Result::Ok(Status::Ok.encode())
        }
    }

    #[test]
    fn config_names() {
        #[derive(Deserialize)]
        struct C {
            c: Compression,
            l: Layering,
        }
        let c: C = serde_json::from_str(r#"{"c":"deflate","l":"deflate-outside"}"#).expect("de");
        assert_eq!((c.c, c.l), (Compression::Deflate, Layering::DeflateOutside));
        let c: C = serde_json::from_str(r#"{"c":"none","l":"tls-outside"}"#).expect("de");
        assert_eq!((c.c, c.l), (Compression::None, Layering::TlsOutside));
    }

    /// Every combination of TLS × deflate × order carries an RPC end to end; and a
    /// mismatched order fails instead of passing garbage.
    #[tokio::test]
    async fn all_layer_combinations_carry_rpc() {
        let dir = TempDir::new("layers");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
        let acceptor = TlsServerSettings {
            cert: cert.clone(),
            key,
        }
        .acceptor()
        .expect("acceptor");
        let client_cfg = tls::client_tls_config(Some(&cert), false).expect("client cfg");
        for tls_on in [false, true] {
            for compression in [Compression::None, Compression::Deflate] {
                for layering in [Layering::TlsOutside, Layering::DeflateOutside] {
                    let server_layers = ServerLayers {
                        tls: tls_on.then(|| acceptor.clone()),
                        compression,
                        level: 6,
                        layering,
                    };
                    let client_layers = ClientLayers {
                        tls: tls_on.then(|| (client_cfg.clone(), None)),
                        compression,
                        level: 1,
                        layering,
                    };
                    let (a, b) = tokio::io::duplex(1 << 16);
                    let srv = tokio::spawn(async move {
                        let s = server_layers.wrap(b).await.expect("server wrap");
                        RpcServer::new(Protocol::flume(), ServerOptions::default())
                            .serve_connection(s, &Ok, &ConnectionInfo::default())
                            .await
                    });
                    let s = client_layers
                        .wrap(a, "localhost")
                        .await
                        .expect("client wrap");
                    let mut c = RpcClient::new(s, Protocol::flume(), ClientOptions::default());
                    let batch = vec![Event::new(vec![b'x'; 20_000]).with_header("h", "v")];
                    for _ in 0..3 {
                        assert_eq!(c.append_batch(&batch).await.expect("rpc"), Status::Ok);
                    }
                    drop(c);
                    srv.await.expect("join").expect("server");
                }
            }
        }
    }
}
