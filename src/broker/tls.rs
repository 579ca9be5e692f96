//! The broker's TLS: certificates (made once with rcgen and reused, or the user's own),
//! and the server side of the handshake, which reads the ClientHello first to route on
//! ALPN as AWS IoT does: `mqtt` → custom auth, `x-amzn-mqtt-ca` → client certificate,
//! anything else → the handshake completes and CONNECT is never answered. The WSS
//! listener (`--wss-listen`) is HTTPS: ALPN `http/1.1` or none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::connection::TlsInfo;

/// What can go wrong setting up TLS; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error("making the self-signed certificates: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The server's certificate chain and key, and the CA client certificates must chain to.
pub struct Material {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub client_ca: Option<RootCertStore>,
}

const CA_NAME: &str = "tasmota-sim broker CA";

/// `--tls-self-signed DIR`: a CA and a server certificate for `names` (RSA 2048, which
/// the firmware's only suite, ECDHE-RSA-AES128-GCM-SHA256, needs), plus a client
/// certificate for mTLS tests. Written as `ca.pem`, `ca-key.pem`, `server.pem`,
/// `server-key.pem`, `client.pem`, `client-key.pem`; reused on the next run (the server
/// certificate is made anew when `names` change).
pub fn self_signed(dir: &Path, names: &[String]) -> Result<Material, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })?;
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let ca_key_path = dir.join("ca-key.pem");
    let ca_path = dir.join("ca.pem");
    let ca_key = match read_opt(&ca_key_path)? {
        Some(pem) if ca_path.exists() => rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| TlsError::Bad { path: ca_key_path.clone(), what: e.to_string() })?,
        _ => {
            let key = rsa_key_pair()?;
            let cert = ca_params().self_signed(&key).map_err(gen)?;
            write_atomic(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_atomic(&ca_path, cert.pem().as_bytes())?;
            // A new CA invalidates the old server certificate.
            let _ = std::fs::remove_file(dir.join("names.txt"));
            key
        }
    };
    let issuer = rcgen::Issuer::new(ca_params(), &ca_key);
    let names_path = dir.join("names.txt");
    let wanted = names.join("\n");
    let (srv_pem, srv_key_pem) = match (read_opt(&names_path)?, read_opt(&dir.join("server.pem"))?) {
        (Some(n), Some(cert)) if n == wanted => {
            let key = read_opt(&dir.join("server-key.pem"))?.unwrap_or_default();
            (cert, key)
        }
        _ => {
            let key = rsa_key_pair()?;
            let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen)?;
            params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
            let cert = params.signed_by(&key, &issuer).map_err(gen)?;
            let client_key = rcgen::KeyPair::generate().map_err(gen)?;
            let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
            client.distinguished_name.push(rcgen::DnType::CommonName, "tasmota-sim device");
            let client = client.signed_by(&client_key, &issuer).map_err(gen)?;
            write_atomic(&dir.join("server.pem"), cert.pem().as_bytes())?;
            write_atomic(&dir.join("server-key.pem"), key.serialize_pem().as_bytes())?;
            write_atomic(&dir.join("client.pem"), client.pem().as_bytes())?;
            write_atomic(&dir.join("client-key.pem"), client_key.serialize_pem().as_bytes())?;
            write_atomic(&names_path, wanted.as_bytes())?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let mut material = from_pem(&dir.join("server.pem"), &srv_pem, &dir.join("server-key.pem"), &srv_key_pem)?;
    material.client_ca = Some(client_ca(&ca_path)?);
    Ok(material)
}

/// `--cert PEM --key PEM`.
pub fn from_files(cert: &Path, key: &Path) -> Result<Material, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    from_pem(cert, &cert_pem, key, &key_pem)
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, CA_NAME);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    p
}

fn rsa_key_pair() -> Result<rcgen::KeyPair, TlsError> {
    use rsa::pkcs8::EncodePrivateKey;
    let key =
        rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| TlsError::Generate(e.to_string()))?;
    let der = key.to_pkcs8_der().map_err(|e| TlsError::Generate(e.to_string()))?;
    rcgen::KeyPair::try_from(der.as_bytes()).map_err(|e| TlsError::Generate(e.to_string()))
}

fn from_pem(cert_path: &Path, cert_pem: &str, key_path: &Path, key_pem: &str) -> Result<Material, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Bad { path: cert_path.to_path_buf(), what: format!("not a PEM certificate: {e}") })?;
    if chain.is_empty() {
        return Err(TlsError::Bad { path: cert_path.to_path_buf(), what: "no CERTIFICATE in the file".into() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Bad { path: key_path.to_path_buf(), what: format!("no usable private key: {e}") })?;
    Ok(Material { chain, key, client_ca: None })
}

/// Client certificates must chain to one of these (`--client-ca PEM`).
pub fn client_ca(path: &Path) -> Result<RootCertStore, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = read(path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Bad { path: path.to_path_buf(), what: e.to_string() })?;
        roots.add(cert).map_err(|e| TlsError::Bad { path: path.to_path_buf(), what: e.to_string() })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Bad { path: path.to_path_buf(), what: "no CERTIFICATE in the file".into() });
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

fn read_opt(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io { path: path.to_path_buf(), source }),
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves half a key.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    std::fs::write(&tmp, data).map_err(io)?;
    #[cfg(unix)]
    if path.to_string_lossy().ends_with("key.pem") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// The server configurations, one per route, built once.
