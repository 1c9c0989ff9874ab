//! TLS for every link the node has: the DICOM listener (PS3.15 BCP 195), the HTTP listener,
//! the DICOM destinations, HL7 over MLLP and HTTPS to FHIR servers, webhooks and the object store. TLS 1.2
//! and 1.3 with rustls (ring); certificates and keys from PEM files, read as every file the
//! configuration names is (a regular file, within a bound).
//!
//! On the listener the handshake happens before any DICOM byte is read, so a client without
//! the right certificate never reaches the association policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{read_named_file, Config, TEXT_FILE_LIMIT};

/// Why a TLS configuration cannot be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {source}")]
    Rejected { path: PathBuf, source: rustls::Error },
    #[error("client certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("protocol versions: {0}")]
    Protocol(#[source] rustls::Error),
}

/// `[dicom.tls]` files that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{config}: dicom.tls: {source}")]
pub struct ListenerTlsError {
    /// The configuration file.
    pub config: String,
    #[source]
    pub source: TlsSetupError,
}

/// The listener's acceptor when `[dicom.tls]` is set, its files read.
pub fn listener_acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, ListenerTlsError> {
    let Some(tls) = &config.dicom.tls else { return Ok(None) };
    let client_ca = tls.client_ca_file.as_ref().map(|f| config.resolve(f));
    server_config(&config.resolve(&tls.cert_file), &config.resolve(&tls.key_file), client_ca.as_deref())
        .map(|server| Some(tokio_rustls::TlsAcceptor::from(server)))
        .map_err(|source| ListenerTlsError { config: config.source.clone(), source })
}

/// `[http.tls]` files that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{config}: http.tls: {source}")]
pub struct HttpTlsError {
    /// The configuration file.
    pub config: String,
    #[source]
    pub source: TlsSetupError,
}

/// The HTTP listener's acceptor when `[http.tls]` is set (HTTP/1.1 offered by ALPN).
pub fn http_acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, HttpTlsError> {
    let Some(tls) = &config.http.tls else { return Ok(None) };
    let client_ca = tls.client_ca_file.as_ref().map(|f| config.resolve(f));
    server_config(&config.resolve(&tls.cert_file), &config.resolve(&tls.key_file), client_ca.as_deref())
        .map(|server| {
            let mut server = Arc::unwrap_or_clone(server);
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
        })
        .map_err(|source| HttpTlsError { config: config.source.clone(), source })
}

/// A PEM file's bytes, read as every file the configuration names is ([`read_named_file`]).
fn pem_bytes(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    read_named_file(path, TEXT_FILE_LIMIT)
        .map_err(|e| TlsSetupError::Pem { path: path.to_path_buf(), source: rustls_pki_types::pem::Error::Io(e) })
}

/// The certificates of a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = |source| TlsSetupError::Pem { path: path.to_path_buf(), source };
    let bytes = pem_bytes(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The authorities of a PEM file, as a root store.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for authority in certificates(path)? {
        roots.add(authority).map_err(|source| TlsSetupError::Rejected { path: path.to_path_buf(), source })?;
    }
    Ok(roots)
}

/// The private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(&pem_bytes(path)?)
        .map_err(|source| TlsSetupError::Pem { path: path.to_path_buf(), source })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's configuration: its certificate chain and key, and, with `client_ca`, client
/// certificates required and verified against those authorities.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Protocol)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(TlsSetupError::Verifier)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certificates(cert_file)?, private_key(key_file)?)
        .map_err(|source| TlsSetupError::Rejected { path: cert_file.to_path_buf(), source })?;
    Ok(Arc::new(config))
}

/// The TLS client of a destination (`destinations[].tls`, paths resolved against the config
/// file) and the name its certificate must carry; `None` for plain TCP.
pub fn destination_client(
    config: &Config,
    d: &crate::config::Destination,
) -> Result<Option<(Arc<rustls::ClientConfig>, String)>, TlsSetupError> {
    peer_client(config, d.tls.as_ref(), &d.host)
}

/// The TLS client towards a DICOM peer (a destination, a source) with these settings.
pub fn peer_client(
    config: &Config,
    tls: Option<&crate::config::DestinationTls>,
    host: &str,
) -> Result<Option<(Arc<rustls::ClientConfig>, String)>, TlsSetupError> {
    let Some(tls) = tls else { return Ok(None) };
    let identity = tls.cert_file.as_ref().zip(tls.key_file.as_ref());
    let identity = identity.map(|(c, k)| (config.resolve(c), config.resolve(k)));
    let client =
        client_config(&config.resolve(&tls.ca_file), identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))?;
    Ok(Some((client, tls.server_name.clone().unwrap_or_else(|| host.to_string()))))
}

/// A TLS client configuration that trusts the authorities in `ca_file` and, given `identity`
/// (certificate chain and key files), presents it to servers that ask.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Protocol)?
        .with_root_certificates(roots(ca_file)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => builder
            .with_client_auth_cert(certificates(cert_file)?, private_key(key_file)?)
            .map_err(|source| TlsSetupError::Rejected { path: cert_file.to_path_buf(), source })?,
    };
    Ok(Arc::new(config))
}
