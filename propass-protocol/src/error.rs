//! The one error body every endpoint answers with, and its stable codes.

use serde::{Deserialize, Serialize};

/// Machine-readable error codes. The string form (snake_case) is a stable
/// promise: clients `match` on it, people read `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON or not the expected shape (HTTP 400).
    MalformedJson,
    /// The body parsed but a value is not acceptable (HTTP 400).
    InvalidRequest,
    /// Wrong username or password (HTTP 401).
    InvalidCredentials,
    /// No `Authorization: Bearer …` token where one is needed (HTTP 401).
    MissingToken,
    /// The token is malformed, signed with another key or uses another algorithm (HTTP 401).
    InvalidToken,
    /// The token has expired (HTTP 401); `/api/auth/refresh` accepts it within the grace period.
    TokenExpired,
    /// The request names another device than the one the token was issued to (HTTP 403).
    DeviceMismatch,
    /// The device was revoked by an operator; its tokens no longer work (HTTP 403).
    DeviceRevoked,
    /// The device waits for an operator's approval (`propass-server device approve`) (HTTP 403).
    DevicePending,
    /// The device id is enrolled with a device credential; a password login cannot use it (HTTP 403).
    DeviceEnrolled,
    /// The enrollment code or refresh credential is unknown, used or expired (HTTP 401).
    InvalidCredential,
    /// Not allowed for this caller, e.g. a WebSocket from a browser origin not on the allow-list (HTTP 403).
    Forbidden,
    /// An operator route without a live browser session: log in (HTTP 401).
    SessionRequired,
    /// A changing operator request without the session's `X-CSRF-Token` (HTTP 403).
    CsrfRejected,
    /// No such route, or no such record (HTTP 404).
    NotFound,
    /// The method is not allowed on this route (HTTP 405).
    MethodNotAllowed,
    /// The request body did not arrive within the server's deadline (HTTP 408).
    RequestTimeout,
    /// The change contradicts the record's state, e.g. archiving a client
    /// that kiosks still serve (HTTP 409).
    Conflict,
    /// Too many items or bytes in one request (HTTP 413).
    PayloadTooLarge,
    /// The body is not `application/json` (HTTP 415).
    UnsupportedMediaType,
    /// Too many attempts; retry after the `Retry-After` seconds (HTTP 429).
    RateLimited,
    /// The database does not answer; retry later (HTTP 503).
    Unavailable,
    /// A bug on the server's side; it has been logged (HTTP 500).
    Internal,
    /// A code this version does not know yet (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::MalformedJson | Self::InvalidRequest => 400,
            Self::InvalidCredentials
            | Self::MissingToken
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::InvalidCredential
            | Self::SessionRequired => 401,
            Self::DeviceMismatch
            | Self::DeviceRevoked
            | Self::DevicePending
            | Self::DeviceEnrolled
            | Self::Forbidden
            | Self::CsrfRejected => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal | Self::Unknown => 500,
        }
    }
}

/// `{"success": false, "error": {"code": "...", "message": "..."}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// A sentence for a person.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            success: false,
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}
