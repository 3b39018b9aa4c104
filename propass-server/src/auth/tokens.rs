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

use crate::device::Caller;
use crate::error::ApiError;

/// Who issues every token (`iss`).
pub const ISSUER: &str = "propass-server";
/// Who every kiosk token is for (`aud`): kiosks' calls (push, pull, WebSocket).
pub const KIOSK_AUDIENCE: &str = "propass-kiosk";

/// The kind of a token, in its `typ` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    /// From a password login (the seed client): names a user and the device
    /// it logged in; long-lived, renewed at `/api/auth/refresh`.
    Login,
    /// An enrolled device's access token: names the device only; short-lived,
    /// renewed with the device's rotating refresh credential.
    Device,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// Always [`KIOSK_AUDIENCE`].
    pub aud: String,
    /// What kind of token this is.
    pub typ: TokenType,
    /// The username (login tokens) or the device id (device tokens).
    pub sub: String,
    /// Server user id (login tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<i64>,
    /// The user's role when the token was issued (login tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The one device this token works for.
    pub device_id: DeviceId,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The user's (login) or the device's (device) token epoch when issued:
    /// a password change, a disable or a revocation bumps it and ends this token.
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

    /// The kind of caller, for [`crate::device::admit`].
    pub fn caller(&self) -> Caller {
        match self.typ {
            TokenType::Login => Caller::Login,
            TokenType::Device => Caller::Device { epoch: self.epoch },
        }
    }

    /// The user of a login token: its id, name and role.
    pub fn user(&self) -> Option<(i64, &str, Role)> {
        match (self.typ, self.uid, self.role) {
            (TokenType::Login, Some(uid), Some(role)) => Some((uid, self.sub.as_str(), role)),
            _ => None,
        }
    }
}

/// Who a login token is for.
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
    login_ttl: Duration,
    device_ttl: Duration,
    grace: Duration,
}

fn span(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(7))
}

impl JwtKeys {
    /// Keys from a secret, with the lifetimes of login and device tokens and
    /// the grace period of a login token's refresh.
    pub fn new(secret: &[u8], login_ttl: Duration, device_ttl: Duration, grace: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            login_ttl,
            device_ttl,
            grace,
        }
    }

    /// Issues a login token at `now` with the unique id `jti`; returns it with its expiry.
    pub fn issue(
        &self,
        who: Subject<'_>,
        now: DateTime<Utc>,
        jti: uuid::Uuid,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let exp = now + span(self.login_ttl);
        self.sign(Claims {
            iss: ISSUER.to_owned(),
            aud: KIOSK_AUDIENCE.to_owned(),
            typ: TokenType::Login,
            sub: who.username.to_owned(),
            uid: Some(who.uid),
            role: Some(who.role),
            device_id: who.device.clone(),
            iat: now.timestamp(),
            exp: exp.timestamp(),
            jti: jti.to_string(),
            epoch: who.epoch,
        })
        .map(|t| (t, exp))
    }

    /// Issues an enrolled device's access token (device epoch `epoch`).
    pub fn issue_device(
        &self,
        device: &DeviceId,
        epoch: i64,
        now: DateTime<Utc>,
        jti: uuid::Uuid,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let exp = now + span(self.device_ttl);
        self.sign(Claims {
            iss: ISSUER.to_owned(),
            aud: KIOSK_AUDIENCE.to_owned(),
            typ: TokenType::Device,
            sub: device.to_string(),
            uid: None,
            role: None,
            device_id: device.clone(),
            iat: now.timestamp(),
            exp: exp.timestamp(),
            jti: jti.to_string(),
            epoch,
        })
        .map(|t| (t, exp))
    }

    fn sign(&self, claims: Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("cannot sign token: {e}")))
    }

    /// Signature, algorithm, issuer, audience and shape; expiry is the
    /// caller's to check.
    fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[KIOSK_AUDIENCE]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => ApiError::InvalidToken("bad signature".into()),
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm => ApiError::InvalidToken(
                    "only HS256 tokens issued by this server are accepted".into(),
                ),
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => ApiError::InvalidToken(
                    "this token was not issued for a kiosk by this server: log in again".into(),
                ),
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => ApiError::InvalidToken(
                    "this token lacks the claims this server issues (issued by an older version?): log in again".into(),
                ),
                _ => ApiError::InvalidToken(e.to_string()),
            })?;
        if claims.typ == TokenType::Login && claims.user().is_none() {
            return Err(ApiError::InvalidToken(
                "a login token must name its user".into(),
            ));
        }
        Ok(claims)
    }

    /// Checks a token for an ordinary request: signature, algorithm, issuer,
    /// audience, expiry at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, ApiError> {
        let claims = self.decode(token)?;
        if claims.expired_at(now) {
            return Err(ApiError::TokenExpired);
        }
        Ok(claims)
    }

    /// Checks a login token for `/api/auth/refresh`: like [`Self::verify`]
    /// but an expired token is accepted within the grace period (kiosks come
    /// back from long offline spells). A device token is renewed with its
    /// refresh credential instead.
    pub fn verify_for_refresh(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, ApiError> {
        let claims = self.decode(token)?;
        if claims.typ != TokenType::Login {
            return Err(ApiError::InvalidToken(
                "an enrolled device renews its token with its refresh credential at /api/devices/token".into(),
            ));
        }
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

    /// Login tokens live 60 s (30 s of refresh grace), device tokens 10 s.
    fn keys() -> JwtKeys {
        JwtKeys::new(
            &[7; 32],
            Duration::from_secs(60),
            Duration::from_secs(10),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn expiry_and_grace_follow_the_given_time() {
        let keys = keys();
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

    #[test]
    fn device_tokens_are_short_and_not_refreshed_as_logins() {
        let keys = keys();
        let device = DeviceId::parse("kiosk-1").unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let (token, exp) = keys
            .issue_device(&device, 3, t0, uuid::Uuid::nil())
            .unwrap();
        assert_eq!(exp, t0 + chrono::Duration::seconds(10));
        let claims = keys.verify(&token, t0).unwrap();
        assert_eq!(
            (claims.typ, claims.epoch, claims.user()),
            (TokenType::Device, 3, None)
        );
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (ISSUER, KIOSK_AUDIENCE)
        );
        assert!(matches!(
            keys.verify_for_refresh(&token, t0),
            Err(ApiError::InvalidToken(_))
        ));
    }

    #[test]
    fn a_token_for_another_audience_is_refused() {
        let keys = keys();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut claims = keys
            .verify(
                &keys
                    .issue_device(&DeviceId::parse("k").unwrap(), 0, t0, uuid::Uuid::nil())
                    .unwrap()
                    .0,
                t0,
            )
            .unwrap();
        claims.aud = "propass-operator".into();
        let forged = keys.sign(claims).unwrap();
        assert!(matches!(
            keys.verify(&forged, t0),
            Err(ApiError::InvalidToken(_))
        ));
    }
}
