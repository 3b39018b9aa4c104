//! The request extractors: what a handler takes to say which checks its
//! caller passed. The names say what is checked.

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};

use crate::auth::{
    bearer_token, ensure_standing, ensure_standing_on_active_device, Claims, Purpose,
};
use crate::error::ApiError;
use crate::state::AppState;

fn state_of(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))
}

type Checked<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

/// The claims of a valid, unexpired bearer token.
fn verified(req: &HttpRequest) -> Result<(web::Data<AppState>, Claims), ApiError> {
    let state = state_of(req)?;
    let token = bearer_token(req).ok_or(ApiError::MissingToken)?;
    let claims = state.jwt.verify(&token, state.clock.now())?;
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
        let verified = verified(req);
        Box::pin(async move {
            let (state, claims) = verified?;
            ensure_standing(&state.pool, &claims).await?;
            Ok(Self(claims))
        })
    }
}

/// A kiosk's token (see [`KioskToken`]) whose device is not revoked.
#[derive(Debug, Clone)]
pub struct KioskTokenOfActiveDevice(pub Claims);

impl FromRequest for KioskTokenOfActiveDevice {
    type Error = ApiError;
    type Future = Checked<Self>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let verified = verified(req);
        Box::pin(async move {
            let (state, claims) = verified?;
            ensure_standing_on_active_device(&state.pool, &claims, Purpose::KioskCall).await?;
            Ok(Self(claims))
        })
    }
}
