//! TLS to the PostgreSQL server, as the admin URL's `sslmode` asks, with rustls.
//!
//! The client library knows `disable`, `prefer` and `require` only, so the URL's `sslmode`
//! and `sslrootcert` are read here and taken off before it parses the rest. The modes mean
//! what they mean for libpq: `require` encrypts without checking the certificate,
//! `verify-ca` checks it against the CA bundle, `verify-full` also checks that it names the
//! host.

use super::DatabaseError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, from `disable` to `verify-full`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Also what an URL without `sslmode` gets: the connection is not encrypted.
    #[default]
    Disable,
    /// TLS when the server offers it, unchecked.
    Prefer,
    /// TLS, certificate unchecked.
    Require,
    /// TLS, certificate signed by the CA bundle.
    VerifyCa,
    /// TLS, certificate signed by the CA bundle and naming the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, DatabaseError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(DatabaseError::InvalidUrl(format!("unknown sslmode {other:?}"))),
        })
    }

    /// What the client library is told: it only needs to know whether TLS is optional.
    pub fn client_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// A URL's TLS settings, and the URL without them.
#[derive(Debug, PartialEq, Eq)]
pub struct UrlTls {
    pub url: String,
    pub mode: SslMode,
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` off a `postgres://` URL. Key-value connection strings
/// pass unchanged (their `sslmode` is what the client library reads).
pub fn split_url(url: &str) -> Result<UrlTls, DatabaseError> {
    let unchanged = || UrlTls { url: url.to_string(), mode: SslMode::Disable, root_cert: None };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(unchanged());
    }
    let Some((base, query)) = url.split_once('?') else { return Ok(unchanged()) };
    let (mut mode, mut root_cert, mut kept) = (SslMode::Disable, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = SslMode::parse(v)?,
            Some(("sslrootcert", v)) => root_cert = Some(v.to_string()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    Ok(UrlTls { url, mode, root_cert })
}

/// The TLS connector for `mode`, trusting the PEM bundle `ca_file` (the system's roots when
/// `None`); `None` when the connection is not encrypted. A CA bundle with `require` checks the
/// chain, as libpq does.
pub fn connector(mode: SslMode, ca_file: Option<&Path>) -> Result<Option<MakeRustlsConnect>, DatabaseError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, ca_file) {
        (SslMode::Disable, None) => return Ok(None),
        (SslMode::Disable, Some(_)) => {
            return Err(DatabaseError::InvalidUrl(
                "a database CA file is set but the URL asks for no TLS: add sslmode=verify-full to it".into(),
            ));
        }
        (SslMode::Prefer | SslMode::Require, None) => Arc::new(Unchecked(provider.signature_verification_algorithms)),
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, ca) => {
            Arc::new(AnyName(webpki_verifier(roots(ca)?, provider.clone())?))
        }
        (SslMode::VerifyFull, ca) => webpki_verifier(roots(ca)?, provider.clone())?,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DatabaseError::InvalidUrl(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, DatabaseError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| DatabaseError::InvalidUrl(format!("TLS: {e}")))
}

/// The certificates of a PEM bundle, or the system's roots.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, DatabaseError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                DatabaseError::InvalidUrl(format!("cannot read the database CA file {}: {e}", path.display()))
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"it holds no PEM certificate"));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(DatabaseError::InvalidUrl(
                    "sslmode verify-ca/verify-full without a CA file, and the system has no root certificates: \
                     set --database-ca-file"
                        .into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to the bundle; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without a CA bundle: encrypted, any certificate (the handshake's signatures are
/// still checked).
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_come_off_the_url() {
        let t = split_url("postgres://u:p@db:5432/postgres?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=5")
            .unwrap();
        assert_eq!(t.url, "postgres://u:p@db:5432/postgres?connect_timeout=5");
        assert_eq!((t.mode, t.root_cert.as_deref()), (SslMode::VerifyFull, Some("/ca.pem")));
        let t = split_url("postgresql://u:p@db/x?sslmode=require").unwrap();
        assert_eq!((t.url.as_str(), t.mode), ("postgresql://u:p@db/x", SslMode::Require));
        assert_eq!(split_url("postgres://u:p@db/x").unwrap().mode, SslMode::Disable);
        assert!(split_url("postgres://u:p@db/x?sslmode=verify-some").is_err());
    }

    #[test]
    fn a_ca_file_without_tls_or_one_without_certificates_is_refused() {
        let err = connector(SslMode::Disable, Some(Path::new("/nonexistent"))).err().unwrap();
        assert!(err.to_string().contains("sslmode=verify-full"), "{err}");
        let empty = std::env::temp_dir().join(format!("bizosaas-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = connector(SslMode::VerifyFull, Some(&empty)).err().unwrap();
        assert!(err.to_string().contains("holds no PEM certificate"), "{err}");
        std::fs::remove_file(&empty).unwrap();
        assert!(connector(SslMode::Disable, None).unwrap().is_none());
        assert!(connector(SslMode::Require, None).unwrap().is_some());
    }
}
