//! The agent's typed client of the PROPASS server: login, refresh, push,
//! pull. A refusal carries the wire [`ErrorCode`], so the sync code decides
//! on codes and never on HTTP numbers. [`ServerClient`] is the seam; the
//! reqwest implementation is [`HttpServerClient`].

use std::time::Duration;

use futures_util::future::BoxFuture;
use propass_protocol::{
    DeviceTokenRequest, DeviceTokenResponse, EnrollRequest, ErrorBody, ErrorCode, KioskHeartbeat,
    LeaseEntry, LeaseReleaseResponse, LoginRequest, LoginResponse, PullResponse, PushRequest,
    PushResponse, RefreshResponse,
};
use serde::de::DeserializeOwned;

/// Why a call to the server did not give an answer we can use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The request did not get through, or no answer came back.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered with an error.
    #[error("{message}")]
    Refused {
        /// The wire code (derived from the status when the body has none).
        code: ErrorCode,
        /// Kept for messages only.
        status: u16,
        /// The server's sentence, or the status line.
        message: String,
        /// The `Retry-After` seconds of a 429 or 503.
        retry_after: Option<u64>,
    },
    /// A success status whose body does not parse.
    #[error("{0}")]
    Unreadable(String),
}

/// Result of a call to the server.
pub type UpstreamResult<T> = Result<T, UpstreamError>;

/// The server's API as the agent uses it. `server` is the base URL
/// (`http://host:port`, no trailing slash).
pub trait ServerClient: Send + Sync {
    /// `POST /api/auth/login`.
    fn login<'a>(
        &'a self,
        server: &'a str,
        body: &'a LoginRequest,
    ) -> BoxFuture<'a, UpstreamResult<LoginResponse>>;
    /// `POST /api/auth/refresh`.
    fn refresh<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, UpstreamResult<RefreshResponse>>;
    /// `POST /api/devices/enroll`.
    fn enroll<'a>(
        &'a self,
        server: &'a str,
        body: &'a EnrollRequest,
    ) -> BoxFuture<'a, UpstreamResult<DeviceTokenResponse>>;
    /// `POST /api/devices/token`.
    fn device_token<'a>(
        &'a self,
        server: &'a str,
        body: &'a DeviceTokenRequest,
    ) -> BoxFuture<'a, UpstreamResult<DeviceTokenResponse>>;
    /// `POST /api/sync/push`.
    fn push<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        body: &'a PushRequest,
    ) -> BoxFuture<'a, UpstreamResult<PushResponse>>;
    /// `GET /api/sync/pull`, with leases; with `since_version`, only what
    /// changed since the pull that answered that version.
    fn pull<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        since_version: Option<i64>,
    ) -> BoxFuture<'a, UpstreamResult<PullResponse>>;

    /// `POST /api/devices/heartbeat`: how the kiosk is doing, while its
    /// WebSocket is down.
    fn heartbeat<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        body: &'a KioskHeartbeat,
    ) -> BoxFuture<'a, UpstreamResult<serde_json::Value>>;

    /// `DELETE /api/sync/lease`: gives this kiosk's unused units back —
    /// all of them, or (`part`) that many of one client's lease.
    fn release_leases<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        part: Option<LeaseEntry>,
    ) -> BoxFuture<'a, UpstreamResult<LeaseReleaseResponse>>;
}

/// [`ServerClient`] over reqwest.
pub struct HttpServerClient {
    http: reqwest::Client,
    max_answer_bytes: usize,
}

impl HttpServerClient {
    /// A client with the agent's timeouts (3 s to connect, 30 s per request)
    /// that follows no redirect and reads answers of at most `max_answer_bytes`.
    pub fn new(
        max_answer_bytes: usize,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            // A redirect could send the password elsewhere, or downgrade to http.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            max_answer_bytes,
        })
    }
}

/// `server` parsed as a server address the agent can use: `http://` or
/// `https://`, a host, and nothing that would change what a request means
/// once a path is appended (`?query`, `#fragment`) or whom it goes to
/// (`user@` before the host: `http://localhost:1@192.0.2.10` is 192.0.2.10).
pub fn parse_server_url(server: &str) -> Result<url::Url, String> {
    let url =
        url::Url::parse(server).map_err(|e| format!("server URL {server:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "server URL {server:?} must start with https:// (or http://)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "server URL {server:?} must not carry a user name or password before the host \
             (the agent authenticates itself)"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "server URL {server:?} must not have a ?query or #fragment"
        ));
    }
    if url.host().is_none() {
        return Err(format!("server URL {server:?} names no host"));
    }
    Ok(url)
}

