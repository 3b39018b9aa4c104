//! Server configuration, from one source of truth: the [`settings!`] list
//! below declares every key once — its type, default, environment variable,
//! flag and documentation. From it come the [`Settings`] struct (deserialized
//! from the layers TOML file → environment → flags, flags winning), the
//! environment layer, and the table in docs/operations.md (a test fails when
//! that table is stale). [`Settings::into_config`] checks the values and
//! builds the runtime [`Config`]. Secrets are never printed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

/// The signing secret for tokens. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// Named so that every use of the value is easy to find.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Used only with `--dev`: a well-known secret, so that tokens survive a
/// restart of a development server. Never use it in production.
pub const DEV_JWT_SECRET: &str = "propass-development-secret-do-not-use-in-production";

/// Everything the server needs to run: the checked form of [`Settings`]
/// (each field is documented on its key there).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Config {
    pub database_url: String,
    pub bind: SocketAddr,
    pub jwt_secret: Secret,
    pub dev_mode: bool,
    /// `(certificate chain, key)` PEM files when the server speaks TLS itself.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub token_ttl: Duration,
    pub refresh_grace: Duration,
    pub device_token_ttl: Duration,
    pub device_credential_lifetime: Duration,
    pub device_pushes_per_minute: u32,
    pub device_items_per_day: u64,
    /// Lease sizes for clients that set none.
    pub lease: crate::db::leases::LeasePolicy,
    /// When a kiosk counts as offline, and what flags it.
    pub fleet: crate::db::fleet::FleetPolicy,
    pub client_low_quota: i64,
    pub client_reader_keys_max: usize,
    pub body_read_timeout: Duration,
    pub max_batch_items: usize,
    pub max_body_bytes: usize,
    pub max_auth_body_bytes: usize,
    pub max_future_skew: Duration,
    pub max_backdate: Duration,
    pub login_max_failures: u32,
    pub login_window: Duration,
    pub password_checks: usize,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub proxy_header: ProxyHeader,
    pub ws_allowed_origins: Vec<String>,
    pub ws_heartbeat: Duration,
    pub ws_recheck: Duration,
    pub ws_max_connections: usize,
    pub ws_max_per_device: usize,
    pub ws_max_frame_bytes: usize,
    pub ws_client_timeout: Duration,
    pub ws_outbound_queue: usize,
    pub ws_inbound_per_sec: u32,
    pub db_pool_size: usize,
    pub db_timeout: Duration,
    pub db_queue_max: usize,
    pub workers: Option<usize>,
    pub admin_session_ttl: Duration,
    pub admin_session_idle: Duration,
    pub admin_page_max: usize,
    pub csv_chunk_rows: usize,
    pub admin_events_queue: usize,
    pub admin_streams_max: usize,
    pub metrics_bind: Option<SocketAddr>,
}

impl Config {
    /// Every default, for the given database and secret.
    pub fn new(database_url: impl Into<String>, jwt_secret: Secret) -> Self {
        Settings::default().build(database_url.into(), jwt_secret)
    }
}

/// One configuration key, as documented (the docs table and the sample
/// configuration are generated from these).
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    pub key: &'static str,
    pub env: &'static str,
    /// Empty when the key has no command-line flag.
    pub flag: &'static str,
    pub doc: &'static str,
}

/// Declares every key once; see the module documentation.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])+ $key:ident : $ty:ty = $default:expr, env $env:literal, flag $flag:literal; )+) => {
        /// The settings as the layers give them (file → environment → flags),
        /// before they are checked. Every key is optional in every layer.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Settings {
            $( $(#[doc = $doc])+ pub $key: $ty, )+
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $( $key: $default, )+ }
            }
        }

        /// Every key, in declaration order.
        pub const KEYS: &[KeyDoc] = &[
            $( KeyDoc { key: stringify!($key), env: $env, flag: $flag, doc: concat!($($doc),+) }, )+
        ];

        impl Settings {
            /// The environment layer: each key's variable, when set and not
            /// empty, parsed as the key's type.
            fn env_layer(get: &dyn Fn(&str) -> Option<String>) -> Result<Table, ConfigError> {
                let mut table = Table::new();
                $(
                    if let Some(raw) = get($env).filter(|v| !v.trim().is_empty()) {
                        let value = <$ty as Layered>::from_env(raw.trim())
                            .map_err(|why| ConfigError::Invalid(format!("{}={raw:?}: {why}", $env)))?;
                        table.insert(stringify!($key).into(), value);
                    }
                )+
                Ok(table)
            }

            /// Each key's default, as the docs show it.
            fn defaults() -> Vec<String> {
                let d = Self::default();
                vec![ $( d.$key.doc_value(), )+ ]
            }

            /// Each key's default as a TOML value; `None` for no default.
            fn toml_defaults() -> Vec<Option<String>> {
                let d = Self::default();
                vec![ $( d.$key.toml_value(), )+ ]
            }
        }
    };
}

