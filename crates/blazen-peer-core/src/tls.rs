//! TLS settings, checked when they are built rather than at the first handshake.
//!
//! tonic's own configs accept any bytes and fail later with a generic
//! "transport error", so every PEM input is parsed here first, with the
//! source's name (usually a file path) in each error, and a server key is
//! checked against its certificate. The server's rustls config is built here
//! too: the server does its own handshakes (bounded in time, see
//! `server::incoming`), so it needs rustls itself rather than tonic's config.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use crate::error::PeerError;

/// PEM bytes and where they came from, for error messages.
#[derive(Clone)]
pub struct Pem {
    /// Where the bytes came from (a path, or "<bytes>").
    pub source: String,
    /// The PEM text.
    pub bytes: Vec<u8>,
}

impl Pem {
    /// PEM bytes from `source`.
    pub fn new(source: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            source: source.into(),
            bytes: bytes.into(),
        }
    }

    fn certificates(&self, role: &str) -> Result<Vec<CertificateDer<'static>>, PeerError> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| self.error(role, &format!("is not valid PEM ({err})")))?;
        if certs.is_empty() {
            return Err(self.error(
                role,
                "holds no certificate (expected a -----BEGIN CERTIFICATE----- block)",
            ));
        }
        for cert in &certs {
            x509_parser::parse_x509_certificate(cert).map_err(|err| {
                self.error(
                    role,
                    &format!("holds a certificate that does not parse ({err})"),
                )
            })?;
        }
        Ok(certs)
    }

    fn private_key(&self, role: &str) -> Result<PrivateKeyDer<'static>, PeerError> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|err| match err {
            rustls::pki_types::pem::Error::NoItemsFound => self.error(
                role,
                "holds no private key (expected a -----BEGIN PRIVATE KEY----- block, \
                 or an RSA / EC one)",
            ),
            other => self.error(role, &format!("is not a valid PEM private key ({other})")),
        })
    }

    fn error(&self, role: &str, problem: &str) -> PeerError {
        PeerError::Tls(format!("{role} {} {problem}", self.source))
    }
}

/// A parsed certificate chain and the private key of its first certificate.
type KeyPair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Parses a certificate chain and its private key, checking that they belong together.
fn checked_key_pair(cert: &Pem, key: &Pem) -> Result<KeyPair, PeerError> {
    let certs = cert.certificates("certificate")?;
    let private_key = key.private_key("key")?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)
        .map_err(|err| key.error("key", &format!("is not a usable private key ({err})")))?;
    rustls::sign::CertifiedKey::new(certs.clone(), signing_key)
        .keys_match()
        .map_err(|err| {
            PeerError::Tls(format!(
                "key {} does not belong to certificate {} ({err}); pass the key that was \
                 generated with that certificate",
                key.source, cert.source
            ))
        })?;
    Ok((certs, private_key))
}

/// A server's certificate and, for mutual TLS, the CA that client certificates must chain to.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    requires_client_certificates: bool,
}

impl ServerTls {
    /// Parses and checks the PEM inputs; with `client_ca`, clients must present
    /// a certificate signed by it.
    pub fn from_pem(cert: &Pem, key: &Pem, client_ca: Option<&Pem>) -> Result<Self, PeerError> {
        let (certs, private_key) = checked_key_pair(cert, key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| PeerError::Tls(format!("TLS is unavailable: {err}")))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in ca.certificates("client CA")? {
                    roots.add(cert).map_err(|err| {
                        ca.error(
                            "client CA",
                            &format!("is not a usable CA certificate ({err})"),
                        )
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|err| {
                        ca.error("client CA", &format!("cannot verify clients ({err})"))
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, private_key)
            .map_err(|err| {
                key.error(
                    "key",
                    &format!("is not usable with {} ({err})", cert.source),
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            requires_client_certificates: client_ca.is_some(),
        })
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.requires_client_certificates
    }

    /// The rustls config the server's handshakes use.
    pub(crate) fn rustls(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

/// The CA a client trusts, and optionally its own certificate for mutual TLS.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    domain: Option<String>,
}

impl ClientTls {
    /// Parses and checks the PEM inputs. `domain` overrides the name the
    /// server's certificate must carry (default: the address's host).
    pub fn from_pem(
        ca: &Pem,
        identity: Option<(&Pem, &Pem)>,
        domain: Option<&str>,
    ) -> Result<Self, PeerError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca.certificates("CA")? {
            roots.add(cert).map_err(|err| {
                ca.error("CA", &format!("is not a usable CA certificate ({err})"))
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| PeerError::Tls(format!("TLS is unavailable: {err}")))?
        .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let (certs, private_key) = checked_key_pair(cert, key)?;
                builder
                    .with_client_auth_cert(certs, private_key)
                    .map_err(|err| {
                        key.error(
                            "key",
                            &format!("is not usable with {} ({err})", cert.source),
                        )
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        if let Some(domain) = domain {
            ServerName::try_from(domain.to_owned()).map_err(|_| {
                PeerError::Tls(format!(
                    "domain `{domain}` is not a valid DNS name or IP address"
                ))
            })?;
        }
        Ok(Self {
            config: Arc::new(config),
            domain: domain.map(str::to_owned),
        })
    }

    /// The rustls config and the name the server's certificate must carry
    /// (`host` unless a domain was given).
    pub(crate) fn for_host(
        &self,
        host: &str,
    ) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), PeerError> {
        let name = self.domain.as_deref().unwrap_or(host);
        // An IPv6 host comes in brackets in a URI.
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            PeerError::Tls(format!(
                "`{name}` is not a valid DNS name or IP address to check the peer's certificate \
                 against; pass ClientTls(domain=...)"
            ))
        })?;
        Ok((self.config.clone(), server_name))
    }
}

/// Who called, as their TLS client certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's subject, e.g. `CN=node-a,O=example`.
    pub subject: String,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    /// URIs among the subject alternative names (SPIFFE ids live here).
    pub uris: Vec<String>,
    /// The certificate itself (DER), for anything the fields above leave out.
    pub certificate_der: Vec<u8>,
}

impl PeerIdentity {
    /// Reads the leaf of a chain the TLS layer already verified.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<Arc<Self>> {
        let leaf = chain.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut dns_names = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        dns_names.push((*dns).to_owned())
                    }
                    x509_parser::extensions::GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    _ => {}
                }
            }
        }
        Some(Arc::new(Self {
            subject: subject.to_string(),
            common_name,
            dns_names,
            uris,
            certificate_der: leaf.to_vec(),
        }))
    }
}

/// The TLS failure inside a transport error, described for people, if there is one.
pub fn handshake_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(cause) = current {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(describe(tls));
            }
        }
        current = cause.source();
    }
    None
}

fn describe(err: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let hint = match err {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by the CA this client trusts (ClientTls ca=)"
        }
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the host in the address; connect by a \
             name the certificate carries, or pass ClientTls(domain=...)"
        }
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired"
        }
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate; pass ClientTls(cert=..., key=...)"
        }
        Error::AlertReceived(AlertDescription::UnknownCA)
        | Error::AlertReceived(AlertDescription::BadCertificate)
        | Error::AlertReceived(AlertDescription::DecryptError) => {
            "the server refused this client's certificate: it is not signed by the CA the \
             server trusts for clients"
        }
        _ => "",
    };
    if hint.is_empty() {
        format!("TLS handshake failed: {err}")
    } else {
        format!("TLS handshake failed: {err}: {hint}")
    }
}