/// `server` as the agent writes it (scheme and host in lower case, no
/// trailing `/`: paths are appended to it), when it is a usable address.
pub fn normalize_server_url(server: &str) -> Result<String, String> {
    Ok(parse_server_url(server)?
        .as_str()
        .trim_end_matches('/')
        .to_owned())
}

/// Whether the agent may talk to `server`: `https://` always; `http://` only
/// to this machine (loopback) unless `allow_insecure_http`.
pub fn check_server_url(server: &str, allow_insecure_http: bool) -> Result<(), String> {
    let url = parse_server_url(server)?;
    if url.scheme() == "https" {
        return Ok(());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback || allow_insecure_http {
        Ok(())
    } else {
        let host = url.host_str().unwrap_or_default();
        Err(format!(
            "refusing plain http:// to {host}: passwords and tokens would cross the network in clear; \
             use https://, or set allow_insecure_http = true (PROPASS_ALLOW_INSECURE_HTTP=true) if the network is trusted"
        ))
    }
}

impl HttpServerClient {
    /// An unauthenticated JSON POST and its answer.
    async fn post_json<B: serde::Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        server: &str,
        path: &str,
        body: &B,
    ) -> UpstreamResult<T> {
        let req = self.http.post(format!("{server}{path}")).json(body);
        answer(req, self.max_answer_bytes).await
    }

    /// A request to `path` with the bearer token.
    fn authed(
        &self,
        method: reqwest::Method,
        server: &str,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{server}{path}"))
            .bearer_auth(token)
    }
}

impl ServerClient for HttpServerClient {
    fn login<'a>(
        &'a self,
        server: &'a str,
        body: &'a LoginRequest,
    ) -> BoxFuture<'a, UpstreamResult<LoginResponse>> {
        Box::pin(self.post_json(server, "/api/auth/login", body))
    }

    fn refresh<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, UpstreamResult<RefreshResponse>> {
        let req = self.authed(reqwest::Method::POST, server, "/api/auth/refresh", token);
        Box::pin(answer(req, self.max_answer_bytes))
    }

    fn enroll<'a>(
        &'a self,
        server: &'a str,
        body: &'a EnrollRequest,
    ) -> BoxFuture<'a, UpstreamResult<DeviceTokenResponse>> {
        Box::pin(self.post_json(server, "/api/devices/enroll", body))
    }

    fn device_token<'a>(
        &'a self,
        server: &'a str,
        body: &'a DeviceTokenRequest,
    ) -> BoxFuture<'a, UpstreamResult<DeviceTokenResponse>> {
        Box::pin(self.post_json(server, "/api/devices/token", body))
    }

    fn push<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        body: &'a PushRequest,
    ) -> BoxFuture<'a, UpstreamResult<PushResponse>> {
        let req = self
            .authed(reqwest::Method::POST, server, "/api/sync/push", token)
            .json(body);
        Box::pin(answer(req, self.max_answer_bytes))
    }

    fn pull<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        since_version: Option<i64>,
    ) -> BoxFuture<'a, UpstreamResult<PullResponse>> {
        // Always with leases (units set aside for this kiosk are what it
        // may spend offline) and the clients' reader keys; a server without
        // them ignores the query.
        let path = match since_version {
            Some(v) => format!("/api/sync/pull?lease=true&reader_keys=true&since_version={v}"),
            None => "/api/sync/pull?lease=true&reader_keys=true".to_owned(),
        };
        let req = self.authed(reqwest::Method::GET, server, &path, token);
        Box::pin(answer(req, self.max_answer_bytes))
    }

    fn heartbeat<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        body: &'a KioskHeartbeat,
    ) -> BoxFuture<'a, UpstreamResult<serde_json::Value>> {
        let req = self
            .authed(
                reqwest::Method::POST,
                server,
                "/api/devices/heartbeat",
                token,
            )
            .json(body);
        Box::pin(answer(req, self.max_answer_bytes))
    }

    fn release_leases<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        part: Option<LeaseEntry>,
    ) -> BoxFuture<'a, UpstreamResult<LeaseReleaseResponse>> {
        let path = match part {
            None => "/api/sync/lease".to_owned(),
            Some(p) => format!(
                "/api/sync/lease?client_id={}&units={}",
                p.client_id.get(),
                p.units
            ),
        };
        let req = self.authed(reqwest::Method::DELETE, server, &path, token);
        Box::pin(answer(req, self.max_answer_bytes))
    }
}

