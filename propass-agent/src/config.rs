//! Agent configuration: one typed [`AgentConfig`], read in layers —
//! `/etc/propass/agent.toml` (or `--config`), then `PROPASS_*` environment
//! variables, then flags. Every key is declared once below, with its
//! environment variable, default and meaning; [`markdown_table`] renders
//! them for docs/agent-api.md (a test keeps the doc current).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use propass_nfc::mifare::{parse_key, Key};
use serde::Deserialize;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/propass/agent.toml";
/// Default state directory (systemd `StateDirectory=propass`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/propass";
/// Default local API socket (systemd `RuntimeDirectory=propass`).
pub const DEFAULT_SOCKET: &str = "/run/propass/agent.sock";

/// One documented key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    pub key: &'static str,
    pub env: &'static str,
    /// As shown in the table (markdown).
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Declares every key once: the field of [`AgentConfig`], its layer field,
/// its environment variable, its default and its documentation.
macro_rules! agent_config {
    ($($key:ident: $ty:ty = $default:expr, $env:literal, $shown:literal, $meaning:literal;)*) => {
        /// Everything the agent needs; see [`KEYS`].
        #[derive(Debug, Clone, PartialEq)]
        pub struct AgentConfig {
            $(#[doc = $meaning] pub $key: $ty,)*
        }

        /// One layer of configuration: a key it does not set is `None`.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct ConfigLayer {
            $(#[doc = $meaning] pub $key: Option<$ty>,)*
        }

        /// Every key, in the order of the docs.
        pub const KEYS: &[KeyDoc] = &[
            $(KeyDoc { key: stringify!($key), env: $env, default: $shown, meaning: $meaning },)*
        ];

        impl Default for AgentConfig {
            fn default() -> Self {
                Self { $($key: $default,)* }
            }
        }

        impl ConfigLayer {
            /// The layer of the environment variables.
            pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
                Ok(Self {
                    $($key: match env($env).filter(|v| !v.is_empty()) {
                        Some(v) => Some(EnvValue::parse_env($env, &v)?),
                        None => None,
                    },)*
                })
            }

            /// `self` where it sets a key, else `under`.
            pub fn over(self, under: Self) -> Self {
                Self { $($key: self.$key.or(under.$key),)* }
            }

            fn or_defaults(self) -> AgentConfig {
                let d = AgentConfig::default();
                AgentConfig { $($key: self.$key.unwrap_or(d.$key),)* }
            }
        }
    };
}

