//! The local API's errors: a [`LocalErrorCode`] chooses the HTTP status, and
//! every lower error (store, sync, reader, kiosk) maps to one code here.

use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};

use crate::kiosk::KioskError;
use crate::store::StoreError;
use crate::sync::SyncError;

/// Declares the codes once: variant, wire name and HTTP status together.
macro_rules! local_error_codes {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $status:ident;)*) => {
        /// The `code` of a local API error. docs/agent-api.md lists them all.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum LocalErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl LocalErrorCode {
            /// For the test that docs/agent-api.md lists them all.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The wire name (`quota_exhausted`, …).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// The HTTP status an error with this code is sent with.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

local_error_codes! {
    /// The body is not JSON or not the expected shape.
    MalformedJson = "malformed_json", BAD_REQUEST;
    /// A value is not acceptable (query string, server URL).
    InvalidRequest = "invalid_request", BAD_REQUEST;
    NotFound = "not_found", NOT_FOUND;
    /// No quota known for this client here: sync first.
    UnknownClient = "unknown_client", CONFLICT;
    /// An op_id reused for another operation, or a server change with unsynced work.
    Conflict = "conflict", CONFLICT;
    QuotaExhausted = "quota_exhausted", CONFLICT;
    /// No usable token (operations are still recorded).
    LoginRequired = "login_required", CONFLICT;
    PayloadTooLarge = "payload_too_large", PAYLOAD_TOO_LARGE;
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    /// The server answered with an error.
    ServerRefused = "server_refused", BAD_GATEWAY;
    ServerUnreachable = "server_unreachable", SERVICE_UNAVAILABLE;
    /// A local failure (logged).
    Internal = "internal", INTERNAL_SERVER_ERROR;
    NoReader = "no_reader", SERVICE_UNAVAILABLE;
    ReaderUnplugged = "reader_unplugged", SERVICE_UNAVAILABLE;
    /// No card was placed in time.
    NoTag = "no_tag", REQUEST_TIMEOUT;
    TwoTags = "two_tags", UNPROCESSABLE_ENTITY;
    /// The blank is not a magic card; nothing was written.
    CardNotWritable = "card_not_writable", UNPROCESSABLE_ENTITY;
    AuthFailed = "auth_failed", UNPROCESSABLE_ENTITY;
    /// The card left before anything was written.
    TagRemoved = "tag_removed", UNPROCESSABLE_ENTITY;
    /// The card was (or may have been) written but does not read back: not recorded.
    VerifyFailed = "verify_failed", UNPROCESSABLE_ENTITY;
    /// Not a 4-byte MIFARE Classic badge.
    UnsupportedBadge = "unsupported_badge", UNPROCESSABLE_ENTITY;
    /// Sectors no key opened, and the client wants whole copies only.
    ProtectedSectors = "protected_sectors", UNPROCESSABLE_ENTITY;
    Cancelled = "cancelled", UNPROCESSABLE_ENTITY;
    /// The local database cannot take a card's intent (read-only, full,
    /// failing): no card was touched; an operator must look.
    RecordingUnavailable = "recording_unavailable", SERVICE_UNAVAILABLE;
    /// The agent is stopping: no card was written.
    Stopping = "stopping", SERVICE_UNAVAILABLE;
    /// Written but not verified: recorded as an unverified copy (charged,
    /// flagged for an operator).
    CopyUnverified = "copy_unverified", UNPROCESSABLE_ENTITY;
}

impl std::fmt::Display for LocalErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for LocalErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LocalErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {name:?}")))
    }
}

/// `{"success": false, "error": {…}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: LocalErrorCode,
    /// A sentence for the person at the kiosk.
    pub message: String,
}

/// An error of the local API.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: LocalErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: LocalErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        if self.code == LocalErrorCode::Internal {
            tracing::error!(error = %self.message, "local API internal error");
        }
        HttpResponse::build(self.status_code()).json(ErrorBody {
            success: false,
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_storage_failure() {
            return Self::new(
                LocalErrorCode::RecordingUnavailable,
                format!("this kiosk cannot save its records ({e}): nothing was recorded; call an operator"),
            );
        }
        let code = match e {
            StoreError::UnknownClient(_) => LocalErrorCode::UnknownClient,
            StoreError::QuotaExhausted { .. } | StoreError::LeaseExhausted { .. } => {
                LocalErrorCode::QuotaExhausted
            }
            StoreError::OpIdConflict(_) => LocalErrorCode::Conflict,
            _ => LocalErrorCode::Internal,
        };
        Self::new(code, e.to_string())
    }
}

