//! Server configuration: one struct, layered TOML file → environment →
//! command-line flags (flags win). Secrets are never printed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The signing secret for tokens. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
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

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL connection URL (`DATABASE_URL`).
    pub database_url: String,
    /// Where to listen. Default `127.0.0.1:5000`, the seed client's default port.
    pub bind: SocketAddr,
    /// HMAC key that signs tokens (`PROPASS_JWT_SECRET` or `jwt_secret_file`).
    pub jwt_secret: Secret,
    /// Development mode: allows running without a configured secret.
    pub dev_mode: bool,
    /// Lifetime of a token. Default 7 days: the seed client refreshes when less
    /// than one day is left, and a kiosk may stay offline for days.
    pub token_ttl: Duration,
    /// How long after expiry `/api/auth/refresh` still accepts a token
    /// (kiosks come back from long offline spells). Default 30 days.
    pub refresh_grace: Duration,
    /// Most items in one push. Default 20 000 (the seed client pushes its
    /// whole offline queue in one request).
    pub max_batch_items: usize,
    /// Largest request body in bytes. Default 8 MiB.
    pub max_body_bytes: usize,
    /// Failed logins allowed per username and per address within `login_window`. Default 5.
    pub login_max_failures: u32,
    /// The window of the login throttle. Default 5 minutes.
    pub login_window: Duration,
    /// Browser origins allowed to open the WebSocket. Connections without an
    /// `Origin` header (kiosk agents, the Electron main process) are not browsers
    /// and are always allowed. Default: none.
    pub ws_allowed_origins: Vec<String>,
    /// How often the server pings each WebSocket. Default 15 s.
    pub ws_heartbeat: Duration,
    /// A WebSocket that sends nothing (not even a pong) for this long is closed. Default 75 s.
    pub ws_client_timeout: Duration,
    /// Messages queued for one WebSocket before the server drops that slow
    /// consumer. Default 256.
    pub ws_outbound_queue: usize,
    /// Inbound WebSocket messages allowed per second per connection (burst: twice that). Default 10.
    pub ws_inbound_per_sec: u32,
    /// Database connections in the pool. Default 16.
    pub db_pool_size: usize,
    /// How long to wait for a database connection before answering 503. Default 5 s.
    pub db_timeout: Duration,
    /// HTTP worker threads. Default: the number of CPUs.
    pub workers: Option<usize>,
}

impl Config {
    /// A configuration with every default, for the given database and secret.
    pub fn new(database_url: impl Into<String>, jwt_secret: Secret) -> Self {
        Self {
            database_url: database_url.into(),
            bind: "127.0.0.1:5000".parse().expect("static address"),
            jwt_secret,
            dev_mode: false,
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            refresh_grace: Duration::from_secs(30 * 24 * 3600),
            max_batch_items: 20_000,
            max_body_bytes: 8 * 1024 * 1024,
            login_max_failures: 5,
            login_window: Duration::from_secs(300),
            ws_allowed_origins: Vec::new(),
            ws_heartbeat: Duration::from_secs(15),
            ws_client_timeout: Duration::from_secs(75),
            ws_outbound_queue: 256,
            ws_inbound_per_sec: 10,
            db_pool_size: 16,
            db_timeout: Duration::from_secs(5),
            workers: None,
        }
    }
}