/// Sends `req` and reads a success body as `T`, or the error body.
async fn answer<T: DeserializeOwned>(
    req: reqwest::RequestBuilder,
    limit: usize,
) -> UpstreamResult<T> {
    let mut res = req
        .send()
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
    let status = res.status().as_u16();
    if res.status().is_redirection() {
        let to = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        return Err(UpstreamError::Refused {
            code: ErrorCode::Unknown,
            retry_after: None,
            status,
            message: format!(
                "the server answered with a redirect (HTTP {status} to {to}); the agent follows none: set the server URL to the final address"
            ),
        });
    }
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = read_bounded(&mut res, limit).await?;
    if res.status().is_success() {
        return serde_json::from_slice(&body).map_err(|e| UpstreamError::Unreadable(e.to_string()));
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(body) if body.error.code != ErrorCode::Unknown => (body.error.code, body.error.message),
        Ok(body) => (code_of_status(status), body.error.message),
        Err(_) => (code_of_status(status), format!("HTTP {status}")),
    };
    Err(UpstreamError::Refused {
        code,
        status,
        message,
        retry_after,
    })
}

/// The body, refused past `limit` bytes (a misbehaving server cannot make
/// the kiosk buffer without bound).
async fn read_bounded(res: &mut reqwest::Response, limit: usize) -> UpstreamResult<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(UpstreamError::Unreadable(format!(
                "the server's answer is larger than {limit} bytes (max_answer_bytes)"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The code for an answer without a usable one (a proxy's error page, a
/// newer server's code): the closest code of the same status class.
fn code_of_status(status: u16) -> ErrorCode {
    match status {
        401 => ErrorCode::InvalidToken,
        403 => ErrorCode::Forbidden,
        413 => ErrorCode::PayloadTooLarge,
        500..=599 => ErrorCode::Unavailable,
        _ => ErrorCode::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::{check_server_url, HttpServerClient, ServerClient, UpstreamError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on port 0 that answers one request with `body` (after `head`).
    async fn answering(head: &'static str, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 8192];
            let _ = sock.read(&mut buf).await;
            let head = format!("{head}content-length: {}\r\n\r\n", body.len());
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_answer_past_max_answer_bytes_is_refused() {
        let client = HttpServerClient::new(1024, crate::tls::client_config(None).unwrap()).unwrap();
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n";
        let server = answering(head, vec![b' '; 64 * 1024]).await;
        match client.refresh(&server, "token").await {
            Err(UpstreamError::Unreadable(why)) => {
                assert!(why.contains("max_answer_bytes"), "{why}")
            }
            other => panic!("expected a refused answer, got {other:?}"),
        }
        // gzip is decoded before it is counted: a small bomb is refused too.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![b' '; 512 * 1024]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1024, "the compressed body fits the limit");
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n";
        let server = answering(head, bomb).await;
        match client.refresh(&server, "token").await {
            Err(UpstreamError::Unreadable(why)) => {
                assert!(why.contains("max_answer_bytes"), "{why}")
            }
            other => panic!("expected a refused answer, got {other:?}"),
        }
    }

    #[test]
    fn plain_http_is_for_this_machine_only_unless_allowed() {
        for ok in [
            "https://propass.example",
            "http://127.0.0.1:5000",
            "http://localhost:5000",
            "http://[::1]:5000",
        ] {
            assert!(check_server_url(ok, false).is_ok(), "{ok}");
        }
        for refused in [
            "http://192.0.2.10:5000",
            "http://propass.lan",
            "http://127.0.0.1.evil.example",
            "ftp://x",
            // What comes before `@` is a user name: the request goes to the host after it.
            "http://localhost:1@192.0.2.10/",
            "http://127.0.0.1:x@192.0.2.10/",
            "http://[::1]@evil.example/",
            "https://user:secret@propass.example",
            "https://propass.example/?next=x",
            "https://propass.example/#x",
            "http://",
            "localhost:5000",
        ] {
            assert!(check_server_url(refused, false).is_err(), "{refused}");
        }
        assert!(check_server_url("http://propass.lan", true).is_ok());
        // allow_insecure_http allows clear text, not a misleading address.
        assert!(check_server_url("http://localhost:1@192.0.2.10", true).is_err());
    }

    #[test]
    fn server_urls_are_kept_in_one_spelling() {
        use super::normalize_server_url as n;
        assert_eq!(
            n(" HTTPS://Propass.Example/ ").unwrap(),
            "https://propass.example"
        );
        assert_eq!(n("https://h:8443/base/").unwrap(), "https://h:8443/base");
        assert_eq!(n("http://127.0.0.1:5000").unwrap(), "http://127.0.0.1:5000");
        assert!(n("https://me@h").is_err());
    }
}
