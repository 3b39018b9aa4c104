//! Authentication: Argon2id password hashes, device-bound JWTs (HS256 only),
//! the throttle on failed logins, and the [`Authed`] extractor that every
//! protected route takes.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use propass_protocol::{DeviceId, Role};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::ApiError;
use crate::startup::AppState;

/// Hashes a password with Argon2id and a random salt (a PHC string).
/// CPU-heavy: call it off the async workers.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against a PHC string. CPU-heavy, like [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of no one's password, checked when the user does not exist so that
/// a wrong name costs as long as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("propass-no-such-user").unwrap_or_default())
}

/// What a token says. Bound to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Username.
    pub sub: String,
    /// Server user id.
    pub uid: i64,
    /// Role.
    pub role: Role,
    /// The one device this token works for.
    pub device_id: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

/// Signs and checks tokens.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
    grace: Duration,
}

impl JwtKeys {
    /// Keys from the configured secret and lifetimes.
    pub fn new(config: &Config) -> Self {
        Self {
            encoding: EncodingKey::from_secret(config.jwt_secret.expose()),
            decoding: DecodingKey::from_secret(config.jwt_secret.expose()),
            ttl: config.token_ttl,
            grace: config.refresh_grace,
        }
    }

    /// Issues a token for `user` on `device`.
    pub fn issue(
        &self,
        uid: i64,
        username: &str,
        role: Role,
        device: &DeviceId,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let now = Utc::now();
        let exp = now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::days(7));
        let claims = Claims {
            sub: username.to_owned(),
            uid,
            role,
            device_id: device.to_string(),
            iat: now.timestamp(),
            exp: exp.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("cannot sign token: {e}")))?;
        Ok((token, exp))
    }

    fn validation(check_exp: bool) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_exp = check_exp;
        v.set_required_spec_claims(&["exp", "iat", "sub"]);
        v
    }

    fn decode(&self, token: &str, check_exp: bool) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &Self::validation(check_exp))
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                ErrorKind::InvalidSignature => ApiError::InvalidToken("bad signature".into()),
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm => ApiError::InvalidToken(
                    "only HS256 tokens issued by this server are accepted".into(),
                ),
                _ => ApiError::InvalidToken(e.to_string()),
            })
    }

    /// Checks a token for an ordinary request: signature, algorithm, expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.decode(token, true)
    }

    /// Checks a token for `/api/auth/refresh`: like [`Self::verify`] but an
    /// expired token is accepted within the grace period.
    pub fn verify_for_refresh(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self.decode(token, false)?;
        let grace = i64::try_from(self.grace.as_secs()).unwrap_or(i64::MAX);
        if claims.exp.saturating_add(grace) < Utc::now().timestamp() {
            return Err(ApiError::TokenExpired);
        }
        Ok(claims)
    }
}

/// Counts failed logins per key (`user:NAME`, `ip:ADDR`) in a sliding window.
pub struct LoginThrottle {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    /// Most keys remembered; beyond it, stale keys are pruned.
    const MAX_KEYS: usize = 100_000;

    /// A throttle allowing `max_failures` per key within `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds)` when any key is over its limit.
    pub fn check(&self, keys: &[String]) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None::<Duration>;
        for key in keys {
            if let Some(q) = map.get_mut(key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() >= self.max_failures {
                    let oldest = *q.front().unwrap_or(&now);
                    let w = self.window.saturating_sub(now.duration_since(oldest));
                    wait = Some(wait.map_or(w, |x| x.max(w)));
                }
            }
        }
        match wait {
            Some(w) => Err(w.as_secs().max(1)),
            None => Ok(()),
        }
    }

    /// Records one failure for every key.
    pub fn failure(&self, keys: &[String]) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MAX_KEYS {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for key in keys {
            let q = map.entry(key.clone()).or_default();
            q.push_back(now);
            while q.len() > self.max_failures {
                q.pop_front();
            }
        }
    }

    /// Forgets the failures of a key (after a successful login).
    pub fn success(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The bearer token of a request, if any.
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Refuses a revoked device.
pub async fn ensure_device_active(state: &AppState, device: &str) -> Result<(), ApiError> {
    let mut conn = state.pool.get().await?;
    if crate::db::device_revoked(&mut conn, device).await? {
        return Err(ApiError::DeviceRevoked(device.to_owned()));
    }
    Ok(())
}

/// A request with a valid, unexpired token of a device that is not revoked.
#[derive(Debug, Clone)]
pub struct Authed(pub Claims);

/// A request with a valid, unexpired token, whose device's revocation the
/// handler checks itself (the push does it inside its transaction, saving a
/// round trip).
#[derive(Debug, Clone)]
pub struct SignedToken(pub Authed);

impl FromRequest for SignedToken {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let verify = || {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Internal("application state missing".into()))?;
            let token = bearer_token(req).ok_or(ApiError::MissingToken)?;
            Ok(SignedToken(Authed(state.jwt.verify(&token)?)))
        };
        std::future::ready(verify())
    }
}

impl Authed {
    /// Refuses a request naming another device than the token's.
    pub fn ensure_device(&self, requested: &str) -> Result<(), ApiError> {
        if self.0.device_id == requested {
            Ok(())
        } else {
            Err(ApiError::DeviceMismatch {
                token_device: self.0.device_id.clone(),
                requested: requested.to_owned(),
            })
        }
    }
}

impl FromRequest for Authed {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(req);
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::Internal("application state missing".into()))?;
            let token = token.ok_or(ApiError::MissingToken)?;
            let claims = state.jwt.verify(&token)?;
            ensure_device_active(&state, &claims.device_id).await?;
            Ok(Authed(claims))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_blocks_after_max_failures_and_resets_on_success() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let keys = vec!["user:a".to_string()];
        assert!(t.check(&keys).is_ok());
        t.failure(&keys);
        t.failure(&keys);
        assert!(t.check(&keys).unwrap_err() >= 1);
        t.success("user:a");
        assert!(t.check(&keys).is_ok());
    }

    #[test]
    fn password_round_trip() {
        let h = hash_password("s3cret").unwrap();
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("s3cret", "not a phc string"));
    }
}