/// The TOML file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::database_url`].
    pub database_url: Option<String>,
    /// See [`Config::bind`].
    pub bind: Option<SocketAddr>,
    /// See [`Config::jwt_secret`]. Prefer `jwt_secret_file`.
    pub jwt_secret: Option<String>,
    /// A file whose content (trimmed) is the secret.
    pub jwt_secret_file: Option<PathBuf>,
    /// See [`Config::dev_mode`].
    pub dev: Option<bool>,
    /// See [`Config::token_ttl`], in seconds.
    pub token_ttl_secs: Option<u64>,
    /// See [`Config::refresh_grace`], in seconds.
    pub refresh_grace_secs: Option<u64>,
    /// See [`Config::max_batch_items`].
    pub max_batch_items: Option<usize>,
    /// See [`Config::max_body_bytes`].
    pub max_body_bytes: Option<usize>,
    /// See [`Config::login_max_failures`].
    pub login_max_failures: Option<u32>,
    /// See [`Config::login_window`], in seconds.
    pub login_window_secs: Option<u64>,
    /// See [`Config::ws_allowed_origins`].
    pub ws_allowed_origins: Option<Vec<String>>,
    /// See [`Config::ws_heartbeat`], in seconds.
    pub ws_heartbeat_secs: Option<u64>,
    /// See [`Config::ws_client_timeout`], in seconds.
    pub ws_client_timeout_secs: Option<u64>,
    /// See [`Config::ws_outbound_queue`].
    pub ws_outbound_queue: Option<usize>,
    /// See [`Config::ws_inbound_per_sec`].
    pub ws_inbound_per_sec: Option<u32>,
    /// See [`Config::db_pool_size`].
    pub db_pool_size: Option<usize>,
    /// See [`Config::db_timeout`], in seconds.
    pub db_timeout_secs: Option<u64>,
    /// See [`Config::workers`].
    pub workers: Option<usize>,
}

/// What went wrong while assembling the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
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

