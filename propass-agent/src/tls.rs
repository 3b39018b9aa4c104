//! TLS for the agent's links to the server (HTTPS and WSS): rustls with the
//! ring provider, trusting the system's certificate store plus, for a
//! private PKI, the CA file of `server_ca_file`. Verification is never
//! turned off; plain `http://` is a separate, explicit choice
//! (`allow_insecure_http`).

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Installs the process's one crypto provider (ring). Every program that
/// builds an HTTP client calls it first: reqwest refuses to guess.
pub fn install_crypto_provider() {
    // A second install (tests, a library user) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client configuration every server link uses.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read server_ca_file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                format!(
                    "server_ca_file {} is not PEM certificates: {e}",
                    path.display()
                )
            })?;
        if certs.is_empty() {
            return Err(format!(
                "server_ca_file {} holds no certificate",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("server_ca_file {}: {e}", path.display()))?;
        }
    } else if added == 0 {
        tracing::warn!("no system CA certificates found (install ca-certificates): https:// servers cannot be verified");
    }
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}
