//! TLS for the PostgreSQL front end (issue #4), with rustls: TLS 1.2 and 1.3 only, ECDHE key
//! exchange only (forward secrecy), the ring provider.
//!
//! The certificate comes from config, or is generated on first start: a private CA and a server
//! certificate for `server.tls_names`, kept in `state_dir/tls/`. The CA's private key is
//! thrown away once the server certificate is signed, so nothing on the bastion can mint more
//! certificates under it; delete `state_dir/tls/` to issue a new pair. `portcullis tls-ca`
//! prints the CA for clients' `sslrootcert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{Config, PostgresServerTls};
use crate::keys::write_new_file;

pub const CA_FILE: &str = "tls/ca.pem";
const CERT_FILE: &str = "tls/server.pem";
const KEY_FILE: &str = "tls/server.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    Parse { path: PathBuf, what: &'static str },
    #[error("cannot generate the TLS certificate: {0}")]
    Generate(String),
    #[error("cannot write the TLS certificate: {0}")]
    Write(String),
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: the configured certificate, or the generated one (created if missing).
pub fn server_config(config: &Config) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = match &config.server.postgres_tls {
        PostgresServerTls::Files {
            cert_file,
            key_file,
        } => (cert_file.clone(), key_file.clone()),
        PostgresServerTls::Generated => {
            ensure_generated(&config.server.state_dir, &config.server.tls_names)?;
            (
                config.server.state_dir.join(CERT_FILE),
                config.server.state_dir.join(KEY_FILE),
            )
        }
    };
    let certificates = read_certificates(&cert_path)?;
    let key = read_key(&key_path)?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    Ok(Arc::new(server))
}

/// Writes a CA and a server certificate signed by it, unless they exist.
fn ensure_generated(state_dir: &Path, names: &[String]) -> Result<(), TlsError> {
    if state_dir.join(CERT_FILE).exists() && state_dir.join(KEY_FILE).exists() {
        return Ok(());
    }
    let generate = |error: rcgen::Error| TlsError::Generate(error.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(generate)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis private CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().map_err(generate)?;
    let mut server_params = rcgen::CertificateParams::new(names.to_vec()).map_err(generate)?;
    server_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(generate)?;
    let folder = state_dir.join("tls");
    std::fs::create_dir_all(&folder).map_err(|error| TlsError::Write(error.to_string()))?;
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    for (file, text) in [
        (CA_FILE, ca_cert.pem()),
        (KEY_FILE, server_key.serialize_pem()),
        (CERT_FILE, chain),
    ] {
        let path = state_dir.join(file);
        let _ = std::fs::remove_file(&path);
        write_new_file(&path, text.as_bytes())
            .map_err(|error| TlsError::Write(error.to_string()))?;
    }
    tracing::info!(names = ?names, "generated a private CA and the postgres server certificate");
    Ok(())
}

/// The CA clients should trust, as PEM: the generated one, or the configured chain's last cert.
pub fn ca_pem(config: &Config) -> Result<String, TlsError> {
    let path = match &config.server.postgres_tls {
        PostgresServerTls::Generated => {
            ensure_generated(&config.server.state_dir, &config.server.tls_names)?;
            config.server.state_dir.join(CA_FILE)
        }
        PostgresServerTls::Files { cert_file, .. } => cert_file.clone(),
    };
    std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path, source })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|_| TlsError::Parse {
            path: path.to_path_buf(),
            what: "certificate",
        })?
        .filter_map(Result::ok)
        .collect();
    if certificates.is_empty() {
        return Err(TlsError::Parse {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).map_err(|_| TlsError::Parse {
        path: path.to_path_buf(),
        what: "private key",
    })
}

/// The client side towards a target: `verify-full` checks the chain against `ca_file` and the
/// name; `require` encrypts without checking who answers (libpq's `sslmode=require`).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates(path)? {
                roots.add(certificate)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `sslmode=require`: any certificate, but the handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
