//! Every connection to PostgreSQL — the pool's, the change listener's, the
//! migrations' and the operator commands' — is made here, so that the
//! database URL's TLS settings hold for all of them.
//!
//! The URL takes libpq's `sslmode` and `sslrootcert` parameters:
//! - absent or `disable`: plain TCP (a database on this machine or a private link);
//! - `prefer`: TLS when the server offers it, else plain;
//! - `require`, `verify-full`: TLS or no connection, the certificate checked
//!   against the system's trust store (plus `sslrootcert`) and the host name;
//! - `verify-ca`: like `verify-full` without the host-name check.
//!
//! Unlike libpq, `require` and `prefer` verify the certificate too: a
//! connection that anyone in the middle can read is not worth encrypting.
//! The TLS stack is rustls (ring); no libpq is needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use diesel::ConnectionResult;
use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;

/// How a URL asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A database URL, parsed once: the connection settings and the TLS setup.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("hosts", &self.config.get_hosts())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl PgTarget {
    /// Parses `url` (a `postgres://` URL) and prepares its TLS settings,
    /// reading `sslrootcert`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, mode, root_cert) = split_tls_params(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("invalid database URL: {e}"))?;
        let tls = match mode {
            Mode::Disable => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            mode => {
                config.ssl_mode(if mode == Mode::Prefer {
                    SslMode::Prefer
                } else {
                    SslMode::Require
                });
                let client = client_config(mode, root_cert.as_deref())?;
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(client))
            }
        };
        Ok(Self { config, tls })
    }

    /// Opens one connection.
    pub async fn connect(&self) -> ConnectionResult<AsyncPgConnection> {
        let err = |e: tokio_postgres::Error| diesel::ConnectionError::BadConnection(e.to_string());
        match &self.tls {
            None => {
                let (client, conn) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(err)?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(err)?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
        }
    }
}

/// Opens one connection to `url` (see the module's header for TLS).
pub async fn connect(url: &str) -> ConnectionResult<AsyncPgConnection> {
    PgTarget::parse(url)
        .map_err(diesel::ConnectionError::BadConnection)?
        .connect()
        .await
}

/// The URL without `sslmode` and `sslrootcert` (tokio-postgres knows
/// neither `verify-*` nor root files), with what they said.
fn split_tls_params(url: &str) -> Result<(String, Mode, Option<PathBuf>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Mode::Disable, None));
    };
    let mut kept = Vec::new();
    let (mut mode, mut root) = (Mode::Disable, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = match v {
                    "disable" => Mode::Disable,
                    "prefer" | "allow" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        ))
                    }
                }
            }
            "sslrootcert" => root = Some(PathBuf::from(percent_decode(v)?)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = bytes.by_ref().take(2).map(char::from).collect();
            out.push(
                u8::from_str_radix(&hex, 16)
                    .map_err(|_| format!("bad percent-escape %{hex} in the database URL"))?,
            );
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| "the database URL is not UTF-8".into())
}

fn client_config(mode: Mode, root_cert: Option<&Path>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    format!(
                        "sslrootcert {} is not PEM certificates: {e}",
                        path.display()
                    )
                })?;
            if certs.is_empty() {
                return Err(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(format!(
                    "sslmode={mode:?} needs a CA: set sslrootcert=/path/to/ca.pem in the database URL, or install ca-certificates"
                ));
            }
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if mode == Mode::VerifyCa {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            .with_no_client_auth()
    } else {
        builder.with_webpki_verifier(webpki).with_no_client_auth()
    };
    Ok(config)
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked
/// (libpq's meaning, for servers reached by an address their certificate
/// does not name).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (rest, mode, root) =
            split_tls_params("postgres://u@db:5432/p?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(rest, "postgres://u@db:5432/p?application_name=x");
        assert_eq!(mode, Mode::VerifyFull);
        assert_eq!(root, Some(PathBuf::from("/etc/ca.pem")));
        let (rest, mode, _) = split_tls_params("postgres://u@db/p").unwrap();
        assert_eq!((rest.as_str(), mode), ("postgres://u@db/p", Mode::Disable));
        assert!(split_tls_params("postgres://u@db/p?sslmode=sometimes").is_err());
        let missing =
            PgTarget::parse("postgres://u@db/p?sslmode=require&sslrootcert=/nonexistent.pem");
        assert!(missing.unwrap_err().contains("cannot read sslrootcert"));
    }
}
