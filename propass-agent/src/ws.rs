//! The WebSocket client: authenticated with the Authorization header, pings
//! on a timer, applies `quota_updated` to the local cache at once, forwards
//! server events to local listeners, and reconnects forever with backoff.
//! Opening it also tells the sync loop the server is back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use propass_protocol::{WsMessage, ACCEPT_SYNC_REQUESTED};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::agent::Agent;
use crate::backoff::Backoff;
use crate::events::AgentEvent;
use crate::store::StoreError;
use crate::sync::wire;

/// A session that lasted this long worked: its end starts the backoff anew.
const WORKED: Duration = Duration::from_secs(10);

/// Runs until shutdown.
pub async fn run_ws_loop(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), agent.config.reconnect_max());
    loop {
        let began = agent.clock.now_instant();
        let wait = match ws_target(&agent).await {
            Ok(Some((url, token))) => match session(&agent, &url, &token, &mut shutdown).await {
                Ok(()) => {
                    backoff.reset();
                    Duration::from_millis(100)
                }
                Err(e) => {
                    tracing::debug!(error = %e.message, "websocket unavailable");
                    let worked = agent.clock.now_instant().duration_since(began) >= WORKED;
                    if agent.link().ws_connected && worked {
                        // A session that worked dropped: reconnect as soon
                        // as a server answers, not after the last outage's
                        // delay (one closed at once keeps backing off).
                        backoff.reset();
                    }
                    let delay = backoff.next_delay(&*agent.rng);
                    e.retry_after.map_or(delay, |asked| asked.max(delay))
                }
            },
            Ok(None) => Duration::from_secs(3600),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the token");
                Duration::from_secs(5)
            }
        };
        agent.set_ws_connected(false);
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = agent.ws_kick.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The WebSocket URL and token, when logged in and not refused.
async fn ws_target(agent: &Agent) -> Result<Option<(String, String)>, StoreError> {
    let (Some(server), Some(session)) = (agent.server_url().await?, agent.store.session().await?)
    else {
        return Ok(None);
    };
    if agent.link().login_required.is_some() {
        return Ok(None);
    }
    // The token goes in the upgrade: not over plain ws:// across the network.
    if crate::upstream::check_server_url(&server, agent.config.allow_insecure_http).is_err() {
        return Ok(None);
    }
    Ok(Some((ws_url(&server), session.token)))
}

fn ws_url(server: &str) -> String {
    let base = crate::upstream::normalize_server_url(server)
        .unwrap_or_else(|_| server.trim_end_matches('/').to_owned());
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/ws")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a WebSocket session ended or never began.
struct Ended {
    message: String,
    /// The server's `Retry-After` when it refused the upgrade (a full
    /// server, a device over its socket cap): wait at least that long.
    retry_after: Option<Duration>,
}

impl From<String> for Ended {
    fn from(message: String) -> Self {
        Self {
            message,
            retry_after: None,
        }
    }
}

impl From<&str> for Ended {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// Opens the WebSocket with the token in the Authorization header.
async fn connect(agent: &Agent, url: &str, token: &str) -> Result<Socket, Ended> {
    // `accept`: the server may ask this kiosk to pull now (see `on_message`).
    let mut req = format!(
        "{url}?device_id={}&accept={ACCEPT_SYNC_REQUESTED}",
        agent.device_id
    )
    .into_client_request()
    .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "token is not a valid header".to_string())?,
    );
    // The same TLS as the HTTPS client: system store plus server_ca_file.
    let connector = tokio_tungstenite::Connector::Rustls(agent.tls.clone());
    // A frame or message is bounded like an HTTP answer (max_answer_bytes).
    let limit = Some(agent.config.max_answer_bytes);
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(limit)
        .max_frame_size(limit);
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        req,
        Some(ws_config),
        false,
        Some(connector),
    );
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        // The upgrade answer has no error body: its status is all there is.
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res)))
            if matches!(res.status().as_u16(), 401 | 403) =>
        {
            // The token is refused: let the sync loop refresh it or ask for a login.
            agent.kick.notify_one();
            Err(format!("websocket refused ({})", res.status()).into())
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => {
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.clamp(1, 3600)));
            Err(Ended {
                message: format!("websocket refused ({})", res.status()),
                retry_after,
            })
        }
        Ok(Err(e)) => Err(e.to_string().into()),
        Err(_) => Err("websocket connect timed out".into()),
    }
}

