//! Where workers listen, and channels to them.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

use crate::error::Error;

/// A worker's address, as announced on its readiness line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:PATH`
    Unix(PathBuf),
    /// `tcp://HOST:PORT`
    Tcp(String),
}

impl Address {
    pub fn parse(address: &str) -> Result<Self, Error> {
        if let Some(path) = address.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "no socket path in {address:?}"
                )));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(host_port) = address.strip_prefix("tcp://") {
            if host_port.is_empty() {
                return Err(Error::InvalidArgument(format!("no host in {address:?}")));
            }
            Ok(Self::Tcp(host_port.to_owned()))
        } else {
            Err(Error::InvalidArgument(format!(
                "unsupported worker address {address:?}: expected unix:PATH or tcp://HOST:PORT"
            )))
        }
    }
}

/// TLS for a TCP worker: the CA that signed its certificate, and the name
/// to verify it for (by default the address's host).
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca_pem: Vec<u8>,
    pub server_name: Option<String>,
}

/// A channel that connects on first use (and reconnects after a broken
/// connection on the next call), so creating it never waits.
///
/// Must be called within a tokio runtime: the channel spawns its worker
/// task there.
pub fn connect_lazy(address: &Address, tls: Option<&Tls>) -> Result<Channel, Error> {
    Ok(match address {
        Address::Unix(path) => {
            let path = path.clone();
            endpoint("http://worker.synapse.invalid")?.connect_with_connector_lazy(
                tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }),
            )
        }
        Address::Tcp(host_port) => match tls {
            None => endpoint(&format!("http://{host_port}"))?
                .tcp_nodelay(true)
                .connect_lazy(),
            Some(tls) => {
                let mut config =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
                if let Some(name) = &tls.server_name {
                    config = config.domain_name(name.clone());
                }
                endpoint(&format!("https://{host_port}"))?
                    .tcp_nodelay(true)
                    .tls_config(config)
                    .map_err(|e| {
                        Error::InvalidArgument(format!("bad TLS settings: {}", with_causes(&e)))
                    })?
                    .connect_lazy()
            }
        },
    })
}

/// `error` and what caused it: tonic's own message for a bad TLS setting is
/// only "transport error", its cause (a CA that does not parse, a name that
/// is not one) comes after it.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn endpoint(uri: &str) -> Result<Endpoint, Error> {
    Endpoint::from_shared(uri.to_owned())
        .map(|e| {
            // Many concurrent calls share the channel: a deep request buffer,
            // and windows large enough that big payloads are not throttled.
            e.buffer_size(16 * 1024)
                .initial_stream_window_size(4 * 1024 * 1024)
                .initial_connection_window_size(16 * 1024 * 1024)
        })
        .map_err(|e| Error::InvalidArgument(format!("bad worker address {uri:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("unix:/tmp/x/worker.sock"),
            Ok(Address::Unix("/tmp/x/worker.sock".into()))
        );
        assert_eq!(
            Address::parse("unix:///tmp/x.sock"),
            Ok(Address::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            Address::parse("tcp://127.0.0.1:4000"),
            Ok(Address::Tcp("127.0.0.1:4000".into()))
        );
        assert!(Address::parse("unix:").is_err());
        assert!(Address::parse("tcp://").is_err());
        assert!(Address::parse("http://x").is_err());
    }
}
