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

/// Whether the agent may talk to `server`: `https://` always; `http://` only
/// to this machine (loopback) unless `allow_insecure_http`.
pub fn check_server_url(server: &str, allow_insecure_http: bool) -> Result<(), String> {
    if server.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = server.strip_prefix("http://") else {
        return Err(format!(
            "server URL {server:?} must start with https:// (or http://)"
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || allow_insecure_http {
        Ok(())
    } else {
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
    use super::check_server_url;

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
        ] {
            assert!(check_server_url(refused, false).is_err(), "{refused}");
        }
        assert!(check_server_url("http://propass.lan", true).is_ok());
    }
}
