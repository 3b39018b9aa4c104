//! The request extractors: what a handler takes to say which checks its
//! caller passed. The names say what is checked.

use std::future::{ready, Future, Ready};
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};

use crate::auth::{bearer_token, ensure_device_active, Claims};
use crate::error::ApiError;
use crate::state::AppState;

fn state_of(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))
}

/// A token with a valid signature that has not expired. Its device's
/// revocation is NOT checked: the handler does it itself (the push does it
/// inside its transaction, saving a round trip).
#[derive(Debug, Clone)]
pub struct ValidToken(pub Claims);

impl FromRequest for ValidToken {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let verify = || {
            let state = state_of(req)?;
            let token = bearer_token(req).ok_or(ApiError::MissingToken)?;
            Ok(Self(state.jwt.verify(&token, state.clock.now())?))
        };
        ready(verify())
    }
}

/// A valid, unexpired token whose device is not revoked.
#[derive(Debug, Clone)]
pub struct ValidTokenOfActiveDevice(pub Claims);

impl FromRequest for ValidTokenOfActiveDevice {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = state_of(req);
        let token = bearer_token(req);
        Box::pin(async move {
            let state = state?;
            let token = token.ok_or(ApiError::MissingToken)?;
            let claims = state.jwt.verify(&token, state.clock.now())?;
            ensure_device_active(&state.pool, &claims.device_id).await?;
            Ok(Self(claims))
        })
    }
}