agent_config! {
    server_url: Option<String> = None, "PROPASS_SERVER_URL", "—",
        "the server (a login's `--server` wins and is remembered)";
    state_dir: PathBuf = DEFAULT_STATE_DIR.into(), "PROPASS_STATE_DIR", "`/var/lib/propass`",
        "holds `agent.db`";
    socket: PathBuf = DEFAULT_SOCKET.into(), "PROPASS_AGENT_SOCKET", "`/run/propass/agent.sock`",
        "local API socket";
    http_bind: Option<SocketAddr> = None, "PROPASS_AGENT_HTTP", "—",
        "optional loopback TCP address for the API";
    batch_size: usize = 500, "PROPASS_BATCH_SIZE", "500",
        "items per push (1 to 5000)";
    sync_interval_secs: u64 = 30, "PROPASS_SYNC_INTERVAL_SECS", "30",
        "safety-net sync period while the WebSocket is down";
    sync_interval_live_secs: u64 = 60, "PROPASS_SYNC_INTERVAL_LIVE_SECS", "60",
        "safety-net sync period while the WebSocket is up: quotas come as events, new work syncs at once, and the server asks for a pull when this kiosk's clients or lease change; a client's copy policy reaches it within this period";
    full_pull_interval_secs: u64 = 3600, "PROPASS_FULL_PULL_INTERVAL_SECS", "3600",
        "a pull asks only for what changed since the last one (`since_version`), except once per this period, when it reads every quota again";
    refresh_margin_secs: u64 = 86_400, "PROPASS_REFRESH_MARGIN_SECS", "86400",
        "refresh the token when less is left";
    reconnect_max_ms: u64 = 30_000, "PROPASS_RECONNECT_MAX_MS", "30000",
        "longest wait between reconnection attempts, WebSocket and sync (full jitter below it): after an outage a fleet of thousands comes back spread over this window instead of all at once; 30000 to 60000 for a big fleet";
    ws_ping_secs: u64 = 20, "PROPASS_WS_PING_SECS", "20",
        "WebSocket heartbeat";
    reader: Option<String> = None, "PROPASS_READER", "first reader",
        "libnfc connection string, e.g. `pn532_uart:/dev/ttyUSB0`";
    card_timeout_secs: u64 = 30, "PROPASS_CARD_TIMEOUT_SECS", "30",
        "how long to wait for a card at the reader (1 to 600)";
    heartbeat_secs: u64 = 30, "PROPASS_HEARTBEAT_SECS", "30",
        "how often the agent tells the server how it is doing (over the WebSocket; with each sync while the socket is down); 5 to 3600";
    stop_grace_secs: u64 = 10, "PROPASS_STOP_GRACE_SECS", "10",
        "on SIGTERM, how long a card already being written may take to finish and be recorded (a flow still waiting for a card is cancelled at once); the rest of the stop takes up to 15 s more (answers, giving the lease back, the last database writes), so keep the sum below the unit's `TimeoutStopSec` (30 s)";
    server_ca_file: Option<PathBuf> = None, "PROPASS_SERVER_CA_FILE", "—",
        "PEM file of the CA that signed the server's certificate, trusted besides the system's (a private PKI)";
    allow_insecure_http: bool = false, "PROPASS_ALLOW_INSECURE_HTTP", "false",
        "allow an `http://` server that is not on this machine (passwords and tokens then cross the network in clear)";
    max_answer_bytes: usize = 16 * 1024 * 1024, "PROPASS_MAX_ANSWER_BYTES", "16777216",
        "largest answer read from the server; a longer one is refused";
    api_max_body_bytes: usize = 64 * 1024, "PROPASS_API_MAX_BODY_BYTES", "65536",
        "largest request body the local API reads (at least 1024); a larger one is answered 413 `payload_too_large`";
    socket_group: Option<String> = None, "PROPASS_SOCKET_GROUP", "—",
        "group (name or number) given read/write access to the local API socket, for a kiosk screen running as another user";
    reader_keys: ReaderKeys = ReaderKeys::default(), "PROPASS_READER_KEYS", "none",
        "MIFARE keys tried on a badge's sectors before the well-known ones: 12 hex digits each (a list in the file, comma-separated in the environment); never logged or shown";
    client_reader_keys: ClientReaderKeys = ClientReaderKeys::default(), "PROPASS_CLIENT_READER_KEYS", "none",
        "MIFARE keys of one client's badges, tried before `reader_keys` when copying for that client: a table of client id to keys in the file (`client_reader_keys = { 3 = [\"A0B1C2D3E4F5\"] }`), `3=KEY,KEY;7=KEY` in the environment; never logged or shown. The keys operators give the server for a client (`client keys`) come with each pull and are tried after these";
}

/// The operator's MIFARE keys (see `reader_keys`). Never printed.
#[derive(Clone, Default, PartialEq)]
pub struct ReaderKeys(pub Vec<Key>);

impl std::fmt::Debug for ReaderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReaderKeys({} keys)", self.0.len())
    }
}

impl ReaderKeys {
    fn parse_list<'a>(items: impl Iterator<Item = &'a str>) -> Result<Self, String> {
        items
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| parse_key(k).map_err(|e| format!("reader_keys: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl<'de> Deserialize<'de> for ReaderKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        Self::parse_list(list.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

impl EnvValue for ReaderKeys {
    fn parse_env(name: &str, v: &str) -> Result<Self, String> {
        Self::parse_list(v.split(',')).map_err(|e| format!("{name}: {e}"))
    }
}

/// Keys per client (see `client_reader_keys`). Never printed.
#[derive(Clone, Default, PartialEq)]
pub struct ClientReaderKeys(pub std::collections::BTreeMap<i64, Vec<Key>>);

impl std::fmt::Debug for ClientReaderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientReaderKeys({} clients)", self.0.len())
    }
}

impl ClientReaderKeys {
    /// The keys of `client`'s badges (none when it has none of its own).
    pub fn of(&self, client: i64) -> &[Key] {
        self.0.get(&client).map_or(&[], Vec::as_slice)
    }

    fn insert(&mut self, client: &str, keys: ReaderKeys) -> Result<(), String> {
        let id: i64 = client
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("client_reader_keys: {client:?} is not a client id"))?;
        self.0.insert(id, keys.0);
        Ok(())
    }
}