impl FileConfig {
    /// Reads a TOML file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Applies the environment's `PROPASS_*` variables over the file's values
    /// (`DATABASE_URL`, `PROPASS_BIND`, `PROPASS_JWT_SECRET` and
    /// `PROPASS_JWT_SECRET_FILE` are read by the command line itself).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(
            name: &str,
            v: Option<String>,
        ) -> Result<Option<T>, ConfigError> {
            v.map(|s| {
                s.trim().parse::<T>().map_err(|_| {
                    ConfigError::Invalid(format!("{name}={s:?} is not a valid number"))
                })
            })
            .transpose()
        }
        macro_rules! env_num {
            ($field:ident, $name:literal) => {
                if let Some(v) = num($name, get($name))? {
                    self.$field = Some(v);
                }
            };
        }
        env_num!(token_ttl_secs, "PROPASS_TOKEN_TTL_SECS");
        env_num!(refresh_grace_secs, "PROPASS_REFRESH_GRACE_SECS");
        env_num!(max_batch_items, "PROPASS_MAX_BATCH_ITEMS");
        env_num!(max_body_bytes, "PROPASS_MAX_BODY_BYTES");
        env_num!(login_max_failures, "PROPASS_LOGIN_MAX_FAILURES");
        env_num!(login_window_secs, "PROPASS_LOGIN_WINDOW_SECS");
        env_num!(ws_heartbeat_secs, "PROPASS_WS_HEARTBEAT_SECS");
        env_num!(ws_client_timeout_secs, "PROPASS_WS_CLIENT_TIMEOUT_SECS");
        env_num!(db_pool_size, "PROPASS_DB_POOL_SIZE");
        env_num!(workers, "PROPASS_WORKERS");
        if let Some(v) = get("PROPASS_WS_ALLOWED_ORIGINS") {
            self.ws_allowed_origins = Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
        Ok(())
    }

    /// Builds the final configuration. `database_url`, `bind`, `secret`,
    /// `secret_file` and `dev` come from flags or their environment variables
    /// and win over the file.
    pub fn into_config(
        self,
        database_url: Option<String>,
        bind: Option<SocketAddr>,
        secret: Option<String>,
        secret_file: Option<PathBuf>,
        dev: bool,
    ) -> Result<Config, ConfigError> {
        let database_url = database_url.or(self.database_url).ok_or_else(|| {
            ConfigError::Missing("no database configured: set DATABASE_URL, --database-url or database_url in the config file".into())
        })?;
        let dev_mode = dev || self.dev.unwrap_or(false);
        let secret_file = secret_file.or(self.jwt_secret_file);
        let secret = match (secret, secret_file, self.jwt_secret) {
            (Some(s), _, _) => Some(s),
            (None, Some(path), _) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None, file_secret) => file_secret,
        };
        let jwt_secret = match secret {
            Some(s) if s.len() >= 32 => Secret::new(s),
            Some(_) => return Err(ConfigError::Invalid("the JWT secret must be at least 32 bytes long".into())),
            None if dev_mode => {
                tracing::warn!("development mode: signing tokens with the well-known development secret");
                Secret::new(DEV_JWT_SECRET)
            }
            None => {
                return Err(ConfigError::Missing(
                    "no JWT signing secret: set PROPASS_JWT_SECRET (32+ bytes), PROPASS_JWT_SECRET_FILE or jwt_secret_file, \
                     or pass --dev for a development server"
                        .into(),
                ))
            }
        };
        let mut c = Config::new(database_url, jwt_secret);
        c.dev_mode = dev_mode;
        if let Some(b) = bind.or(self.bind) {
            c.bind = b;
        }
        let secs = Duration::from_secs;
        if let Some(v) = self.token_ttl_secs {
            c.token_ttl = secs(v.max(60));
        }
        if let Some(v) = self.refresh_grace_secs {
            c.refresh_grace = secs(v);
        }
        if let Some(v) = self.max_batch_items {
            c.max_batch_items = v.max(1);
        }
        if let Some(v) = self.max_body_bytes {
            c.max_body_bytes = v.max(1024);
        }
        if let Some(v) = self.login_max_failures {
            c.login_max_failures = v.max(1);
        }
        if let Some(v) = self.login_window_secs {
            c.login_window = secs(v.max(1));
        }
        if let Some(v) = self.ws_allowed_origins {
            c.ws_allowed_origins = v;
        }
        if let Some(v) = self.ws_heartbeat_secs {
            c.ws_heartbeat = secs(v.max(1));
        }
        if let Some(v) = self.ws_client_timeout_secs {
            c.ws_client_timeout = secs(v.max(2));
        }
        if let Some(v) = self.ws_outbound_queue {
            c.ws_outbound_queue = v.max(1);
        }
        if let Some(v) = self.ws_inbound_per_sec {
            c.ws_inbound_per_sec = v.max(1);
        }
        if let Some(v) = self.db_pool_size {
            c.db_pool_size = v.max(1);
        }
        if let Some(v) = self.db_timeout_secs {
            c.db_timeout = secs(v.max(1));
        }
        c.workers = self.workers;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_start_without_secret_outside_dev() {
        let err = FileConfig::default()
            .into_config(Some("postgres://x".into()), None, None, None, false)
            .unwrap_err();
        assert!(err.to_string().contains("PROPASS_JWT_SECRET"), "{err}");
        let dev = FileConfig::default()
            .into_config(Some("postgres://x".into()), None, None, None, true)
            .unwrap();
        assert!(dev.dev_mode);
    }

    #[test]
    fn layers_file_env_flags() {
        let mut file: FileConfig = toml::from_str(
            "database_url = 'postgres://file'\nbind = '0.0.0.0:1'\nmax_batch_items = 10\njwt_secret = 'ffffffffffffffffffffffffffffffffffff'",
        )
        .unwrap();
        file.apply_env(|k| (k == "PROPASS_MAX_BATCH_ITEMS").then(|| "20".to_string()))
            .unwrap();
        let c = file
            .into_config(
                None,
                Some("127.0.0.1:9".parse().unwrap()),
                None,
                None,
                false,
            )
            .unwrap();
        assert_eq!(c.database_url, "postgres://file");
        assert_eq!(c.bind.port(), 9);
        assert_eq!(c.max_batch_items, 20);
        assert_eq!(format!("{:?}", c.jwt_secret), "Secret(***)");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("bnid = '1.2.3.4:5'").is_err());
    }
}
