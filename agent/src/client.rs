//! What the client commands (`send`, `poll`, `bench`) share: where to connect and how to
//! layer the connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use weir_avro_rpc::client::{ClientOptions, RpcClient};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::transport::{BoxStream, ClientLayers, Compression, Layering};
use weir_core::tls::TlsClientSettings;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionArg {
    None,
    Deflate,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Deflate => Compression::Deflate,
        }
    }
}

/// `--host`, `--port` and the connection's layers.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Host to connect to.
    #[arg(long, short = 'H')]
    pub host: String,
    /// Port to connect to.
    #[arg(long, short)]
    pub port: u16,
    /// `deflate` to match a peer with compression = "deflate".
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// Connect with TLS, trusting the CA certificates in this PEM file.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Connect with TLS and accept any certificate (testing only).
    #[arg(long)]
    pub tls_trust_all: bool,
}

impl ConnectArgs {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn layers(&self) -> anyhow::Result<ClientLayers> {
        let tls = (self.tls_ca.is_some() || self.tls_trust_all).then(|| TlsClientSettings {
            ca: self.tls_ca.clone(),
            trust_all: self.tls_trust_all,
            server_name: None,
        });
        Ok(ClientLayers::from_settings(
            tls.as_ref(),
            self.compression.into(),
            6,
            Layering::default(),
        )?)
    }

    pub async fn connect(
        &self,
        protocol: Arc<Protocol>,
        timeout: Duration,
    ) -> anyhow::Result<RpcClient<BoxStream>> {
        open(&self.addr(), &self.host, &self.layers()?, protocol, timeout).await
    }
}

/// A client on a fresh connection to `addr`, layered as asked; `host` is the TLS name.
pub async fn open(
    addr: &str,
    host: &str,
    layers: &ClientLayers,
    protocol: Arc<Protocol>,
    request_timeout: Duration,
) -> anyhow::Result<RpcClient<BoxStream>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let stream = layers
        .wrap(tcp, host)
        .await
        .with_context(|| format!("cannot set up the connection to {addr}"))?;
    Ok(RpcClient::new(
        stream,
        protocol,
        ClientOptions {
            request_timeout,
            ..ClientOptions::default()
        },
    ))
}
