//! Builds the application: shared state, routes, middleware, listener. Used
//! by `main` and by the integration tests, which bind port 0.

use std::net::TcpListener;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::{web, App, HttpServer};

use crate::auth::{JwtKeys, LoginThrottle};
use crate::config::Config;
use crate::db::{self, PgPool};
use crate::routes;
use crate::ws::{self, Hub};

/// What every handler shares.
pub struct AppState {
    /// The configuration.
    pub config: Config,
    /// Database connections.
    pub pool: PgPool,
    /// Token keys.
    pub jwt: JwtKeys,
    /// Failed-login throttle.
    pub throttle: LoginThrottle,
    /// WebSocket connections.
    pub hub: Hub,
    /// Bounds concurrent Argon2 checks (CPU and ~19 MiB each).
    pub password_checks: tokio::sync::Semaphore,
}

/// A bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Binds `config.bind` (port 0 picks a free port) and builds the server.
    /// Does not run migrations: see [`db::run_migrations`].
    pub fn build(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.bind)?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            pool: db::build_pool(&config.database_url, config.db_pool_size, config.db_timeout),
            jwt: JwtKeys::new(&config),
            throttle: LoginThrottle::new(config.login_max_failures, config.login_window),
            hub: Hub::new(config.ws_outbound_queue),
            password_checks: tokio::sync::Semaphore::new(4),
            config,
        });
        let workers = state.config.workers;
        let body_limit = state.config.max_body_bytes;
        let app_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(web::JsonConfig::default().limit(body_limit).error_handler(routes::json_error))
                .app_data(web::PayloadConfig::default().limit(body_limit))
                .wrap_fn(|req, srv| {
                    // Method, path (never the query string: it may hold a token), status, latency.
                    let method = req.method().clone();
                    let path = req.path().to_owned();
                    let start = Instant::now();
                    let fut = srv.call(req);
                    async move {
                        let res = fut.await;
                        let ms = start.elapsed().as_secs_f64() * 1000.0;
                        match &res {
                            Ok(r) => tracing::info!(%method, %path, status = r.status().as_u16(), latency_ms = format_args!("{ms:.1}"), "request"),
                            Err(e) => tracing::warn!(%method, %path, error = %e, latency_ms = format_args!("{ms:.1}"), "request failed"),
                        }
                        res
                    }
                })
                .route("/health", web::get().to(routes::health))
                .route("/api/auth/login", web::post().to(routes::login))
                .route("/api/auth/refresh", web::post().to(routes::refresh))
                .route("/api/sync/push", web::post().to(routes::push))
                .route("/api/sync/pull", web::get().to(routes::pull))
                .route("/ws", web::get().to(ws::upgrade))
                .route("/", web::get().to(ws::upgrade))
                .default_service(web::to(routes::not_found))
        })
        .shutdown_timeout(10)
        .listen(listener)?;
        if let Some(n) = workers {
            server = server.workers(n.max(1));
        }
        Ok(Self {
            port,
            server: server.run(),
            state,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM stop it gracefully).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let listener = tokio::spawn(listen_for_quota_changes(self.state.clone()));
        let result = self.server.await;
        listener.abort();
        result
    }
}

/// Listens on a dedicated connection for quota changes made outside a push
/// (the operator CLI's `quota add` NOTIFYs), and pushes `quota_updated` to
/// every WebSocket. Reconnects forever; a notification sent while it was
/// disconnected is lost (kiosks also pull), so it is a hint, not the truth.
async fn listen_for_quota_changes(state: web::Data<AppState>) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use futures_util::StreamExt;
    use propass_protocol::{ClientId, QuotaUpdated, WsMessage};

    loop {
        let session = async {
            let mut conn = AsyncPgConnection::establish(&state.config.database_url)
                .await
                .map_err(|e| e.to_string())?;
            diesel::sql_query(format!("LISTEN {}", db::QUOTA_CHANNEL))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            tracing::debug!("listening for quota changes");
            let mut stream = std::pin::pin!(conn.notifications_stream());
            while let Some(n) = stream.next().await {
                let n = n.map_err(|e| e.to_string())?;
                let Ok(client) = n.payload.parse::<ClientId>() else {
                    continue;
                };
                let remaining = match state.pool.get().await {
                    Ok(mut c) => db::remaining_of(&mut c, client).await.ok().flatten(),
                    Err(_) => None,
                };
                if let Some((remaining, version)) = remaining {
                    state.hub.broadcast(&WsMessage::QuotaUpdated(QuotaUpdated {
                        client_id: client,
                        remaining,
                        version: Some(version),
                    }));
                }
            }
            Ok::<(), String>(())
        };
        if let Err(e) = session.await {
            tracing::warn!(error = %e, "quota listener disconnected; reconnecting");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
