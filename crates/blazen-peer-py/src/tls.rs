//! Native halves of `blazen_peer.ServerTls` / `ClientTls`: PEM checked when built.

use blazen_peer_core::{tls, Pem};
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

/// `(source, bytes)` as the Python side read it.
type PemInput = (String, Vec<u8>);

fn pem((source, bytes): PemInput) -> Pem {
    Pem::new(source, bytes)
}

/// A server certificate, its key, and optionally the CA client certificates must chain to.
#[pyclass(frozen, name = "ServerTls", module = "blazen_peer._native")]
pub struct ServerTlsRef {
    pub config: tls::ServerTls,
}

#[pymethods]
impl ServerTlsRef {
    #[new]
    #[pyo3(signature = (cert, key, client_ca=None))]
    fn new(cert: PemInput, key: PemInput, client_ca: Option<PemInput>) -> PyResult<Self> {
        let client_ca = client_ca.map(pem);
        let config =
            tls::ServerTls::from_pem(&pem(cert), &pem(key), client_ca.as_ref()).py_err()?;
        Ok(Self { config })
    }

    /// True when clients must present a certificate signed by the client CA.
    #[getter]
    fn requires_client_certificates(&self) -> bool {
        self.config.requires_client_certificates()
    }
}

/// The CA a client trusts, its optional certificate and key, and an optional server name.
#[pyclass(frozen, name = "ClientTls", module = "blazen_peer._native")]
pub struct ClientTlsRef {
    pub config: tls::ClientTls,
}

#[pymethods]
impl ClientTlsRef {
    #[new]
    #[pyo3(signature = (ca, identity=None, domain=None))]
    fn new(
        ca: PemInput,
        identity: Option<(PemInput, PemInput)>,
        domain: Option<String>,
    ) -> PyResult<Self> {
        let identity = identity.map(|(cert, key)| (pem(cert), pem(key)));
        let config = tls::ClientTls::from_pem(
            &pem(ca),
            identity.as_ref().map(|(cert, key)| (cert, key)),
            domain.as_deref(),
        )
        .py_err()?;
        Ok(Self { config })
    }
}