settings! {
    /// PostgreSQL URL, e.g. `postgres://propass@localhost/propass`. Required (or `database_url_file`).
    database_url: Option<String> = None, env "DATABASE_URL", flag "--database-url";
    /// A file whose content (trimmed) is the PostgreSQL URL: keeps its password out of the config file and the environment (the package's unit passes it as a systemd credential).
    database_url_file: Option<PathBuf> = None, env "PROPASS_DATABASE_URL_FILE", flag "";
    /// Listen address; the seed client's default port.
    bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5000)), env "PROPASS_BIND", flag "serve --bind";
    /// HMAC key that signs tokens, 32+ bytes. Required outside `dev`; prefer `jwt_secret_file`.
    jwt_secret: Option<Secret> = None, env "PROPASS_JWT_SECRET", flag "";
    /// A file whose content (trimmed) is the JWT secret.
    jwt_secret_file: Option<PathBuf> = None, env "PROPASS_JWT_SECRET_FILE", flag "serve --jwt-secret-file";
    /// PEM certificate chain for serving HTTPS and WSS itself (with `tls_key_file`); unset: plain HTTP, for a TLS-terminating proxy in front.
    tls_cert_file: Option<PathBuf> = None, env "PROPASS_TLS_CERT_FILE", flag "";
    /// PEM private key of `tls_cert_file`.
    tls_key_file: Option<PathBuf> = None, env "PROPASS_TLS_KEY_FILE", flag "";
    /// Development mode: without a secret, sign with a well-known one — only on a loopback `bind`. Never in production.
    dev: bool = false, env "PROPASS_DEV", flag "serve --dev";
    /// Token lifetime (at least 60). Long, because the seed client refreshes only when less than a day is left and kiosks stay offline for days.
    token_ttl_secs: u64 = 7 * 24 * 3600, env "PROPASS_TOKEN_TTL_SECS", flag "";
    /// How long after expiry `/api/auth/refresh` still accepts a token (kiosks come back from long offline spells).
    refresh_grace_secs: u64 = 30 * 24 * 3600, env "PROPASS_REFRESH_GRACE_SECS", flag "";
    /// Lifetime of an enrolled device's access token (at least 60); the agent renews it with its refresh credential.
    device_token_ttl_secs: u64 = 900, env "PROPASS_DEVICE_TOKEN_TTL_SECS", flag "";
    /// Absolute lifetime of a device's chain of refresh credentials, from its enrollment; after it the device must be enrolled again.
    device_credential_lifetime_days: u64 = 365, env "PROPASS_DEVICE_CREDENTIAL_LIFETIME_DAYS", flag "";
    /// Pushes one device may make per clock minute (429 with `Retry-After` above, nothing recorded); 0: no limit. A guard against a runaway or stolen kiosk: an agent draining a backlog pushes a few batches a second at most.
    device_pushes_per_minute: u32 = 600, env "PROPASS_DEVICE_PUSHES_PER_MINUTE", flag "";
    /// New ledger rows one device may add per UTC day, by the time they reach the server; a push that would pass it is answered 429 with `Retry-After` and records nothing; 0: no limit. Leave room for a kiosk's backlog after days offline.
    device_items_per_day: u64 = 100_000, env "PROPASS_DEVICE_ITEMS_PER_DAY", flag "";
    /// A kiosk is shown offline once nothing was heard from it (heartbeat or any call) for this long; agents send a heartbeat every 30 s.
    device_offline_after_secs: u64 = 90, env "PROPASS_DEVICE_OFFLINE_AFTER_SECS", flag "";
    /// A kiosk whose clock is off the server's by more than this is flagged `clock_skew`.
    device_clock_skew_secs: u64 = 120, env "PROPASS_DEVICE_CLOCK_SKEW_SECS", flag "";
    /// A kiosk whose oldest unsynced operation is older than this is flagged `backlog`.
    device_backlog_age_secs: u64 = 3600, env "PROPASS_DEVICE_BACKLOG_AGE_SECS", flag "";
    /// A kiosk with this many failed writes since its agent started is flagged `write_failures`.
    device_write_failures: u64 = 3, env "PROPASS_DEVICE_WRITE_FAILURES", flag "";
    /// A client with this many free units or fewer is flagged `low_quota` in the dashboard (and the metric `propass_client_low_quota` is 1).
    client_low_quota: u64 = 10, env "PROPASS_CLIENT_LOW_QUOTA", flag "";
    /// Reader keys an operator may give one client's badges (`PUT /api/admin/clients/{id}/reader-keys`, `client keys`): each is one more try per sector when a kiosk reads a badge.
    client_reader_keys_max: usize = 32, env "PROPASS_CLIENT_READER_KEYS_MAX", flag "";
    /// Units of a client's quota a kiosk holds in lease (spendable offline), unless the kiosk or the client sets its own (`device lease`, `client lease`); 0: no leases (kiosks spend the free units optimistically, and the server flags overdrafts).
    lease_target: u64 = 10, env "PROPASS_LEASE_TARGET", flag "";
    /// A kiosk's lease is refilled to the target at its next sync once it holds fewer units than this (at most the target), unless the kiosk or the client sets its own.
    lease_low_water: u64 = 5, env "PROPASS_LEASE_LOW_WATER", flag "";
    /// A request body must arrive within this many seconds of the request (408 after): a body that trickles in holds a connection and a worker. The seed client gives up after 10 s and our agent after 30 s anyway.
    body_read_timeout_secs: u64 = 60, env "PROPASS_BODY_READ_TIMEOUT_SECS", flag "";
    /// Items per push (413 above). The seed client pushes its whole queue at once: a seed kiosk with more unsynced items than this cannot sync until the limit is raised.
    max_batch_items: usize = 20_000, env "PROPASS_MAX_BATCH_ITEMS", flag "";
    /// Largest request body in bytes (413 above; at least 1024).
    max_body_bytes: usize = 8 * 1024 * 1024, env "PROPASS_MAX_BODY_BYTES", flag "";
    /// Largest login body in bytes (413 above; at least 512): credentials are short, and a login is unauthenticated.
    max_auth_body_bytes: usize = 8 * 1024, env "PROPASS_MAX_AUTH_BODY_BYTES", flag "";
    /// How far ahead of the server's clock a copy's `occurred_at` may be; beyond, that item alone fails.
    max_future_skew_secs: u64 = 24 * 3600, env "PROPASS_MAX_FUTURE_SKEW_SECS", flag "";
    /// How far in the past a copy's `occurred_at` may be (kiosks offline for long still sync); beyond, that item alone fails.
    max_backdate_days: u64 = 3650, env "PROPASS_MAX_BACKDATE_DAYS", flag "";
    /// Failed logins allowed per username and per address within the window (429 above).
    login_max_failures: u32 = 5, env "PROPASS_LOGIN_MAX_FAILURES", flag "";
    /// The login throttle's window.
    login_window_secs: u64 = 300, env "PROPASS_LOGIN_WINDOW_SECS", flag "";
    /// Password (Argon2) checks run at once (at least 1); more logins wait their turn. Each takes about 19 MiB and a core for tens of milliseconds: a few keep a burst of logins (a fleet reconnecting after an outage) from exhausting memory or starving pushes on a small server, while queued logins still complete within a second or two.
    password_checks: usize = 4, env "PROPASS_PASSWORD_CHECKS", flag "";
    /// Addresses of reverse proxies in front of the server (comma-separated in the environment). Only a request from one of them has its client address taken from the header `proxy_header` names; from anyone else forwarding headers are ignored.
    trusted_proxies: Vec<String> = Vec::new(), env "PROPASS_TRUSTED_PROXIES", flag "";
    /// The one header the trusted proxies set: `x-forwarded-for` (HAProxy's `option forwardfor`, nginx's `$proxy_add_x_forwarded_for`) or `forwarded` (RFC 7239, HAProxy's `option forwarded`). The other is ignored even from a proxy: a proxy passes a client's own header through untouched, and a client could otherwise name any address.
    proxy_header: String = "x-forwarded-for".into(), env "PROPASS_PROXY_HEADER", flag "";
    /// Browser origins allowed to open the WebSocket (comma-separated in the environment). Clients without an `Origin` header (kiosk agents, Electron's main process) are not browsers and are always allowed.
    ws_allowed_origins: Vec<String> = Vec::new(), env "PROPASS_WS_ALLOWED_ORIGINS", flag "";
    /// How often the server pings each WebSocket.
    ws_heartbeat_secs: u64 = 15, env "PROPASS_WS_HEARTBEAT_SECS", flag "";
    /// How often an open WebSocket re-checks its user and device in PostgreSQL (at least 1). Revocations, disables and password changes close sockets at once by event; this is the safety net for an event lost while the change listener was away (after it reconnects, every socket re-checks at its next ping anyway).
    ws_recheck_secs: u64 = 300, env "PROPASS_WS_RECHECK_SECS", flag "";
    /// A WebSocket silent this long (not even a pong) is closed (at least 2).
    ws_client_timeout_secs: u64 = 75, env "PROPASS_WS_CLIENT_TIMEOUT_SECS", flag "";
    /// WebSockets this server holds open at once; past it a new one gets 503 with `Retry-After` and HTTP (pushes, pulls) keeps working. 0: derived from the process's open-file limit, leaving a quarter of it (at least 256) to HTTP, the database pool and files.
    ws_max_connections: usize = 0, env "PROPASS_WS_MAX_CONNECTIONS", flag "";
    /// WebSockets one device may hold open at once (at least 1); past it an upgrade gets 429 with `Retry-After`. A kiosk needs one; a few more cover a reconnect racing the old socket's close and a technician's debugging session, while a leaked token cannot open thousands.
    ws_max_per_device: usize = 8, env "PROPASS_WS_MAX_PER_DEVICE", flag "";
    /// Largest inbound WebSocket frame or message, in bytes (at least 1024; clients only send pings and heartbeats); a larger one ends the connection.
    ws_max_frame_bytes: usize = 64 * 1024, env "PROPASS_WS_MAX_FRAME_BYTES", flag "";
    /// Events queued for one WebSocket (one push's messages are one event) before the server drops that slow consumer.
    ws_outbound_queue: usize = 256, env "PROPASS_WS_OUTBOUND_QUEUE", flag "";
    /// Inbound WebSocket messages allowed per second per connection (bursts of twice that).
    ws_inbound_per_sec: u32 = 10, env "PROPASS_WS_INBOUND_PER_SEC", flag "";
    /// Database connections in the pool.
    db_pool_size: usize = 16, env "PROPASS_DB_POOL_SIZE", flag "";
    /// How long to wait for a database connection (or `/health`'s query) before answering 503.
    db_timeout_secs: u64 = 5, env "PROPASS_DB_TIMEOUT_SECS", flag "";
    /// Requests that may wait for a database connection at once: past it, a new request is answered 503 with `Retry-After` at once (load shedding in a reconnect storm) instead of every request waiting `db_timeout_secs`. `/health`, the dashboard and the admin API are never shed. 0: no limit.
    db_queue_max: usize = 64, env "PROPASS_DB_QUEUE_MAX", flag "";
    /// HTTP worker threads; unset means one per CPU.
    workers: Option<usize> = None, env "PROPASS_WORKERS", flag "";
    /// An operator's browser session ends this long after its login, whatever it does (at least 60).
    admin_session_ttl_secs: u64 = 12 * 3600, env "PROPASS_ADMIN_SESSION_TTL_SECS", flag "";
    /// An operator's browser session ends after this long without a request (at least 60; an open dashboard's live stream counts as activity).
    admin_session_idle_secs: u64 = 3600, env "PROPASS_ADMIN_SESSION_IDLE_SECS", flag "";
    /// Most rows one page of the ledger or the audit log may ask for (`limit`).
    admin_page_max: usize = 500, env "PROPASS_ADMIN_PAGE_MAX", flag "";
    /// Rows read from PostgreSQL per step of a CSV export: the export's memory is bounded by this, whatever the ledger's size.
    csv_chunk_rows: usize = 2000, env "PROPASS_CSV_CHUNK_ROWS", flag "";
    /// Live events queued for one dashboard before that slow page is dropped (it reconnects and refetches).
    admin_events_queue: usize = 1024, env "PROPASS_ADMIN_EVENTS_QUEUE", flag "";
    /// Dashboard live streams open at once on this server (503 with `Retry-After` above; the page retries).
    admin_streams_max: usize = 256, env "PROPASS_ADMIN_STREAMS_MAX", flag "";
    /// Where `/metrics` (Prometheus text format) is served, apart from the API so that it can stay on a private address; unset: not served.
    metrics_bind: Option<SocketAddr> = None, env "PROPASS_METRICS_BIND", flag "serve --metrics-bind";
}

