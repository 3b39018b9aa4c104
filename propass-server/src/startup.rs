//! Builds the application: shared state, routes, middleware, listener. Used
//! by `main` and by the integration tests, which bind port 0.

use std::net::TcpListener;
use std::path::Path;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::routes;
use crate::state::AppState;

/// The TLS configuration from PEM files: rustls with the ring provider.
fn tls_config(cert: &Path, key: &Path) -> std::io::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {e}", what.display()),
        )
    };
    // One provider per process; installing it twice (tests) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(cert, &e))
}

/// A bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on its own address, when `metrics_bind` is set: its port and server.
    metrics: Option<(u16, Server)>,
    state: web::Data<AppState>,
}

/// The `/metrics` server on `addr`: one worker, nothing else routed.
fn metrics_server(
    addr: std::net::SocketAddr,
    state: web::Data<AppState>,
) -> std::io::Result<(u16, Server)> {
    let listener = TcpListener::bind(addr)?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(routes::metrics::metrics))
            .default_service(web::to(routes::not_found))
    })
    .disable_signals()
    .workers(1)
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok((port, server))
}

impl Application {
    /// Binds `config.bind` (port 0 picks a free port) and builds the server.
    /// Does not run migrations: see [`crate::db::run_migrations`].
    pub fn build(config: Config) -> std::io::Result<Self> {
        // A database URL whose TLS settings do not hold fails here, not at
        // the first request.
        crate::db::connect::PgTarget::parse(&config.database_url).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(config.bind)?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState::new(config));
        let workers = state.config.workers;
        let body_limit = state.config.max_body_bytes;
        let auth_limit = state.config.max_auth_body_bytes;
        let app_state = state.clone();
        let tls = match &state.config.tls {
            Some((cert, key)) => Some(tls_config(cert, key)?),
            None => None,
        };
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(body_limit)
                        .error_handler(routes::json_error),
                )
                .app_data(web::PayloadConfig::default().limit(body_limit))
                .app_data(web::QueryConfig::default().error_handler(routes::query_error))
                .app_data(web::PathConfig::default().error_handler(routes::path_error))
                // Inside the log: shed requests are logged and counted.
                .wrap(from_fn(routes::shed::middleware))
                .wrap(from_fn(routes::access_log::middleware))
                .configure(|cfg| routes::configure(cfg, auth_limit))
        })
        // Signals are ours (`stop_on_signals`): WebSockets get a close frame
        // before the graceful stop, which would otherwise wait on them.
        .disable_signals()
        .shutdown_timeout(10);
        server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?,
            None => server.listen(listener)?,
        };
        if let Some(n) = workers {
            server = server.workers(n.max(1));
        }
        let metrics = match state.config.metrics_bind {
            Some(addr) => Some(metrics_server(addr, state.clone())?),
            None => None,
        };
        Ok(Self {
            port,
            server: server.run(),
            metrics,
            state,
        })
    }

    /// The port `/metrics` is served on, when it is.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    /// The shared state (tests read its counters).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What stops this server gracefully.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            server: self.server.handle(),
            metrics: self.metrics.as_ref().map(|(_, s)| s.handle()),
            state: self.state.clone(),
        }
    }

    /// SIGINT or SIGTERM stops the server gracefully. Must be called within
    /// the runtime that serves.
    pub fn stop_on_signals(&self) {
        let stopper = self.stopper();
        tokio::spawn(async move {
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot watch SIGTERM");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate => {}
            }
            tracing::info!("stopping: closing WebSockets, finishing requests");
            stopper.stop().await;
        });
    }

    /// Serves until the server is stopped (see [`Self::stopper`] and
    /// [`Self::stop_on_signals`]).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let state = self.state.clone();
        let listener = tokio::spawn(async move {
            let url = state.config.database_url.clone();
            crate::changes::listen_for_changes(url, &state).await
        });
        let state = self.state.clone();
        let announcer = tokio::spawn(async move { crate::changes::announce(&state).await });
        let state = self.state.clone();
        let device_rows =
            tokio::spawn(async move { crate::changes::publish_devices(&state).await });
        let state = self.state.clone();
        let aging = tokio::spawn(async move { crate::changes::publish_aging(&state).await });
        let state = self.state.clone();
        let heartbeats =
            tokio::spawn(async move { crate::changes::store_heartbeats(&state).await });
        let metrics = self.metrics.map(|(_, server)| tokio::spawn(server));
        let result = self.server.await;
        listener.abort();
        // The writer stores what is pending (a server that stops keeps its
        // kiosks' last heartbeats) and ends; a database that does not answer
        // does not hold the stop for long.
        self.state.heartbeats.close();
        let within = self.state.config.db_timeout + std::time::Duration::from_secs(2);
        let abort = heartbeats.abort_handle();
        if tokio::time::timeout(within, heartbeats).await.is_err() {
            abort.abort();
        }
        announcer.abort();
        device_rows.abort();
        aging.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        result
    }
}

/// Stops a running [`Application`]: open WebSockets are told the server is
/// going away (kiosks reconnect at once), then requests in flight finish
/// within the shutdown timeout.
#[derive(Clone)]
pub struct Stopper {
    server: actix_web::dev::ServerHandle,
    metrics: Option<actix_web::dev::ServerHandle>,
    state: web::Data<AppState>,
}

impl Stopper {
    /// Stops gracefully; returns once the server has stopped.
    pub async fn stop(&self) {
        self.state.hub.close_all();
        self.state.live.close_all();
        if let Some(m) = &self.metrics {
            m.stop(true).await;
        }
        self.server.stop(true).await;
    }
}