impl From<SyncError> for ApiError {
    fn from(e: SyncError) -> Self {
        let code = match e {
            SyncError::Offline(_) => LocalErrorCode::ServerUnreachable,
            SyncError::Server(_) | SyncError::Throttled { .. } => LocalErrorCode::ServerRefused,
            SyncError::LoggedOut(_) | SyncError::NoServer => LocalErrorCode::LoginRequired,
            SyncError::UnsyncedWork(_) => LocalErrorCode::Conflict,
            SyncError::Insecure(_) => LocalErrorCode::InvalidRequest,
            SyncError::Store(s) => return s.into(),
        };
        Self::new(code, e.to_string())
    }
}

impl From<propass_nfc::NfcError> for ApiError {
    fn from(e: propass_nfc::NfcError) -> Self {
        use propass_nfc::NfcError as N;
        let code = match &e {
            N::NoReader(_) => LocalErrorCode::NoReader,
            N::ReaderUnplugged(_) => LocalErrorCode::ReaderUnplugged,
            N::NoTag => LocalErrorCode::NoTag,
            N::TwoTags => LocalErrorCode::TwoTags,
            N::NotWritable(_) => LocalErrorCode::CardNotWritable,
            N::AuthFailed => LocalErrorCode::AuthFailed,
            N::TagRemoved => LocalErrorCode::TagRemoved,
            // The blank was (or may have been) written: not a valid copy.
            N::VerifyFailed { .. } | N::SectorFailed { .. } => LocalErrorCode::VerifyFailed,
            N::InvalidBlock0(_) | N::NotCopyable(_) => LocalErrorCode::UnsupportedBadge,
            N::Cancelled => LocalErrorCode::Cancelled,
        };
        Self::new(code, e.to_string())
    }
}

impl From<KioskError> for ApiError {
    fn from(e: KioskError) -> Self {
        match e {
            KioskError::Nfc(n) => n.into(),
            KioskError::Store(s) => s.into(),
            KioskError::Unsupported(m) => Self::new(LocalErrorCode::UnsupportedBadge, m),
            e @ (KioskError::CannotRecord(_) | KioskError::NotRecordedYet { .. }) => {
                Self::new(LocalErrorCode::RecordingUnavailable, e.to_string())
            }
            e @ KioskError::Stopping => Self::new(LocalErrorCode::Stopping, e.to_string()),
            e @ KioskError::Unverified { .. } => {
                Self::new(LocalErrorCode::CopyUnverified, e.to_string())
            }
            e @ KioskError::Protected { .. } => {
                Self::new(LocalErrorCode::ProtectedSectors, e.to_string())
            }
        }
    }
}

/// Body parsing errors as API errors.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    match err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            LocalErrorCode::PayloadTooLarge,
            format!("request body larger than {limit} bytes (api_max_body_bytes)"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            LocalErrorCode::UnsupportedMediaType,
            "send JSON with Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(e) => ApiError::new(
            LocalErrorCode::MalformedJson,
            format!("invalid JSON body: {e}"),
        ),
        other => ApiError::new(LocalErrorCode::MalformedJson, other.to_string()),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_list_every_code_with_its_status() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent-api.md");
        let doc = std::fs::read_to_string(path).unwrap();
        for code in LocalErrorCode::ALL {
            let status = code.status().as_u16();
            let listed = doc.lines().any(|l| {
                l.starts_with('|')
                    && l.contains(&format!("`{code}`"))
                    && l.contains(&format!("| {status} |"))
            });
            assert!(
                listed,
                "docs/agent-api.md does not list `{code}` with HTTP {status}"
            );
        }
    }

    #[test]
    fn codes_round_trip_through_json() {
        for &code in LocalErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<LocalErrorCode>(&json).unwrap(), code);
        }
    }
}