/// How a key's type reads from the environment and shows in the docs and
/// in the sample configuration file.
trait Layered {
    fn from_env(raw: &str) -> Result<Value, String>;
    fn doc_value(&self) -> String;
    /// The value as TOML; `None` when there is none to show (unset, secret).
    fn toml_value(&self) -> Option<String>;
}

macro_rules! layered_number {
    ($($t:ty),+) => {$(
        impl Layered for $t {
            fn from_env(raw: &str) -> Result<Value, String> {
                let n: $t = raw.parse().map_err(|_| "not a valid number".to_string())?;
                i64::try_from(n).map(Value::Integer).map_err(|_| "too large".to_string())
            }
            fn doc_value(&self) -> String {
                format!("`{self}`")
            }
            fn toml_value(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )+};
}
layered_number!(u32, u64, usize);

/// `s` as a TOML string.
fn toml_string(s: &str) -> Option<String> {
    Some(Value::String(s.to_owned()).to_string())
}

impl Layered for bool {
    fn from_env(raw: &str) -> Result<Value, String> {
        match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Value::Boolean(true)),
            "0" | "false" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err("expected true or false".into()),
        }
    }
    fn doc_value(&self) -> String {
        format!("`{self}`")
    }
    fn toml_value(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Layered for String {
    fn from_env(raw: &str) -> Result<Value, String> {
        Ok(Value::String(raw.to_owned()))
    }
    fn doc_value(&self) -> String {
        format!("`{self}`")
    }
    fn toml_value(&self) -> Option<String> {
        toml_string(self)
    }
}

impl Layered for Secret {
    fn from_env(raw: &str) -> Result<Value, String> {
        Ok(Value::String(raw.to_owned()))
    }
    fn doc_value(&self) -> String {
        "***".into()
    }
    fn toml_value(&self) -> Option<String> {
        None
    }
}

impl Layered for PathBuf {
    fn from_env(raw: &str) -> Result<Value, String> {
        Ok(Value::String(raw.to_owned()))
    }
    fn doc_value(&self) -> String {
        format!("`{}`", self.display())
    }
    fn toml_value(&self) -> Option<String> {
        toml_string(&self.display().to_string())
    }
}

impl Layered for SocketAddr {
    fn from_env(raw: &str) -> Result<Value, String> {
        raw.parse::<SocketAddr>()
            .map(|_| Value::String(raw.to_owned()))
            .map_err(|_| "not an address like 127.0.0.1:5000".into())
    }
    fn doc_value(&self) -> String {
        format!("`{self}`")
    }
    fn toml_value(&self) -> Option<String> {
        toml_string(&self.to_string())
    }
}

impl Layered for Vec<String> {
    fn from_env(raw: &str) -> Result<Value, String> {
        Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ))
    }
    fn doc_value(&self) -> String {
        if self.is_empty() {
            "none".into()
        } else {
            format!("`{}`", self.join(","))
        }
    }
    fn toml_value(&self) -> Option<String> {
        Some(Value::Array(self.iter().map(|s| Value::String(s.clone())).collect()).to_string())
    }
}

