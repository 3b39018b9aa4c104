//! Checks shared by the request extractors and the WebSocket upgrade: the
//! standing of a token's user (login tokens) and of its device.

use actix_web::http::header;
use actix_web::HttpRequest;
use diesel_async::AsyncPgConnection;

use super::tokens::Claims;
use crate::db::users::User;
use crate::db::{self, PgPool};
use crate::device::{self, Purpose};
use crate::error::ApiError;

/// The bearer token of a request, if any.
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// For a login token, refuses a user who is gone, disabled, or changed its
/// password since (its epoch moved), or whose role makes no kiosk call
/// (nor renews a token for one); returns the user as it is now. A device
/// token names no user: `None`. The device is NOT checked (the push does it
/// inside its transaction).
pub async fn ensure_standing(pool: &PgPool, claims: &Claims) -> Result<Option<User>, ApiError> {
    if claims.user().is_none() {
        return Ok(None);
    }
    standing(&mut *pool.get().await?, claims).await
}

/// [`ensure_standing`], and the token's device admitted for `purpose`
/// (see [`device::admit`]), on one connection: the checks of a call made on a
/// device (pull, refresh, a WebSocket and its heartbeat).
pub async fn ensure_standing_on_active_device(
    pool: &PgPool,
    claims: &Claims,
    purpose: Purpose,
) -> Result<Option<User>, ApiError> {
    let mut conn = pool.get().await?;
    let state = db::devices::state(&mut conn, &claims.device_id).await?;
    device::admit(&claims.device_id, claims.caller(), state, purpose)?;
    if claims.user().is_none() {
        return Ok(None);
    }
    standing(&mut conn, claims).await
}

async fn standing(conn: &mut AsyncPgConnection, claims: &Claims) -> Result<Option<User>, ApiError> {
    let Some((uid, username, _)) = claims.user() else {
        return Ok(None);
    };
    let user = db::users::by_id(conn, uid)
        .await?
        .filter(|u| u.username == username)
        .ok_or_else(|| ApiError::InvalidToken("the token's user no longer exists".into()))?;
    if user.disabled {
        return Err(ApiError::InvalidToken("this account is disabled".into()));
    }
    if user.token_epoch != claims.epoch {
        return Err(ApiError::InvalidToken(
            "this token was revoked (the account's password or role changed): log in again".into(),
        ));
    }
    // Renewing too: an operator's login token makes no kiosk call, so it
    // is not kept alive either.
    if !user.role.acts_as_kiosk() {
        return Err(ApiError::Forbidden(format!(
            "a user with role {} does not make a kiosk's calls: log the kiosk in with a kiosk account",
            user.role.as_str()
        )));
    }
    Ok(Some(user))
}