impl<'de> Deserialize<'de> for ClientReaderKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = std::collections::BTreeMap::<String, Vec<String>>::deserialize(d)?;
        let mut out = Self::default();
        for (client, keys) in table {
            let keys = ReaderKeys::parse_list(keys.iter().map(String::as_str))
                .map_err(serde::de::Error::custom)?;
            out.insert(&client, keys)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

impl EnvValue for ClientReaderKeys {
    fn parse_env(name: &str, v: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for entry in v.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (client, keys) = entry
                .split_once('=')
                .ok_or_else(|| format!("{name}: {entry:?} is not CLIENT=KEY,KEY"))?;
            let keys =
                ReaderKeys::parse_list(keys.split(',')).map_err(|e| format!("{name}: {e}"))?;
            out.insert(client, keys)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(out)
    }
}

/// A value given in an environment variable.
trait EnvValue: Sized {
    fn parse_env(name: &str, v: &str) -> Result<Self, String>;
}

macro_rules! env_value {
    ($($ty:ty => $what:literal),*) => {$(
        impl EnvValue for $ty {
            fn parse_env(name: &str, v: &str) -> Result<Self, String> {
                v.trim().parse().map_err(|_| format!("{name}={v:?} is not {}", $what))
            }
        }
    )*};
}

env_value!(u64 => "a number", usize => "a number", SocketAddr => "an address");

impl EnvValue for bool {
    fn parse_env(name: &str, v: &str) -> Result<Self, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!("{name}={v:?} is not true or false")),
        }
    }
}

impl EnvValue for String {
    fn parse_env(_: &str, v: &str) -> Result<Self, String> {
        Ok(v.to_owned())
    }
}

impl EnvValue for PathBuf {
    fn parse_env(_: &str, v: &str) -> Result<Self, String> {
        Ok(v.into())
    }
}

impl<T: EnvValue> EnvValue for Option<T> {
    fn parse_env(name: &str, v: &str) -> Result<Self, String> {
        T::parse_env(name, v).map(Some)
    }
}

impl AgentConfig {
    /// File (`file`, else the default one if it exists) → environment →
    /// `flags`, then bounds and checks.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: ConfigLayer,
    ) -> Result<Self, String> {
        let file_layer = match file {
            Some(p) => read(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read(Path::new(DEFAULT_CONFIG))?,
            None => ConfigLayer::default(),
        };
        let layers = flags.over(ConfigLayer::from_env(env)?).over(file_layer);
        layers.or_defaults().checked()
    }

    /// Values out of their bounds are brought in; a non-loopback API address
    /// is refused.
    fn checked(mut self) -> Result<Self, String> {
        if let Some(a) = self.http_bind {
            if !a.ip().is_loopback() {
                return Err(format!(
                    "http_bind {a} must be a loopback address: the local API has no authentication"
                ));
            }
        }
        // One spelling of the address (the check at use refuses a bad one;
        // `server_url_problem` says why at start).
        if let Some(url) = &self.server_url {
            if let Ok(normal) = crate::upstream::normalize_server_url(url) {
                self.server_url = Some(normal);
            }
        }
        self.batch_size = self.batch_size.clamp(1, 5000);
        self.sync_interval_secs = self.sync_interval_secs.max(1);
        self.sync_interval_live_secs = self.sync_interval_live_secs.max(1);
        self.reconnect_max_ms = self.reconnect_max_ms.max(50);
        self.ws_ping_secs = self.ws_ping_secs.max(1);
        self.card_timeout_secs = self.card_timeout_secs.clamp(1, 600);
        self.heartbeat_secs = self.heartbeat_secs.clamp(5, 3600);
        self.api_max_body_bytes = self.api_max_body_bytes.max(1024);
        Ok(self)
    }

    /// Why the agent will not talk to the configured `server_url`, if it
    /// will not. Not a reason to refuse the configuration: the CLI's offline
    /// commands (`status`, `export-unsynced`) must work whatever it says, and
    /// a kiosk keeps the server it logged in to over this one.
    pub fn server_url_problem(&self) -> Option<String> {
        let url = self.server_url.as_deref()?;
        crate::upstream::check_server_url(url, self.allow_insecure_http)
            .err()
            .map(|why| format!("server_url: {why}"))
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("agent.db")
    }

    pub fn sync_interval(&self) -> Duration {
        Duration::from_secs(self.sync_interval_secs)
    }

    pub fn sync_interval_live(&self) -> Duration {
        Duration::from_secs(self.sync_interval_live_secs)
    }

    pub fn full_pull_interval(&self) -> Duration {
        Duration::from_secs(self.full_pull_interval_secs)
    }

    pub fn refresh_margin(&self) -> Duration {
        Duration::from_secs(self.refresh_margin_secs)
    }

    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    pub fn ws_ping(&self) -> Duration {
        Duration::from_secs(self.ws_ping_secs)
    }

    pub fn card_timeout(&self) -> Duration {
        Duration::from_secs(self.card_timeout_secs)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs)
    }
}

