//! The request extractors: what a handler takes to say which checks its
//! caller passed. The names say what is checked.

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};

use crate::auth::{bearer_token, ensure_device_active, ensure_standing, Claims, Purpose};
use crate::error::ApiError;
use crate::state::AppState;

fn state_of(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))
}

type Checked<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

/// The claims of a valid, unexpired token whose user may make a kiosk's
/// calls (exists, not disabled, same password, role kiosk or admin).
async fn kiosk_claims(
    state: Result<web::Data<AppState>, ApiError>,
    token: Option<String>,
) -> Result<(web::Data<AppState>, Claims), ApiError> {
    let state = state?;
    let token = token.ok_or(ApiError::MissingToken)?;
    let claims = state.jwt.verify(&token, state.clock.now())?;
    ensure_standing(&state.pool, &claims, Purpose::KioskCall).await?;
    Ok((state, claims))
}

/// A kiosk's token: valid, unexpired, of a user in good standing who may
/// make a kiosk's calls. Its device's revocation is NOT checked: the handler
/// does it itself (the push does it inside its transaction).
#[derive(Debug, Clone)]
pub struct KioskToken(pub Claims);

impl FromRequest for KioskToken {
    type Error = ApiError;
    type Future = Checked<Self>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let (state, token) = (state_of(req), bearer_token(req));
        Box::pin(async move { Ok(Self(kiosk_claims(state, token).await?.1)) })
    }
}

/// A kiosk's token (see [`KioskToken`]) whose device is not revoked.
#[derive(Debug, Clone)]
pub struct KioskTokenOfActiveDevice(pub Claims);

impl FromRequest for KioskTokenOfActiveDevice {
    type Error = ApiError;
    type Future = Checked<Self>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let (state, token) = (state_of(req), bearer_token(req));
        Box::pin(async move {
            let (state, claims) = kiosk_claims(state, token).await?;
            ensure_device_active(&state.pool, &claims.device_id).await?;
            Ok(Self(claims))
        })
    }
}