pub struct Acceptors {
    /// No ALPN asked of the client (plain profile, and AWS's "anything else" route).
    any: Arc<ServerConfig>,
    /// ALPN `mqtt` (AWS custom auth).
    mqtt: Arc<ServerConfig>,
    /// ALPN `x-amzn-mqtt-ca`, client certificate optional (checked by the route).
    amzn_ca: Arc<ServerConfig>,
    /// The mTLS port: a client certificate is required.
    mtls: Option<Arc<ServerConfig>>,
    /// MQTT over WSS: HTTPS, ALPN `http/1.1` if the client offers ALPN at all.
    https: Arc<ServerConfig>,
}

impl Acceptors {
    pub fn new(material: &Material) -> Result<Acceptors, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let build = |alpn: &[&[u8]], client: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?;
            let builder = match client {
                Some(v) => builder.with_client_cert_verifier(v),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_single_cert(material.chain.clone(), material.key.clone_key())?;
            config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            // AWS IoT supports no session resumption by ticket.
            config.send_tls13_tickets = 0;
            config.session_storage = Arc::new(NoServerSessionStorage {});
            Ok::<_, TlsError>(Arc::new(config))
        };
        let verifier =
            |optional: bool| -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsError> {
                let Some(roots) = &material.client_ca else { return Ok(None) };
                let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone());
                let b = if optional { b.allow_unauthenticated() } else { b };
                b.build().map(Some).map_err(|e| TlsError::Generate(format!("client certificate verifier: {e}")))
            };
        Ok(Acceptors {
            any: build(&[], None)?,
            mqtt: build(&[b"mqtt"], None)?,
            amzn_ca: build(&[b"x-amzn-mqtt-ca"], verifier(true)?)?,
            mtls: match verifier(false)? {
                Some(v) => Some(build(&[], Some(v))?),
                None => None,
            },
            https: build(&[b"http/1.1"], None)?,
        })
    }

    pub fn has_mtls(&self) -> bool {
        self.mtls.is_some()
    }

    /// Runs the server handshake. `route_alpn`: pick the configuration from the client's
    /// ALPN (aws-iot); otherwise ALPN is ignored. `mtls`: the mTLS port. `alert`: a fault
    /// that answers the ClientHello with this fatal alert instead.
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tcp: IO,
        route_alpn: bool,
        mtls: bool,
        alert: Option<u8>,
    ) -> Result<(TlsStream<IO>, TlsInfo), String> {
        self.handshake(tcp, alert, mtls, |offered| {
            let has = |p: &[u8]| offered.iter().any(|o| o == p);
            if mtls {
                self.mtls.clone().ok_or_else(|| "no client CA for the mTLS port".to_string())
            } else if !route_alpn {
                Ok(self.any.clone())
            } else if has(b"mqtt") {
                Ok(self.mqtt.clone())
            } else if has(b"x-amzn-mqtt-ca") {
                Ok(self.amzn_ca.clone())
            } else {
                Ok(self.any.clone())
            }
        })
        .await
    }

    /// The WSS listener's handshake (HTTPS). A client that offers ALPN without
    /// `http/1.1` (only `mqtt`, say) gets the fatal alert no_application_protocol (RFC 7301
    /// section 3.2). AWS IoT's 443 would route such a link to MQTT and never upgrade it
    /// (aws-iot-device-sdk-java-v2 PR #329: ALPN `mqtt` broke custom auth over WebSockets).
    pub async fn accept_https<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tcp: IO,
        alert: Option<u8>,
    ) -> Result<(TlsStream<IO>, TlsInfo), String> {
        self.handshake(tcp, alert, false, |_| Ok(self.https.clone())).await
    }

    async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tcp: IO,
        alert: Option<u8>,
        mtls: bool,
        pick: impl FnOnce(&[Vec<u8>]) -> Result<Arc<ServerConfig>, String>,
    ) -> Result<(TlsStream<IO>, TlsInfo), String> {
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await.map_err(|e| format!("ClientHello: {e}"))?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_string);
        let offered: Vec<Vec<u8>> = hello.alpn().map(|a| a.map(<[u8]>::to_vec).collect()).unwrap_or_default();
        if let Some(desc) = alert {
            let mut tcp = start.io;
            // A TLS 1.2 alert record: fatal (2), the description.
            let _ = tcp.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, desc]).await;
            let _ = tcp.shutdown().await;
            return Err(format!("fault: TLS alert {desc} sent"));
        }
        let config = pick(&offered)?;
        let stream = start.into_stream(config).await.map_err(|e| format!("TLS handshake: {e}"))?;
        let conn = stream.get_ref().1;
        let info = TlsInfo {
            sni,
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            mtls_listener: mtls,
        };
        Ok((stream, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_material_is_reused_and_remade_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        self_signed(dir.path(), &names).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let (ca, server, client) = (read("ca.pem"), read("server.pem"), read("client.pem"));
        self_signed(dir.path(), &names).unwrap();
        assert_eq!((read("ca.pem"), read("server.pem"), read("client.pem")), (ca.clone(), server.clone(), client));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("server-key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // New names: a new server certificate from the same CA.
        let m = self_signed(dir.path(), &["mqtt.test".to_string()]).unwrap();
        assert_eq!(read("ca.pem"), ca);
        assert_ne!(read("server.pem"), server);
        assert!(Acceptors::new(&m).unwrap().has_mtls());
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not pem").unwrap();
        let e = from_files(&cert, &dir.path().join("missing.pem")).err().unwrap().to_string();
        assert!(e.contains("missing.pem") && e.contains("No such file"), "{e}");
        std::fs::write(dir.path().join("k.pem"), "not pem").unwrap();
        let e = from_files(&cert, &dir.path().join("k.pem")).err().unwrap().to_string();
        assert!(e.contains("c.pem") && e.contains("no CERTIFICATE"), "{e}");
        let e = client_ca(&dir.path().join("nope.pem")).err().unwrap().to_string();
        assert!(e.contains("nope.pem"), "{e}");
    }
}