fn read(p: &Path) -> Result<ConfigLayer, String> {
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", p.display()))
}

/// The table of keys in docs/agent-api.md.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | environment | default | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            k.key, k.env, k.default, k.meaning
        ));
    }
    out
}

/// The sample configuration file (`deploy/agent.toml`, the package's
/// `/etc/propass/agent.toml`): every key, commented out at its default,
/// with its meaning and environment variable.
pub fn sample_toml() -> String {
    let mut out = String::from(
        "# PROPASS kiosk agent configuration. Generated from the agent's own list of\n\
         # keys (propass-agent/src/config.rs; docs/agent-api.md has the same table):\n\
         # every key at its default, commented out. Set server_url, then start the\n\
         # service and enroll the kiosk. An environment variable wins over this file.\n",
    );
    for k in KEYS {
        out.push('\n');
        out.push_str(&format!(
            "# {}\n# Environment: {}\n",
            k.meaning.replace('`', ""),
            k.env
        ));
        let shown = k.default.trim_matches('`');
        match shown {
            "—" | "none" => out.push_str(&format!("# (not set by default)\n#{} =\n", k.key)),
            "first reader" => out.push_str(&format!(
                "# (not set by default: the first reader libnfc finds)\n#{} =\n",
                k.key
            )),
            v if v.parse::<f64>().is_ok() || v == "true" || v == "false" => {
                out.push_str(&format!("#{} = {v}\n", k.key));
            }
            v => out.push_str(&format!("#{} = \"{v}\"\n", k.key)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_overrides_and_http_must_be_loopback() {
        let c = AgentConfig::load(
            None,
            env_of(&[("PROPASS_BATCH_SIZE", "7")]),
            ConfigLayer::default(),
        )
        .unwrap();
        assert_eq!(c.batch_size, 7);
        let err = AgentConfig::load(
            None,
            env_of(&[("PROPASS_AGENT_HTTP", "0.0.0.0:7070")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert!(err.contains("loopback"));
        let err = AgentConfig::load(
            None,
            env_of(&[("PROPASS_WS_PING_SECS", "often")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert_eq!(err, "PROPASS_WS_PING_SECS=\"often\" is not a number");
    }

    #[test]
    fn a_server_url_the_agent_would_not_talk_to_is_named_at_start() {
        let load = |vars: &'static [(&'static str, &'static str)]| {
            AgentConfig::load(None, env_of(vars), ConfigLayer::default()).unwrap()
        };
        let c = load(&[("PROPASS_SERVER_URL", "http://192.0.2.10:5000")]);
        let why = c.server_url_problem().expect("refused");
        assert!(
            why.starts_with("server_url: refusing plain http://"),
            "{why}"
        );
        let c = load(&[("PROPASS_SERVER_URL", "https://me@propass.example")]);
        assert!(c
            .server_url_problem()
            .is_some_and(|w| w.contains("user name")));
        let c = load(&[
            ("PROPASS_SERVER_URL", "HTTP://192.0.2.10:5000/"),
            ("PROPASS_ALLOW_INSECURE_HTTP", "true"),
        ]);
        assert_eq!(c.server_url_problem(), None);
        assert_eq!(c.server_url.as_deref(), Some("http://192.0.2.10:5000"));
    }

    #[test]
    fn client_reader_keys_parse_from_file_and_environment_and_never_print() {
        let layer: ConfigLayer =
            toml::from_str("client_reader_keys = { 3 = [\"A0B1C2D3E4F5\"], 7 = [\"112233445566\", \"FFFFFFFFFFFF\"] }")
                .unwrap();
        let c = layer.or_defaults();
        assert_eq!(
            c.client_reader_keys.of(3),
            [[0xA0, 0xB1, 0xC2, 0xD3, 0xE4, 0xF5]]
        );
        assert_eq!(c.client_reader_keys.of(7).len(), 2);
        assert!(c.client_reader_keys.of(4).is_empty());
        assert!(!format!("{c:?}").contains("A0B1"), "keys are never printed");
        let env = ClientReaderKeys::parse_env(
            "PROPASS_CLIENT_READER_KEYS",
            "3=A0B1C2D3E4F5,112233445566; 9=FFFFFFFFFFFF",
        )
        .unwrap();
        assert_eq!(env.of(3).len(), 2);
        assert_eq!(env.of(9).len(), 1);
        for bad in ["3", "x=A0B1C2D3E4F5", "0=A0B1C2D3E4F5", "3=A0B1"] {
            assert!(
                ClientReaderKeys::parse_env("PROPASS_CLIENT_READER_KEYS", bad).is_err(),
                "{bad}"
            );
        }
        assert!(
            toml::from_str::<ConfigLayer>("client_reader_keys = { -1 = [\"A0B1C2D3E4F5\"] }")
                .is_err()
        );
    }

    #[test]
    fn reader_keys_parse_from_file_and_environment_and_never_print() {
        let c = AgentConfig::load(
            None,
            env_of(&[("PROPASS_READER_KEYS", "A0A1A2A3A4A5, 112233445566")]),
            ConfigLayer::default(),
        )
        .unwrap();
        assert_eq!(c.reader_keys.0.len(), 2);
        assert_eq!(c.reader_keys.0[1], [0x11, 0x22, 0x33, 0x44, 0x55, 0x66]);
        assert!(
            !format!("{c:?}").contains("112233"),
            "keys never show in Debug"
        );
        let err = AgentConfig::load(
            None,
            env_of(&[("PROPASS_READER_KEYS", "A0A1A2")]),
            ConfigLayer::default(),
        )
        .unwrap_err();
        assert!(
            err.contains("PROPASS_READER_KEYS") && err.contains("12 hex digits"),
            "{err}"
        );
        let dir = crate::store::tests::temp("keys.toml");
        std::fs::write(&dir, "reader_keys = [\"D3F7D3F7D3F7\"]\n").unwrap();
        let c = AgentConfig::load(Some(&dir), env_of(&[]), ConfigLayer::default()).unwrap();
        assert_eq!(c.reader_keys.0, [[0xD3, 0xF7, 0xD3, 0xF7, 0xD3, 0xF7]]);
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = crate::store::tests::temp("agent.toml");
        std::fs::write(
            &dir,
            "batch_size = 10\nreader = \"file\"\nsync_interval_secs = 5\n",
        )
        .unwrap();
        let flags = ConfigLayer {
            reader: Some(Some("flag".into())),
            ..ConfigLayer::default()
        };
        let env = env_of(&[("PROPASS_BATCH_SIZE", "20"), ("PROPASS_READER", "env")]);
        let c = AgentConfig::load(Some(&dir), env, flags).unwrap();
        assert_eq!(c.sync_interval_secs, 5, "file");
        assert_eq!(c.batch_size, 20, "environment over file");
        assert_eq!(c.reader.as_deref(), Some("flag"), "flag over environment");
        assert_eq!(c.card_timeout_secs, 30, "default");
    }

    /// Regenerate with `PROPASS_BLESS=1 cargo test -p propass-agent --lib config`.
    #[test]
    fn the_docs_list_the_current_keys() {
        propass_test_support::assert_generated(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent-api.md")),
            Some(("<!-- config-table:begin -->\n", "<!-- config-table:end -->")),
            &markdown_table(),
            "PROPASS_BLESS=1 cargo test -p propass-agent --lib config",
        );
    }

    /// The package's conffile is this generated file, and uncommented it
    /// gives the defaults.
    #[test]
    fn the_sample_config_file_is_generated_and_parses_to_the_defaults() {
        let sample = sample_toml();
        propass_test_support::assert_generated(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.toml")),
            None,
            &sample,
            "PROPASS_BLESS=1 cargo test -p propass-agent --lib config",
        );
        let uncommented = propass_test_support::uncommented_assignments(&sample);
        let layer: ConfigLayer = toml::from_str(&uncommented).expect("the sample parses");
        assert_eq!(layer.or_defaults(), AgentConfig::default());
    }
}
