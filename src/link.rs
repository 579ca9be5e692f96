//! Opening the device's MQTT link: DNS (with `--resolve` overrides), TCP, and TLS with
//! the parameters the core chose (SNI, ALPN, trust anchors), mapped back to the
//! firmware's failure codes.
//!
//! By default the TLS client offers what the firmware's BearSSL client offers: TLS 1.2
//! and the single suite ECDHE-RSA-AES128-GCM-SHA256, so a broker the real device cannot
//! talk to fails here too. `--tls-compat modern` widens it to rustls's defaults.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tasmota_core::mqtt::tls::{error as tls_error, TlsRequest, Validation};
use tasmota_core::{ConnectRequest, LinkFailure};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The bytes of an open link, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
pub type BoxStream = Pin<Box<dyn Stream>>;

/// Which TLS the device offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsCompat {
    /// What the firmware offers: TLS 1.2, ECDHE-RSA-AES128-GCM-SHA256 only.
    #[default]
    Firmware,
    /// rustls's defaults: TLS 1.2 and 1.3, every suite it supports.
    Modern,
}

/// A `--resolve HOST:PORT:ADDR` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolve {
    pub host: String,
    pub port: u16,
    pub addr: IpAddr,
}

impl std::str::FromStr for Resolve {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}': expected HOST:PORT:ADDR, like a1-ats.iot.eu-west-1.amazonaws.com:443:127.0.0.1");
        let (host, rest) = s.split_once(':').ok_or_else(bad)?;
        let (port, addr) = rest.split_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| format!("'{s}': '{port}' is not a port number"))?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr = addr.parse().map_err(|_| format!("'{s}': '{addr}' is not an IP address"))?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Resolve { host: host.to_ascii_lowercase(), port, addr })
    }
}

/// A `--connect-to HOST:PORT:CONNECT_HOST:CONNECT_PORT` entry (curl's meaning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectTo {
    pub host: String,
    pub port: u16,
    pub to_host: String,
    pub to_port: u16,
}

impl std::str::FromStr for ConnectTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("'{s}': expected HOST:PORT:CONNECT_HOST:CONNECT_PORT, like a1-ats.iot.eu-west-1.amazonaws.com:443:127.0.0.1:8443")
        };
        let mut parts = s.splitn(3, ':');
        let host = parts.next().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let port = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let rest = parts.next().ok_or_else(bad)?;
        let (to_host, to_port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let to_port = to_port.parse().map_err(|_| bad())?;
        let to_host = to_host.trim_start_matches('[').trim_end_matches(']');
        if to_host.is_empty() {
            return Err(bad());
        }
        Ok(ConnectTo { host: host.to_ascii_lowercase(), port, to_host: to_host.into(), to_port })
    }
}

/// Where trust comes from.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The firmware's trust anchors (Amazon Root CA 1, ISRG Root X1), or `--ca-file`.
    Roots(Arc<RootCertStore>),
    /// `--insecure`: any certificate is accepted.
    Insecure,
}

/// Everything the driver needs to open links.
#[derive(Clone, Debug)]
pub struct Connector {
    pub resolve: HashMap<(String, u16), IpAddr>,
    pub connect_to: HashMap<(String, u16), (String, u16)>,
    pub trust: Trust,
    pub compat: TlsCompat,
}

/// The trust anchors Tasmota embeds (`tasmota_ca.ino`), taken from webpki-roots.
pub fn firmware_roots() -> RootCertStore {
    const NAMES: [&[u8]; 2] = [b"Amazon Root CA 1", b"ISRG Root X1"];
    let mut store = RootCertStore::empty();
    store.extend(
        webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .filter(|ta| NAMES.iter().any(|n| contains(ta.subject.as_ref(), n)))
            .cloned(),
    );
    store
}

/// Whether `needle` occurs in `hay` as a whole name: "Amazon Root CA 1" must not match
/// "Amazon Root CA 10" and the like.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .enumerate()
        .any(|(at, w)| w == needle && hay.get(at + needle.len()).is_none_or(|b| !b.is_ascii_alphanumeric()))
}

