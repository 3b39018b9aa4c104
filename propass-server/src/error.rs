//! The server's one error type, and its mapping to the wire error body.
//!
//! Handlers return [`ApiError`]; actix turns it into
//! `{"success": false, "error": {"code", "message"}}` with the status of the
//! code (see `propass_protocol::ErrorCode::http_status`). Database and pool
//! failures become `unavailable` (503) when the database cannot be reached and
//! `internal` (500) otherwise; details of internal errors go to the log, not
//! to the client.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use propass_protocol::{DeviceId, ErrorBody, ErrorCode};

/// What `Retry-After` says with a 503 `unavailable`: long enough for a
/// saturated pool to drain, short enough for kiosks to sync soon after.
pub const UNAVAILABLE_RETRY_SECS: u64 = 5;

/// What `Retry-After` says with a 429 for a device's socket beyond its cap.
pub const TOO_MANY_SOCKETS_RETRY_SECS: u64 = 30;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Body is not JSON or not the expected shape.
    #[error("{0}")]
    MalformedJson(String),
    /// A value is not acceptable.
    #[error("{0}")]
    InvalidRequest(String),
    /// Wrong username or password.
    #[error("wrong username or password")]
    InvalidCredentials,
    /// No bearer token.
    #[error("this endpoint needs an Authorization: Bearer <token> header")]
    MissingToken,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("the token has expired; refresh it at /api/auth/refresh or log in again")]
    TokenExpired,
    /// Token issued to another device.
    #[error("this token was issued to device {token_device}, not {requested}")]
    DeviceMismatch {
        /// The token's device.
        token_device: DeviceId,
        /// The device named by the request.
        requested: String,
    },
    #[error("device {0} has been revoked by an operator")]
    DeviceRevoked(DeviceId),
    #[error("device {0} is waiting for an operator's approval (propass-server device approve {0}); it may not sync until then")]
    DevicePending(DeviceId),
    #[error("device id {0} is enrolled with a device credential: a password login cannot use it")]
    DeviceEnrolled(DeviceId),
    /// An enrollment code or a refresh credential that does not work (the sentence says why).
    #[error("{0}")]
    InvalidCredential(String),
    #[error("{0}")]
    Forbidden(String),
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The route exists, not with this method.
    #[error("this endpoint does not take that method")]
    MethodNotAllowed,
    /// No such record (operator routes); the sentence names it.
    #[error("{0}")]
    NoSuchRecord(String),
    /// The change contradicts the record's state.
    #[error("{0}")]
    Conflict(String),
    /// An operator route without a live session; the sentence says why.
    #[error("{0}")]
    SessionRequired(String),
    /// A changing operator request without the session's CSRF token.
    #[error("this request needs the X-CSRF-Token header of your session (reload the page)")]
    CsrfRejected,
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body trickled in slower than `body_read_timeout_secs` allows.
    #[error("the request body did not arrive in time (body_read_timeout_secs)")]
    BodyTimeout,
    /// Not JSON.
    #[error("the body must be JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("too many failed attempts; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a new attempt is allowed.
        retry_after_secs: u64,
    },
    /// A device went over one of its limits (pushes per minute, items per day).
    #[error("{why}; retry in {retry_after_secs} s")]
    DeviceLimit {
        /// Which limit, in a sentence.
        why: String,
        /// Seconds until the limit's window moves on.
        retry_after_secs: u64,
    },
    /// A device opened too many WebSockets.
    #[error("device {0} already has the most WebSockets allowed open; close one first")]
    TooManyConnections(DeviceId),
    #[error("the database is unavailable; retry later")]
    Unavailable(String),
    /// A capacity of this server is used up; retry later.
    #[error("{why}; retry in {retry_after_secs} s")]
    Busy {
        /// Which capacity, in a sentence.
        why: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// A bug or an unexpected database error.
    #[error("internal error; it has been logged")]
    Internal(String),
}

impl ApiError {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::MalformedJson(_) => ErrorCode::MalformedJson,
            Self::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Self::InvalidCredentials => ErrorCode::InvalidCredentials,
            Self::MissingToken => ErrorCode::MissingToken,
            Self::InvalidToken(_) => ErrorCode::InvalidToken,
            Self::TokenExpired => ErrorCode::TokenExpired,
            Self::DeviceMismatch { .. } => ErrorCode::DeviceMismatch,
            Self::DeviceRevoked(_) => ErrorCode::DeviceRevoked,
            Self::DevicePending(_) => ErrorCode::DevicePending,
            Self::DeviceEnrolled(_) => ErrorCode::DeviceEnrolled,
            Self::InvalidCredential(_) => ErrorCode::InvalidCredential,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound | Self::NoSuchRecord(_) => ErrorCode::NotFound,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::SessionRequired(_) => ErrorCode::SessionRequired,
            Self::CsrfRejected => ErrorCode::CsrfRejected,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::BodyTimeout => ErrorCode::RequestTimeout,
            Self::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Self::RateLimited { .. } | Self::DeviceLimit { .. } | Self::TooManyConnections(_) => {
                ErrorCode::RateLimited
            }
            Self::Unavailable(_) | Self::Busy { .. } => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            Self::Unavailable(detail) => tracing::warn!(error = %detail, "database unavailable"),
            _ => {}
        }
        let mut res = HttpResponse::build(self.status_code());
        if let Self::RateLimited { retry_after_secs }
        | Self::DeviceLimit {
            retry_after_secs, ..
        }
        | Self::Busy {
            retry_after_secs, ..
        } = self
        {
            res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if let Self::TooManyConnections(_) = self {
            // A slot frees when one of the device's sockets closes.
            res.insert_header((header::RETRY_AFTER, TOO_MANY_SOCKETS_RETRY_SECS.to_string()));
        }
        if let Self::Unavailable(_) = self {
            // Pool saturated or database away: clients come back later
            // instead of all retrying at once.
            res.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_SECS.to_string()));
        }
        res.json(ErrorBody::new(self.code(), self.to_string()))
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::Error as E;
        match e {
            E::DatabaseError(diesel::result::DatabaseErrorKind::ClosedConnection, info) => {
                Self::Unavailable(info.message().to_owned())
            }
            E::DatabaseError(diesel::result::DatabaseErrorKind::UnableToSendCommand, info) => {
                Self::Unavailable(info.message().to_owned())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApiError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
