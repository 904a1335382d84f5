//! TLS for the listeners (DESIGN §8 `tls:`): the server's certificate chain and key, and
//! optionally a CA whose client certificates are verified (mTLS). Files are PEM, as
//! Kubernetes TLS secrets and cert-manager write them. Every error names the file.

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `tls:` section's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// The server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, client certificates are verified against these CAs.
    pub client_ca_file: Option<PathBuf>,
}

/// Whether a connection must present a client certificate (when `client_ca_file` is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// The handshake fails without a valid client certificate (the OTLP receivers).
    Required,
    /// A presented certificate is verified (an invalid one fails the handshake); a connection
    /// without one is let through and marked, so the admin API can keep `/healthz` and
    /// `/readyz` open to probes that have no certificate and refuse everything else.
    Optional,
}

/// Which protocols a listener speaks, offered by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    H2,
    /// HTTP/2 or HTTP/1.1 (the OTLP/HTTP receiver and the admin API).
    Http,
}

/// A TLS file that cannot be used, with the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{field} {path}: {reason}")]
pub struct TlsError {
    /// The config field.
    pub field: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        field,
        path: path.display().to_string(),
        reason: format!("cannot read it: {e}"),
    })
}

fn certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let err = |reason: String| TlsError {
        field,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block in it".into()));
    }
    Ok(certs)
}

