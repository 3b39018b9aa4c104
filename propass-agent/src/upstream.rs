//! The agent's typed client of the PROPASS server: login, refresh, push,
//! pull. A refusal carries the wire [`ErrorCode`], so the sync code decides
//! on codes and never on HTTP numbers. [`ServerClient`] is the seam; the
//! reqwest implementation is [`HttpServerClient`].

use std::time::Duration;

use futures_util::future::BoxFuture;
use propass_protocol::{
    ErrorBody, ErrorCode, LoginRequest, LoginResponse, PullResponse, PushRequest, PushResponse,
    RefreshResponse,
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
    /// `POST /api/sync/push`.
    fn push<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        body: &'a PushRequest,
    ) -> BoxFuture<'a, UpstreamResult<PushResponse>>;
    /// `GET /api/sync/pull`.
    fn pull<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, UpstreamResult<PullResponse>>;
}

/// [`ServerClient`] over reqwest.
pub struct HttpServerClient {
    http: reqwest::Client,
}

impl HttpServerClient {
    /// A client with the agent's timeouts (3 s to connect, 30 s per request).
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { http })
    }
}

impl ServerClient for HttpServerClient {
    fn login<'a>(
        &'a self,
        server: &'a str,
        body: &'a LoginRequest,
    ) -> BoxFuture<'a, UpstreamResult<LoginResponse>> {
        let req = self
            .http
            .post(format!("{server}/api/auth/login"))
            .json(body);
        Box::pin(answer(req))
    }

    fn refresh<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, UpstreamResult<RefreshResponse>> {
        let req = self
            .http
            .post(format!("{server}/api/auth/refresh"))
            .bearer_auth(token);
        Box::pin(answer(req))
    }

    fn push<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
        body: &'a PushRequest,
    ) -> BoxFuture<'a, UpstreamResult<PushResponse>> {
        let req = self
            .http
            .post(format!("{server}/api/sync/push"))
            .bearer_auth(token)
            .json(body);
        Box::pin(answer(req))
    }

    fn pull<'a>(
        &'a self,
        server: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, UpstreamResult<PullResponse>> {
        let req = self
            .http
            .get(format!("{server}/api/sync/pull"))
            .bearer_auth(token);
        Box::pin(answer(req))
    }
}

/// Sends `req` and reads a success body as `T`, or the error body.
async fn answer<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> UpstreamResult<T> {
    let res = req
        .send()
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
    if res.status().is_success() {
        return res
            .json()
            .await
            .map_err(|e| UpstreamError::Unreadable(e.to_string()));
    }
    let status = res.status().as_u16();
    let (code, message) = match res.json::<ErrorBody>().await {
        Ok(body) if body.error.code != ErrorCode::Unknown => (body.error.code, body.error.message),
        Ok(body) => (code_of_status(status), body.error.message),
        Err(_) => (code_of_status(status), format!("HTTP {status}")),
    };
    Err(UpstreamError::Refused {
        code,
        status,
        message,
    })
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
