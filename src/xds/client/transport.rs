//! How the client reaches the control plane: plaintext gRPC (istiod's
//! :15010, or a unix socket for tests and node-local proxies), or TLS
//! (istiod's :15012) checked against the mesh root CA, with the pod's
//! projected service-account token as `authorization: Bearer` on each
//! stream (read afresh each time: the kubelet rotates it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    pub address: Address,
    /// TLS with this root CA (PEM file); None: plaintext.
    pub tls_root_ca: Option<PathBuf>,
    /// Bearer token file sent on each stream; None: no token.
    pub token: Option<PathBuf>,
}

/// A control-plane address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `host:port`.
    Tcp(String),
    /// `unix:/path`.
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("xDS address {0:?}: expected host:port or unix:/absolute/path")]
    BadAddress(String),
    #[error("root CA {path}: {source}")]
    RootCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("service-account token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("service-account token {0} is not a valid header value")]
    TokenValue(PathBuf),
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 receive windows: a whole mesh's EDS (megabytes) arrives without
/// waiting for a window update every 64 KiB.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// HTTP/2 pings keep idle streams (no config change for hours) alive
/// through middleboxes and detect a dead peer.
const KEEPALIVE: Duration = Duration::from_secs(30);

impl Address {
    /// Parses `host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Self, TransportError> {
        if let Some(p) = s.strip_prefix("unix:") {
            let path = Path::new(p);
            return match path.is_absolute() {
                true => Ok(Self::Unix(path.to_path_buf())),
                false => Err(TransportError::BadAddress(s.into())),
            };
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(s.into()))
            }
            _ => Err(TransportError::BadAddress(s.into())),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => f.write_str(a),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Transport {
    /// Opens a channel (one HTTP/2 connection).
    pub async fn connect(&self) -> Result<Channel, TransportError> {
        let connect_err = |source| TransportError::Connect {
            address: self.address.to_string(),
            source,
        };
        match &self.address {
            Address::Unix(path) => {
                let path = path.clone();
                let connector = tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                });
                Endpoint::from_static("http://localhost")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(KEEPALIVE)
                    .initial_stream_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONNECTION_WINDOW)
                    .connect_with_connector(connector)
                    .await
                    .map_err(connect_err)
            }
            Address::Tcp(hostport) => {
                let scheme = if self.tls_root_ca.is_some() {
                    "https"
                } else {
                    "http"
                };
                let mut ep = Endpoint::from_shared(format!("{scheme}://{hostport}"))
                    .map_err(connect_err)?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(KEEPALIVE)
                    .initial_stream_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONNECTION_WINDOW)
                    .tcp_keepalive(Some(KEEPALIVE));
                if let Some(ca) = &self.tls_root_ca {
                    let pem = std::fs::read(ca).map_err(|source| TransportError::RootCa {
                        path: ca.clone(),
                        source,
                    })?;
                    let host = hostport.rsplit_once(':').map_or(hostport.as_str(), |h| h.0);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let tls = ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pem))
                        .domain_name(host);
                    ep = ep.tls_config(tls).map_err(connect_err)?;
                }
                ep.connect().await.map_err(connect_err)
            }
        }
    }

    /// The `authorization` header value for a new stream, if any.
    pub fn bearer(&self) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, TransportError> {
        let Some(path) = &self.token else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path).map_err(|source| TransportError::Token {
            path: path.clone(),
            source,
        })?;
        format!("Bearer {}", token.trim())
            .parse()
            .map(Some)
            .map_err(|_| TransportError::TokenValue(path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_are_named() {
        assert_eq!(
            Address::parse("istiod.istio-system.svc:15012").unwrap(),
            Address::Tcp("istiod.istio-system.svc:15012".into())
        );
        assert_eq!(
            Address::parse("unix:/run/xds.sock").unwrap(),
            Address::Unix("/run/xds.sock".into())
        );
        for bad in ["istiod", "unix:rel/path", ":15010", "host:port"] {
            let e = Address::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_token_is_read_each_time_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        let t = Transport {
            address: Address::Tcp("x:1".into()),
            tls_root_ca: None,
            token: Some(path.clone()),
        };
        assert_eq!(t.bearer().unwrap().unwrap(), "Bearer abc");
        std::fs::write(&path, "def").unwrap();
        assert_eq!(t.bearer().unwrap().unwrap(), "Bearer def");
        std::fs::remove_file(&path).unwrap();
        assert!(t.bearer().unwrap_err().to_string().contains("token"));
    }
}
