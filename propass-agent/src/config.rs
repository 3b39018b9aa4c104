//! Agent configuration: `/etc/propass/agent.toml` (or `--config`), then
//! `PROPASS_*` environment variables, then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/propass/agent.toml";
/// Default state directory (systemd `StateDirectory=propass`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/propass";
/// Default local API socket (systemd `RuntimeDirectory=propass`).
pub const DEFAULT_SOCKET: &str = "/run/propass/agent.sock";

/// Everything the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The server, e.g. `http://propass.example:5000`. `login --server` overrides it and is remembered.
    pub server_url: Option<String>,
    /// Where the database lives (`agent.db`).
    pub state_dir: PathBuf,
    /// The local API's Unix socket.
    pub socket: PathBuf,
    /// Also serve the local API on this TCP address (must be loopback).
    pub http_bind: Option<SocketAddr>,
    /// Items per push. Default 500.
    pub batch_size: usize,
    /// Safety-net sync period. Default 30 s.
    pub sync_interval: Duration,
    /// Refresh the token when less than this is left. Default 24 h (as the seed client).
    pub refresh_margin: Duration,
    /// Longest wait between reconnection attempts (full jitter below it). Default 2 s.
    pub reconnect_max: Duration,
    /// WebSocket heartbeat. Default 20 s.
    pub ws_ping: Duration,
    /// The NFC reader's libnfc connection string (e.g. `pn532_uart:/dev/ttyUSB0`); default: the first reader found.
    pub reader: Option<String>,
    /// How long the kiosk waits for a card to be placed. Default 30 s.
    pub card_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server_url: None,
            state_dir: DEFAULT_STATE_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            http_bind: None,
            batch_size: 500,
            sync_interval: Duration::from_secs(30),
            refresh_margin: Duration::from_secs(86_400),
            reconnect_max: Duration::from_millis(2000),
            ws_ping: Duration::from_secs(20),
            reader: None,
            card_timeout: Duration::from_secs(30),
        }
    }
}

/// The file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`AgentConfig::server_url`].
    pub server_url: Option<String>,
    /// See [`AgentConfig::state_dir`].
    pub state_dir: Option<PathBuf>,
    /// See [`AgentConfig::socket`].
    pub socket: Option<PathBuf>,
    /// See [`AgentConfig::http_bind`].
    pub http_bind: Option<SocketAddr>,
    /// See [`AgentConfig::batch_size`].
    pub batch_size: Option<usize>,
    /// See [`AgentConfig::sync_interval`].
    pub sync_interval_secs: Option<u64>,
    /// See [`AgentConfig::refresh_margin`].
    pub refresh_margin_secs: Option<u64>,
    /// See [`AgentConfig::reconnect_max`].
    pub reconnect_max_ms: Option<u64>,
    /// See [`AgentConfig::ws_ping`].
    pub ws_ping_secs: Option<u64>,
    /// See [`AgentConfig::reader`].
    pub reader: Option<String>,
    /// See [`AgentConfig::card_timeout`].
    pub card_timeout_secs: Option<u64>,
}

impl AgentConfig {
    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("agent.db")
    }

    /// Loads file → environment; `socket` and `state_dir` flags are applied by the caller.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let f: FileConfig = match file {
            Some(p) => read(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        let num = |name: &str| -> Result<Option<u64>, String> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{name}={v:?} is not a number"))
                })
                .transpose()
        };
        let http_bind = match env("PROPASS_AGENT_HTTP") {
            Some(v) if !v.is_empty() => Some(
                v.parse()
                    .map_err(|_| format!("PROPASS_AGENT_HTTP={v:?} is not an address"))?,
            ),
            _ => f.http_bind,
        };
        if let Some(a) = http_bind {
            if !a.ip().is_loopback() {
                return Err(format!(
                    "http_bind {a} must be a loopback address: the local API has no authentication"
                ));
            }
        }
        Ok(Self {
            server_url: env("PROPASS_SERVER_URL").or(f.server_url),
            state_dir: env("PROPASS_STATE_DIR")
                .map(PathBuf::from)
                .or(f.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            socket: env("PROPASS_AGENT_SOCKET")
                .map(PathBuf::from)
                .or(f.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            http_bind,
            batch_size: num("PROPASS_BATCH_SIZE")?
                .map(|n| n as usize)
                .or(f.batch_size)
                .unwrap_or(500)
                .clamp(1, 5000),
            sync_interval: Duration::from_secs(
                num("PROPASS_SYNC_INTERVAL_SECS")?
                    .or(f.sync_interval_secs)
                    .unwrap_or(30)
                    .max(1),
            ),
            refresh_margin: Duration::from_secs(
                num("PROPASS_REFRESH_MARGIN_SECS")?
                    .or(f.refresh_margin_secs)
                    .unwrap_or(86_400),
            ),
            reconnect_max: Duration::from_millis(
                num("PROPASS_RECONNECT_MAX_MS")?
                    .or(f.reconnect_max_ms)
                    .unwrap_or(2000)
                    .max(50),
            ),
            ws_ping: Duration::from_secs(
                num("PROPASS_WS_PING_SECS")?
                    .or(f.ws_ping_secs)
                    .unwrap_or(20)
                    .max(1),
            ),
            reader: env("PROPASS_READER").filter(|s| !s.is_empty()).or(f.reader),
            card_timeout: Duration::from_secs(
                num("PROPASS_CARD_TIMEOUT_SECS")?
                    .or(f.card_timeout_secs)
                    .unwrap_or(30)
                    .clamp(1, 600),
            ),
        })
    }
}

fn read(p: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_http_must_be_loopback() {
        let c =
            AgentConfig::load(None, |k| (k == "PROPASS_BATCH_SIZE").then(|| "7".into())).unwrap();
        assert_eq!(c.batch_size, 7);
        let err = AgentConfig::load(None, |k| {
            (k == "PROPASS_AGENT_HTTP").then(|| "0.0.0.0:7070".into())
        })
        .unwrap_err();
        assert!(err.contains("loopback"));
    }
}
