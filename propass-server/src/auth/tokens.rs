//! Device-bound tokens: HS256 JWTs whose claims name one user and one device.
//! A leaf: it is handed the time and the token id, and never sees the
//! application state. Expiry is checked here against the given time (not by
//! the JWT library against the system clock), so a simulated clock drives it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use propass_protocol::{DeviceId, Role};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Username.
    pub sub: String,
    /// Server user id.
    pub uid: i64,
    /// The user's role when the token was issued.
    pub role: Role,
    /// The one device this token works for.
    pub device_id: DeviceId,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The user's token epoch when issued: a password change or a disable
    /// bumps it and ends this token. (Absent from tokens issued before: 0.)
    #[serde(default)]
    pub epoch: i64,
}

impl Claims {
    /// Refuses a request naming another device than the token's.
    pub fn ensure_device(&self, requested: &str) -> Result<(), ApiError> {
        if self.device_id.as_str() == requested {
            Ok(())
        } else {
            Err(ApiError::DeviceMismatch {
                token_device: self.device_id.clone(),
                requested: requested.to_owned(),
            })
        }
    }

    /// Whether the token has expired at `now`.
    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.exp < now.timestamp()
    }
}

/// Who a new token is for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Server user id.
    pub uid: i64,
    pub username: &'a str,
    pub role: Role,
    /// The device it will work for.
    pub device: &'a DeviceId,
    /// The user's token epoch.
    pub epoch: i64,
}

/// Signs and checks tokens.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
    grace: Duration,
}

impl JwtKeys {
    /// Keys from a secret, with the tokens' lifetime and the refresh grace period.
    pub fn new(secret: &[u8], ttl: Duration, grace: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
            grace,
        }
    }

    /// Issues a token at `now` with the unique id `jti`; returns it with its expiry.
    pub fn issue(
        &self,
        who: Subject<'_>,
        now: DateTime<Utc>,
        jti: uuid::Uuid,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let exp = now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::days(7));
        let claims = Claims {
            sub: who.username.to_owned(),
            uid: who.uid,
            role: who.role,
            device_id: who.device.clone(),
            iat: now.timestamp(),
            exp: exp.timestamp(),
            jti: jti.to_string(),
            epoch: who.epoch,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("cannot sign token: {e}")))?;
        Ok((token, exp))
    }

    /// Signature and algorithm only; expiry is the caller's to check.
    fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.set_required_spec_claims(&["exp", "iat", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => ApiError::InvalidToken("bad signature".into()),
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm => ApiError::InvalidToken(
                    "only HS256 tokens issued by this server are accepted".into(),
                ),
                _ => ApiError::InvalidToken(e.to_string()),
            })
    }

    /// Checks a token for an ordinary request: signature, algorithm, expiry at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, ApiError> {
        let claims = self.decode(token)?;
        if claims.expired_at(now) {
            return Err(ApiError::TokenExpired);
        }
        Ok(claims)
    }

    /// Checks a token for `/api/auth/refresh`: like [`Self::verify`] but an
    /// expired token is accepted within the grace period (kiosks come back
    /// from long offline spells).
    pub fn verify_for_refresh(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, ApiError> {
        let claims = self.decode(token)?;
        let grace = i64::try_from(self.grace.as_secs()).unwrap_or(i64::MAX);
        if claims.exp.saturating_add(grace) < now.timestamp() {
            return Err(ApiError::TokenExpired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_grace_follow_the_given_time() {
        let keys = JwtKeys::new(&[7; 32], Duration::from_secs(60), Duration::from_secs(30));
        let device = DeviceId::parse("kiosk-1").unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let who = Subject {
            uid: 1,
            username: "k",
            role: Role::Operator,
            device: &device,
            epoch: 0,
        };
        let (token, exp) = keys.issue(who, t0, uuid::Uuid::nil()).unwrap();
        assert_eq!(exp, t0 + chrono::Duration::seconds(60));
        assert_eq!(keys.verify(&token, t0).unwrap().device_id, device);
        let late = t0 + chrono::Duration::seconds(61);
        assert!(matches!(
            keys.verify(&token, late),
            Err(ApiError::TokenExpired)
        ));
        assert!(keys.verify_for_refresh(&token, late).is_ok());
        let too_late = t0 + chrono::Duration::seconds(91);
        assert!(matches!(
            keys.verify_for_refresh(&token, too_late),
            Err(ApiError::TokenExpired)
        ));
    }
}