/// Reads every certificate in a PEM file.
pub fn load_ca_file(path: &Path) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("--ca-file {shown}: {e}"))?;
    let mut store = RootCertStore::empty();
    for cert in iter {
        let cert = cert.map_err(|e| format!("--ca-file {shown}: not a PEM certificate: {e}"))?;
        store.add(cert).map_err(|e| format!("--ca-file {shown}: unusable certificate: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("--ca-file {shown}: no CERTIFICATE block found"));
    }
    Ok(store)
}

impl Connector {
    /// A harness client's link (an operator's): plain or TLS with SNI and the
    /// certificate check on `host`, no ALPN, 10 s to open. The error says why, in words
    /// (the OS's reason for a refused connect, the TLS library's for a handshake), for
    /// a person to read: the device's `LinkFailure` keeps only the firmware's numbers.
    pub async fn open_client(&self, host: &str, port: u16, tls: bool) -> Result<BoxStream, String> {
        const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
        let addrs = self.lookup(host, port).await.map_err(|_| format!("{host} does not resolve"))?;
        let started = Instant::now();
        let tcp = match tokio::time::timeout(OPEN_TIMEOUT, connect_any(&addrs)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("TCP connect failed: {e}")),
            Err(_) => return Err(format!("TCP connect timed out after {} ms", OPEN_TIMEOUT.as_millis())),
        };
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Box::pin(tcp));
        }
        let req = TlsRequest { server_name: host.to_string(), alpn: None, validation: Validation::TrustAnchors };
        let remaining = OPEN_TIMEOUT.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, self.handshake_reasoned(&req, tcp)).await {
            Ok(r) => r.map_err(|(_, why)| format!("TLS handshake failed: {why}")),
            Err(_) => Err(format!("TLS handshake timed out after {} ms", OPEN_TIMEOUT.as_millis())),
        }
    }

    /// Opens the link the core asked for.
    pub async fn open(&self, req: &ConnectRequest) -> Result<BoxStream, LinkFailure> {
        let addrs = self.lookup(&req.host, req.port).await?;
        let timeout = Duration::from_millis(u64::from(req.timeout_ms));
        let started = Instant::now();
        let tcp = tokio::time::timeout(timeout, connect_any(&addrs)).await;
        let tcp = match tcp {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(host = %req.host, port = req.port, error = %e, "TCP connect failed");
                return Err(LinkFailure::Tcp);
            }
            Err(_) => {
                tracing::debug!(host = %req.host, port = req.port, ?timeout, "TCP connect timed out");
                return Err(LinkFailure::Tcp);
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &req.tls else { return Ok(Box::pin(tcp)) };
        let remaining = timeout.saturating_sub(started.elapsed());
        let stream = tokio::time::timeout(remaining, self.handshake(tls, tcp)).await;
        match stream {
            Ok(r) => r,
            Err(_) => Err(LinkFailure::Tls(tls_error::HANDSHAKE_TIMEOUT)),
        }
    }

    async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, LinkFailure> {
        let key = (host.to_ascii_lowercase(), port);
        let (host, port) = match self.connect_to.get(&key) {
            Some((h, p)) => (h.as_str(), *p),
            None => (host, port),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(ip) = self.resolve.get(&(host.to_ascii_lowercase(), port)) {
            return Ok(vec![SocketAddr::new(*ip, port)]);
        }
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.collect();
                if addrs.is_empty() {
                    Err(LinkFailure::Dns)
                } else {
                    Ok(addrs)
                }
            }
            Err(e) => {
                tracing::debug!(host, error = %e, "DNS lookup failed");
                Err(LinkFailure::Dns)
            }
        }
    }

    /// The TLS handshake the core asked for, over any byte stream (a TCP socket, or an
    /// in-memory link to an embedded broker on the virtual clock).
    pub async fn handshake<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
        &self,
        req: &TlsRequest,
        tcp: IO,
    ) -> Result<BoxStream, LinkFailure> {
        self.handshake_reasoned(req, tcp).await.map_err(|(f, _)| f)
    }

    /// `handshake`, with the reason of a failure in words next to the firmware's number.
    async fn handshake_reasoned<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
        &self,
        req: &TlsRequest,
        tcp: IO,
    ) -> Result<BoxStream, (LinkFailure, String)> {
        if let Validation::Fingerprints(_) = req.validation {
            tracing::warn!(
                "SetOption132 (fingerprint validation) is not simulated: the server is checked against the trust anchors"
            );
        }
        let config = self.client_config(req);
        let name = ServerName::try_from(req.server_name.clone()).map_err(|_| {
            tracing::warn!(name = %req.server_name, "MqttHost is not a valid TLS server name");
            (
                LinkFailure::Tls(tls_error::X509_BAD_SERVER_NAME),
                format!("{} is not a valid TLS server name", req.server_name),
            )
        })?;
        if let Trust::Insecure = self.trust {
            tracing::warn!(server = %req.server_name, "--insecure: the broker's certificate is NOT verified");
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        match connector.connect(name, tcp).await {
            Ok(s) => {
                let (_, conn) = s.get_ref();
                tracing::debug!(
                    version = ?conn.protocol_version(),
                    suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
                    alpn = ?conn.alpn_protocol().map(String::from_utf8_lossy),
                    "TLS connected"
                );
                Ok(Box::pin(s))
            }
            Err(e) => {
                let code = tls_error_code(&e);
                tracing::debug!(error = %e, code, "TLS handshake failed");
                Err((LinkFailure::Tls(code), e.to_string()))
            }
        }
    }

    fn client_config(&self, req: &TlsRequest) -> ClientConfig {
        let provider = match self.compat {
            TlsCompat::Firmware => rustls::crypto::CryptoProvider {
                cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
                ..rustls::crypto::ring::default_provider()
            },
            TlsCompat::Modern => rustls::crypto::ring::default_provider(),
        };
        let versions: &[&rustls::SupportedProtocolVersion] = match self.compat {
            TlsCompat::Firmware => &[&rustls::version::TLS12],
            TlsCompat::Modern => rustls::DEFAULT_VERSIONS,
        };
        let provider = Arc::new(provider);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let mut config = match &self.trust {
            Trust::Roots(roots) => builder.with_root_certificates(roots.clone()).with_no_client_auth(),
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = req.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

async fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The firmware's number for a failed handshake (spec §7).
fn tls_error_code(e: &io::Error) -> i32 {
    let Some(err) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return tls_error::IO;
    };
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired
            | CertificateError::NotValidYet
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYetContext { .. } => tls_error::X509_EXPIRED,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                tls_error::X509_BAD_SERVER_NAME
            }
            _ => tls_error::X509_NOT_TRUSTED,
        },
        rustls::Error::AlertReceived(alert) => tls_error::alert_received(u8::from(*alert)),
        rustls::Error::PeerIncompatible(_) => tls_error::BAD_CIPHER_SUITE,
        rustls::Error::NoApplicationProtocol => tls_error::alert_sent(120),
        _ => tls_error::IO,
    }
}

/// `--insecure`.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_roots_are_amazon_and_isrg() {
        assert_eq!(firmware_roots().len(), 2);
    }

    #[test]
    fn resolve_parses_like_curl() {
        let r: Resolve = "A1-ats.iot.eu-west-1.amazonaws.com:443:127.0.0.1".parse().unwrap();
        assert_eq!(r.host, "a1-ats.iot.eu-west-1.amazonaws.com");
        assert_eq!(r.port, 443);
        assert_eq!(r.addr, IpAddr::from([127, 0, 0, 1]));
        let r: Resolve = "h:8883:[::1]".parse().unwrap();
        assert_eq!(r.addr, "::1".parse::<IpAddr>().unwrap());
        assert!("h:443".parse::<Resolve>().unwrap_err().contains("HOST:PORT:ADDR"));
        assert!("h:x:1.2.3.4".parse::<Resolve>().unwrap_err().contains("not a port"));
        assert!("h:1:nope".parse::<Resolve>().unwrap_err().contains("not an IP"));
    }
}