/// The rustls server configuration for `files`.
pub fn server_config(
    files: &TlsFiles,
    client_certs: ClientCerts,
    alpn: Alpn,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs("tls.cert_file", &files.cert_file)?;
    let key_pem = read("tls.key_file", &files.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError {
        field: "tls.key_file",
        path: files.key_file.display().to_string(),
        // Never the key's bytes: only what kind of problem it is.
        reason: format!("no usable private key in it ({e})"),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError {
        field: "tls.cert_file",
        path: files.cert_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("tls.client_ca_file", ca)? {
                roots.add(c).map_err(|e| TlsError {
                    field: "tls.client_ca_file",
                    path: ca.display().to_string(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = match client_certs {
                ClientCerts::Required => verifier,
                ClientCerts::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsError {
                field: "tls.client_ca_file",
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError {
        field: "tls.key_file",
        path: files.key_file.display().to_string(),
        reason: format!("does not match tls.cert_file or is unusable: {e}"),
    })?;
    config.alpn_protocols = match alpn {
        Alpn::H2 => vec![b"h2".to_vec()],
        Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// A next hop's TLS (`forward[].tls`, the Collector exporter's `tls:` fields): the CAs its
/// certificate is checked against (`ca_file`; else the system's trusted roots), the client
/// certificate and key to present (mTLS), and the name to check instead of the endpoint's host
/// (`server_name_override`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopTls {
    /// PEM CA certificates (default: the system's trusted roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for a hop that requires one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its PEM private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the hop's certificate must carry (default: the endpoint's host).
    #[serde(default)]
    pub server_name_override: Option<String>,
}

/// The rustls client configuration for a next hop, offering `alpn` (`h2` for gRPC).
pub fn hop_client_config(tls: &HopTls, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let err = |field: &'static str, path: &Path, reason: String| TlsError {
        field,
        path: path.display().to_string(),
        reason,
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(f), None) => {
            let why = "cert_file and key_file go together: give key_file too".into();
            return Err(err("forward.tls.cert_file", f, why));
        }
        (None, Some(f)) => {
            let why = "cert_file and key_file go together: give cert_file too".into();
            return Err(err("forward.tls.key_file", f, why));
        }
        _ => {}
    }
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(ca) => {
            for c in certs("forward.tls.ca_file", ca)? {
                roots.add(c).map_err(|e| {
                    err(
                        "forward.tls.ca_file",
                        ca,
                        format!("not a usable CA certificate: {e}"),
                    )
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(err(
                    "forward.tls.ca_file",
                    Path::new("(system roots)"),
                    "the system has no trusted roots: give ca_file".into(),
                ));
            }
        }
    }
    let ca_path = tls
        .ca_file
        .as_deref()
        .unwrap_or(Path::new("(system roots)"));
    let identity = tls.cert_file.as_deref().zip(tls.key_file.as_deref());
    let fields = ClientFields {
        ca: "forward.tls.ca_file",
        server_name: "forward.tls.server_name_override",
        cert: "forward.tls.cert_file",
        key: "forward.tls.key_file",
    };
    let server_name = tls.server_name_override.as_deref();
    client_config(roots, ca_path, server_name, identity, &fields, alpn)
}

/// The config fields a client configuration's parts come from, for its errors.
struct ClientFields {
    ca: &'static str,
    server_name: &'static str,
    cert: &'static str,
    key: &'static str,
}

/// A rustls client configuration trusting `roots` (read from `ca_path`), checking the
/// server's certificate for `server_name` when given (else the name connected to),
/// presenting `identity` (certificate chain and key files) when given, offering `alpn`.
fn client_config(
    roots: RootCertStore,
    ca_path: &Path,
    server_name: Option<&str>,
    identity: Option<(&Path, &Path)>,
    fields: &ClientFields,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    use rustls::client::WebPkiServerVerifier;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let err = |field: &'static str, path: &Path, reason: String| TlsError {
        field,
        path: path.display().to_string(),
        reason,
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(fields.ca, ca_path, e.to_string()))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match server_name {
        None => webpki,
        Some(name) => Arc::new(NamedVerifier {
            inner: webpki,
            name: rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| {
                err(
                    fields.server_name,
                    Path::new(name),
                    format!("not a DNS name or IP address: {e}"),
                )
            })?,
        }),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(fields.ca, ca_path, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs(fields.cert, cert)?;
            let key_pem = read(fields.key, key)?;
            let k = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                err(
                    fields.key,
                    key,
                    format!("no usable private key in it ({e})"),
                )
            })?;
            builder.with_client_auth_cert(chain, k).map_err(|e| {
                err(
                    fields.key,
                    key,
                    format!("does not match {} or is unusable: {e}", fields.cert),
                )
            })?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The rustls client configuration one fleet member asks another's admin API with (DESIGN §6):
/// it trusts only the CAs in `ca` (the config field `ca_field` names it in errors); it presents
/// `files`' certificate and key when the admin API requires client certificates (when
/// `files.client_ca_file` is set), and checks the other member's certificate against
/// `server_name` when one is given instead of the host in its URL (members are reached at pod
/// IPs, which certificates rarely name: the `server_name` of Prometheus's `tls_config`).
pub fn member_client_config(
    files: Option<&TlsFiles>,
    ca: &Path,
    ca_field: &'static str,
    server_name: Option<&str>,
) -> Result<rustls::ClientConfig, TlsError> {
    let err = |field: &'static str, path: &Path, reason: String| TlsError {
        field,
        path: path.display().to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for c in certs(ca_field, ca)? {
        roots
            .add(c)
            .map_err(|e| err(ca_field, ca, format!("not a usable CA certificate: {e}")))?;
    }
    let identity = files
        .filter(|f| f.client_ca_file.is_some())
        .map(|f| (f.cert_file.as_path(), f.key_file.as_path()));
    let fields = ClientFields {
        ca: ca_field,
        server_name: "fleet.server_name",
        cert: "tls.cert_file",
        key: "tls.key_file",
    };
    client_config(roots, ca, server_name, identity, &fields, &[b"http/1.1"])
}

/// Verifies a server's certificate chain as WebPKI does, for a fixed name instead of the one
/// the connection was made to.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Missing files, a key file without a key and a certificate file without a certificate
    /// are each refused with the field and the file named (and never the file's content).
    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("trike-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "secret-material-not-pem\n").unwrap();
        let files = |cert: &Path, key: &Path| TlsFiles {
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
            client_ca_file: None,
        };
        let missing = dir.join("missing.pem");
        let e = server_config(&files(&missing, &junk), ClientCerts::Required, Alpn::H2)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("tls.cert_file ")
                && e.contains("missing.pem")
                && e.contains("cannot read"),
            "{e}"
        );
        let e = server_config(&files(&junk, &junk), ClientCerts::Required, Alpn::H2)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("tls.cert_file ") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        assert!(!e.contains("secret-material"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Connects to a next hop over TLS, for a gRPC channel (`Endpoint::connect_with_connector`):
/// TCP to the URI's host and port, then the handshake, checking the certificate against the
/// name given (the endpoint's host, or `server_name_override`).
#[derive(Clone)]
pub struct HopConnector {
    tls: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl HopConnector {
    /// A connector with `config` (its ALPN must offer `h2`), checking `name`.
    pub fn new(config: rustls::ClientConfig, name: &str) -> Result<Self, String> {
        let name = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| format!("{name:?} is not a DNS name or IP address: {e}"))?;
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

impl std::fmt::Debug for HopConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopConnector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

type HopIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for HopConnector {
    type Response = HopIo;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<HopIo>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (tls, name) = (self.tls.clone(), self.name.clone());
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}