impl<T: Layered> Layered for Option<T> {
    fn from_env(raw: &str) -> Result<Value, String> {
        T::from_env(raw)
    }
    fn doc_value(&self) -> String {
        self.as_ref().map_or_else(|| "—".into(), T::doc_value)
    }
    fn toml_value(&self) -> Option<String> {
        self.as_ref().and_then(T::toml_value)
    }
}

/// Which forwarding header carries the client's address from a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, …`
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1, …` (RFC 7239)
    Forwarded,
}

/// What went wrong while assembling the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a layer has an unknown key or a value of the wrong type.
    #[error("invalid configuration{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when the file is at fault.
        path: Option<PathBuf>,
        /// What the parser said.
        message: String,
    },
    /// A required value is missing.
    #[error("{0}")]
    Missing(String),
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// `client_reader_keys_max`, for the operator commands.
    pub fn client_reader_keys_max(&self) -> usize {
        self.client_reader_keys_max
    }

    /// What makes a kiosk offline or flagged (also for `device list`).
    pub fn fleet(&self) -> crate::db::fleet::FleetPolicy {
        let secs = |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        crate::db::fleet::FleetPolicy {
            offline_after: secs(self.device_offline_after_secs.max(1)),
            clock_skew: secs(self.device_clock_skew_secs),
            backlog_age: secs(self.device_backlog_age_secs),
            write_failures: i64::try_from(self.device_write_failures.max(1)).unwrap_or(i64::MAX),
        }
    }
}

impl Settings {
    /// Reads the layers: `file` (TOML), then the environment through `get`,
    /// then `flags` (a table of the keys given on the command line).
    pub fn load(
        file: Option<&Path>,
        get: &dyn Fn(&str) -> Option<String>,
        flags: Table,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => read_table(path)?,
            None => Table::new(),
        };
        if let Some(path) = file {
            // Checked alone first, so that an error names the file.
            Self::deserialize(Value::Table(table.clone())).map_err(|e| ConfigError::Parse {
                path: Some(path.into()),
                message: e.to_string(),
            })?;
        }
        table.extend(Self::env_layer(get)?);
        table.extend(flags);
        Self::deserialize(Value::Table(table)).map_err(|e| ConfigError::Parse {
            path: None,
            message: e.to_string(),
        })
    }
}

fn read_table(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    text.parse::<Table>().map_err(|e| ConfigError::Parse {
        path: Some(path.into()),
        message: e.to_string(),
    })
}

impl Settings {
    /// The database URL (given, or read from `database_url_file`), or the
    /// error every command gives without one.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        if let Some(path) = &self.database_url_file {
            let url = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned();
            if url.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{} is empty: write the PostgreSQL URL in it",
                    path.display()
                )));
            }
            return Ok(url);
        }
        Err(ConfigError::Missing(
            "no database configured: set DATABASE_URL, --database-url, database_url or database_url_file".into(),
        ))
    }

    fn secret(&self) -> Result<Secret, ConfigError> {
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => Some(Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim(),
            )),
            (None, None) => None,
        };
        match secret {
            Some(s) if s.expose().len() >= 32 => Ok(s),
            Some(_) => Err(ConfigError::Invalid(
                "the JWT secret must be at least 32 bytes long".into(),
            )),
            None if self.dev && !self.bind.ip().is_loopback() => Err(ConfigError::Invalid(format!(
                "--dev signs tokens with a well-known secret: it only listens on a loopback address, not {}",
                self.bind
            ))),
            None if self.dev => {
                tracing::warn!("development mode: signing tokens with the well-known development secret");
                Ok(Secret::new(DEV_JWT_SECRET))
            }
            None => Err(ConfigError::Missing(
                "no JWT signing secret: set PROPASS_JWT_SECRET (32+ bytes), PROPASS_JWT_SECRET_FILE or jwt_secret_file, \
                 or pass --dev for a development server"
                    .into(),
            )),
        }
    }

    /// Checks the values and builds the runtime configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let url = self.database_url()?;
        let secret = self.secret()?;
        let proxies = self.proxies()?;
        let proxy_header = match self.proxy_header.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ProxyHeader::XForwardedFor,
            "forwarded" => ProxyHeader::Forwarded,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "proxy_header: {other:?} is neither \"x-forwarded-for\" nor \"forwarded\""
                )))
            }
        };
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "tls_cert_file and tls_key_file go together: set both, or neither".into(),
                ))
            }
        };
        let mut config = self.build(url, secret);
        config.trusted_proxies = proxies;
        config.proxy_header = proxy_header;
        config.tls = tls;
        Ok(config)
    }

    fn proxies(&self) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.trim().parse().map_err(|_| {
                    ConfigError::Invalid(format!("trusted_proxies: {p:?} is not an IP address"))
                })
            })
            .collect()
    }

    /// The default lease sizes; the low-water mark never above the target.
    fn lease(&self) -> crate::db::leases::LeasePolicy {
        crate::db::leases::LeasePolicy {
            target: i64::try_from(self.lease_target).unwrap_or(i64::MAX),
            low_water: i64::try_from(self.lease_low_water.min(self.lease_target))
                .unwrap_or(i64::MAX),
        }
    }

    /// Values below a floor that keeps the server working are raised to it.
    fn build(self, database_url: String, jwt_secret: Secret) -> Config {
        let secs = Duration::from_secs;
        Config {
            database_url,
            jwt_secret,
            dev_mode: self.dev,
            tls: None,
            bind: self.bind,
            token_ttl: secs(self.token_ttl_secs.max(60)),
            refresh_grace: secs(self.refresh_grace_secs),
            device_token_ttl: secs(self.device_token_ttl_secs.max(60)),
            device_credential_lifetime: secs(
                self.device_credential_lifetime_days
                    .max(1)
                    .saturating_mul(86_400),
            ),
            device_pushes_per_minute: self.device_pushes_per_minute,
            device_items_per_day: self.device_items_per_day,
            fleet: self.fleet(),
            client_low_quota: i64::try_from(self.client_low_quota).unwrap_or(i64::MAX),
            client_reader_keys_max: self.client_reader_keys_max,
            lease: self.lease(),
            body_read_timeout: secs(self.body_read_timeout_secs.max(1)),
            max_batch_items: self.max_batch_items.max(1),
            max_body_bytes: self.max_body_bytes.max(1024),
            max_auth_body_bytes: self.max_auth_body_bytes.max(512),
            max_future_skew: secs(self.max_future_skew_secs),
            max_backdate: secs(self.max_backdate_days.saturating_mul(86_400)),
            login_max_failures: self.login_max_failures.max(1),
            login_window: secs(self.login_window_secs.max(1)),
            password_checks: self.password_checks.max(1),
            trusted_proxies: Vec::new(),
            proxy_header: ProxyHeader::XForwardedFor,
            ws_allowed_origins: self.ws_allowed_origins,
            ws_heartbeat: secs(self.ws_heartbeat_secs.max(1)),
            ws_recheck: secs(self.ws_recheck_secs.max(1)),
            ws_max_connections: ws_cap(self.ws_max_connections),
            ws_max_per_device: self.ws_max_per_device.max(1),
            ws_max_frame_bytes: self.ws_max_frame_bytes.max(1024),
            ws_client_timeout: secs(self.ws_client_timeout_secs.max(2)),
            ws_outbound_queue: self.ws_outbound_queue.max(1),
            ws_inbound_per_sec: self.ws_inbound_per_sec.max(1),
            db_pool_size: self.db_pool_size.max(1),
            db_timeout: secs(self.db_timeout_secs.max(1)),
            db_queue_max: self.db_queue_max,
            workers: self.workers,
            admin_session_ttl: secs(self.admin_session_ttl_secs.max(60)),
            admin_session_idle: secs(self.admin_session_idle_secs.max(60)),
            admin_page_max: self.admin_page_max.max(1),
            csv_chunk_rows: self.csv_chunk_rows.max(1),
            admin_events_queue: self.admin_events_queue.max(16),
            admin_streams_max: self.admin_streams_max.max(1),
            metrics_bind: self.metrics_bind,
        }
    }
}

/// `ws_max_connections`: 0 derives the cap from the open-file limit; a cap
/// above what that limit leaves room for is kept, and warned about.
fn ws_cap(configured: usize) -> usize {
    let room = derived_ws_cap(open_file_limit());
    if configured == 0 {
        return room;
    }
    if configured > room {
        // Past the fd limit the server cannot even accept the push that
        // would empty a kiosk's queue.
        tracing::warn!(
            ws_max_connections = configured,
            fits = room,
            "ws_max_connections is above what the open-file limit leaves room for: raise LimitNOFILE, or lower it"
        );
    }
    configured
}

/// The process's soft limit of open files (Linux' `/proc/self/limits`);
/// 1024, the usual default, when it cannot be read.
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// WebSockets allowed under an open-file limit of `limit`: a quarter of it
/// (at least 256) stays for HTTP, the pool, the listener and files — a
/// server at its fd limit cannot even accept the push that would have
/// emptied a kiosk's queue.
fn derived_ws_cap(limit: usize) -> usize {
    limit.saturating_sub((limit / 4).max(256)).max(16)
}

/// The markdown table of every key, as docs/operations.md shows it between
/// `<!-- config-table:begin -->` and `<!-- config-table:end -->`.
pub fn config_table() -> String {
    let mut out = String::from(
        "| file key | environment | flag | default | meaning |\n|---|---|---|---|---|\n",
    );
    for (k, default) in KEYS.iter().zip(Settings::defaults()) {
        let flag = if k.flag.is_empty() {
            String::new()
        } else {
            format!("`{}`", k.flag)
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {flag} | {default} | {} |\n",
            k.key,
            k.env,
            k.doc.trim()
        ));
    }
    out
}

/// The sample configuration file (`deploy/server.toml`, the package's
/// `/etc/propass/server.toml`): every key, commented out at its default,
/// with its meaning and environment variable.
pub fn sample_toml() -> String {
    let mut out = String::from(
        "# PROPASS server configuration. Generated from the server's own list of keys\n\
         # (propass-server/src/config.rs; docs/operations.md has the same table): every\n\
         # key at its default, commented out. Uncomment to change one. An environment\n\
         # variable wins over this file, a command-line flag over both.\n\
         # The packaged unit passes the database URL and the JWT secret as systemd\n\
         # credentials from /etc/propass/database-url and /etc/propass/jwt-secret:\n\
         # keep them out of this file.\n",
    );
    for (k, default) in KEYS.iter().zip(Settings::toml_defaults()) {
        out.push('\n');
        for line in wrap(k.doc.trim(), 76) {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&format!("# Environment: {}", k.env));
        if !k.flag.is_empty() {
            out.push_str(&format!("; flag: {}", k.flag));
        }
        out.push('\n');
        match default {
            Some(v) => out.push_str(&format!("#{} = {v}\n", k.key)),
            None => out.push_str(&format!("# (no default)\n#{} =\n", k.key)),
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_cap_leaves_room_for_http() {
        assert_eq!(derived_ws_cap(1024), 768);
        assert_eq!(derived_ws_cap(65_536), 49_152);
        assert_eq!(derived_ws_cap(300), 44);
        assert_eq!(derived_ws_cap(100), 16, "a floor, however low the limit");
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn settings(
        toml_text: &str,
        env: &[(&str, &str)],
        flags: Table,
    ) -> Result<Settings, ConfigError> {
        let dir = propass_test_support::TempDir::new("propass-config-test").unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, toml_text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Settings::load(Some(&path), &get, flags)
    }

    #[test]
    fn refuses_to_start_without_secret_outside_dev() {
        let mut s = Settings {
            database_url: Some("postgres://x".into()),
            ..Settings::default()
        };
        let err = s.clone().into_config().unwrap_err();
        assert!(err.to_string().contains("PROPASS_JWT_SECRET"), "{err}");
        s.dev = true;
        assert!(s.into_config().unwrap().dev_mode);
    }

    #[test]
    fn the_development_secret_only_listens_on_loopback() {
        let s = Settings {
            database_url: Some("postgres://x".into()),
            dev: true,
            bind: "0.0.0.0:5000".parse().unwrap(),
            ..Settings::default()
        };
        let err = s.clone().into_config().unwrap_err();
        assert!(
            err.to_string().contains("only listens on a loopback"),
            "{err}"
        );
        let s = Settings {
            bind: "[::1]:5000".parse().unwrap(),
            ..s
        };
        assert!(s.into_config().unwrap().dev_mode);
    }

    #[test]
    fn the_proxy_header_is_one_of_two() {
        let c = settings(
            "proxy_header = 'Forwarded'\ndatabase_url = 'postgres://x'\ndev = true",
            &[],
            Table::new(),
        )
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(c.proxy_header, ProxyHeader::Forwarded);
        let err = settings(
            "proxy_header = 'x-real-ip'\ndatabase_url = 'postgres://x'\ndev = true",
            &[],
            Table::new(),
        )
        .unwrap()
        .into_config()
        .unwrap_err();
        assert!(err.to_string().contains("x-real-ip"), "{err}");
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let mut flags = Table::new();
        flags.insert("bind".into(), Value::String("127.0.0.1:9".into()));
        let s = settings(
            "database_url = 'postgres://file'\nbind = '0.0.0.0:1'\nmax_batch_items = 10\ndb_timeout_secs = 3\njwt_secret = 'ffffffffffffffffffffffffffffffffffff'",
            &[("PROPASS_MAX_BATCH_ITEMS", "20"), ("PROPASS_WS_ALLOWED_ORIGINS", "https://a, https://b"), ("PROPASS_BIND", "127.0.0.1:8")],
            flags,
        )
        .unwrap();
        assert!(
            !format!("{s:?}").contains("ffff"),
            "settings print the secret"
        );
        let c = s.into_config().unwrap();
        assert_eq!(c.database_url, "postgres://file");
        assert_eq!(c.bind.port(), 9);
        assert_eq!(c.max_batch_items, 20);
        assert_eq!(c.db_timeout, Duration::from_secs(3));
        assert_eq!(c.ws_allowed_origins, ["https://a", "https://b"]);
        assert_eq!(format!("{:?}", c.jwt_secret), "Secret(***)");
    }

    #[test]
    fn every_key_has_an_environment_variable_that_works() {
        for k in KEYS {
            assert!(!k.env.is_empty(), "{} has no environment variable", k.key);
        }
        let s = settings(
            "",
            &[
                ("PROPASS_WS_OUTBOUND_QUEUE", "7"),
                ("PROPASS_WS_INBOUND_PER_SEC", "3"),
                ("PROPASS_DB_TIMEOUT_SECS", "9"),
                ("PROPASS_DEV", "yes"),
            ],
            Table::new(),
        )
        .unwrap();
        assert_eq!(
            (
                s.ws_outbound_queue,
                s.ws_inbound_per_sec,
                s.db_timeout_secs,
                s.dev
            ),
            (7, 3, 9, true)
        );
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused_with_their_source() {
        let err = settings("bnid = '1.2.3.4:5'", &[], Table::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bnid") && err.contains(".toml"), "{err}");
        let err = settings("", &[("PROPASS_DB_POOL_SIZE", "many")], Table::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PROPASS_DB_POOL_SIZE") && err.contains("not a valid number"),
            "{err}"
        );
        let err = settings(
            "database_url = 'postgres://x'\ndev = true",
            &[("PROPASS_TRUSTED_PROXIES", "10.0.0.1, proxy.lan")],
            Table::new(),
        )
        .unwrap()
        .into_config()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("proxy.lan"), "{err}");
        let err = settings("workers = 'four'", &[], Table::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("workers"), "{err}");
        assert!(Settings::load(None, &no_env, Table::new()).is_ok());
    }

    /// docs/operations.md shows the generated table; `PROPASS_BLESS=1 cargo
    /// test -p propass-server --lib config` rewrites it.
    #[test]
    fn operations_doc_shows_the_generated_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
        propass_test_support::assert_generated(
            &path,
            Some(("<!-- config-table:begin -->\n", "<!-- config-table:end -->")),
            &config_table(),
            "PROPASS_BLESS=1 cargo test -p propass-server --lib config",
        );
    }

    /// The package's conffile is this generated file.
    #[test]
    fn the_sample_config_file_is_generated_and_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/server.toml");
        let sample = sample_toml();
        propass_test_support::assert_generated(
            &path,
            None,
            &sample,
            "PROPASS_BLESS=1 cargo test -p propass-server --lib config",
        );
        // Every assignment uncommented is a valid file giving the defaults.
        let uncommented = propass_test_support::uncommented_assignments(&sample);
        let parsed: Settings = toml::from_str(&uncommented).expect("the sample parses");
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Settings::default()));
    }
}