/// One connection, until it fails or the agent stops: server messages in,
/// a heartbeat out; three silent heartbeats end it.
async fn session(
    agent: &Agent,
    url: &str,
    token: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), Ended> {
    let mut ws = connect(agent, url, token).await?;
    tracing::info!("websocket connected");
    agent.set_ws_connected(true);
    agent.kick.notify_one();
    let mut ping = tokio::time::interval(agent.config.ws_ping());
    ping.tick().await;
    // The first tick is now: the server learns how the kiosk is at once.
    let mut heartbeat = tokio::time::interval(agent.config.heartbeat());
    let mut silent_ticks = 0u32;
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { return Err("websocket closed".into()) };
                silent_ticks = 0;
                match msg {
                    Message::Text(text) => on_message(agent, &text).await,
                    Message::Close(_) => return Err("server closed the websocket".into()),
                    _ => {}
                }
            }
            _ = ping.tick() => {
                silent_ticks += 1;
                if silent_ticks > 2 {
                    return Err("no answer to heartbeat".into());
                }
                let ping = serde_json::to_string(&WsMessage::Ping).unwrap_or_default();
                ws.send(Message::Text(ping.into())).await.map_err(|e| e.to_string())?;
            }
            _ = heartbeat.tick() => send_heartbeat(agent, &mut ws).await?,
            // A sync error or the storage came or went: operators see it now.
            _ = agent.health_changed.notified() => send_heartbeat(agent, &mut ws).await?,
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
        }
    }
}

async fn send_heartbeat(agent: &Agent, ws: &mut Socket) -> Result<(), String> {
    match crate::heartbeat::heartbeat(agent).await {
        Ok(hb) => {
            let text = serde_json::to_string(&WsMessage::Heartbeat(hb)).unwrap_or_default();
            ws.send(Message::Text(text.into()))
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the kiosk's state for its heartbeat");
            Ok(())
        }
    }
}

/// A server message: quota updates go to the cache at once, events to listeners.
pub(crate) async fn on_message(agent: &Agent, text: &str) {
    match serde_json::from_str::<WsMessage>(text) {
        Ok(WsMessage::QuotaUpdated(q)) => {
            let q = wire::updated_quota(q);
            match agent
                .store
                .apply_quota_update(q, agent.clock.now_utc())
                .await
            {
                Ok(local) => agent.emit(AgentEvent::QuotaUpdated {
                    client_id: local.client_id,
                    remaining: local.remaining,
                }),
                // A client this kiosk was just given: a pull tells the rest.
                Err(crate::store::StoreError::UnknownClient(c)) => {
                    tracing::info!(
                        client = c.get(),
                        "quota update for a client not known here: pulling"
                    );
                    agent.kick.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "cannot apply quota update"),
            }
        }
        // Only this kiosk's own: the server scopes them, and the local
        // event stream never carries another kiosk's badges whatever a
        // server sends.
        Ok(WsMessage::SyncCompleted(s)) if s.device_id == agent.device_id => {
            agent.emit(AgentEvent::SyncCompleted(s));
        }
        Ok(WsMessage::CopyCompleted(c)) if c.device_id == agent.device_id => {
            agent.emit(AgentEvent::CopyCompleted(c));
        }
        Ok(WsMessage::SyncCompleted(_) | WsMessage::CopyCompleted(_)) => {
            tracing::warn!("the server sent another kiosk's event: dropped");
        }
        // The kiosk's clients or leases changed on the server.
        Ok(WsMessage::SyncRequested) => agent.kick.notify_one(),
        Ok(WsMessage::Pong | WsMessage::Ping | WsMessage::Heartbeat(_)) => {}
        Err(e) => tracing::debug!(error = %e, "ignoring unknown server message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local event stream carries this kiosk's copies only, whatever a
    /// server sends.
    #[tokio::test]
    async fn another_kiosks_copy_never_reaches_the_local_events() {
        let agent = crate::sync::tests::agent_with(
            0,
            Arc::new(crate::sync::tests::ScriptedServer::default()),
        )
        .await;
        let mut events = agent.events.subscribe();
        let copy = |device: &str| {
            serde_json::json!({"type": "copy_completed", "data": {
                "ledger_id": 7, "client_id": 1, "uid": "04AB12CD", "type": "copy",
                "device_id": device, "id": 1, "occurred_at": "2026-12-06T10:00:00Z",
                "overdraft": false}})
            .to_string()
        };
        on_message(&agent, &copy("KIOSK-9_OTHER")).await;
        on_message(&agent, &copy(agent.device_id.as_str())).await;
        match events.try_recv() {
            Ok(crate::events::AgentEvent::CopyCompleted(c)) => {
                assert_eq!(c.device_id, agent.device_id);
            }
            other => panic!("{other:?}"),
        }
        assert!(events.try_recv().is_err(), "nothing else");
    }

    #[test]
    fn websocket_url_of_the_server() {
        assert_eq!(ws_url("http://h:5000/"), "ws://h:5000/ws");
        assert_eq!(ws_url("https://h"), "wss://h/ws");
    }
}
