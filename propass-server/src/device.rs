//! Where a kiosk device stands, and what that lets its tokens do: the one
//! rule every device call passes — push (inside its transaction), pull,
//! refresh, the WebSocket upgrade and its heartbeat. A leaf: it is handed the
//! device's state; the database reads it.

use propass_protocol::{DeviceId, DeviceStatus};

use crate::error::ApiError;

/// What the checks of a device's calls need of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceState {
    pub status: DeviceStatus,
    /// Holds a device credential: password logins may not use its id.
    pub enrolled: bool,
    /// The epoch its access tokens must carry.
    pub token_epoch: i64,
}

/// Which kind of token makes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A password login's token (the seed client).
    Login,
    /// An enrolled device's access token, issued under `epoch`.
    Device { epoch: i64 },
}

/// Why a call is made: what the device must be for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Push, pull, WebSocket: the device must be active.
    KioskCall,
    /// Renewing a login token: a pending device may (it waits for approval
    /// with a live token), a revoked one may not.
    Refresh,
}

/// Admits a call of `caller` on `device`, whose record is `state`.
pub fn admit(
    device: &DeviceId,
    caller: Caller,
    state: Option<DeviceState>,
    purpose: Purpose,
) -> Result<(), ApiError> {
    let Some(state) = state else {
        return Err(ApiError::InvalidToken(format!(
            "device {device} is not known to this server: log in or enroll again"
        )));
    };
    match (caller, state.status) {
        (_, DeviceStatus::Revoked) => return Err(ApiError::DeviceRevoked(device.clone())),
        (Caller::Login, _) if state.enrolled => {
            return Err(ApiError::DeviceEnrolled(device.clone()))
        }
        (Caller::Device { epoch }, _) if epoch != state.token_epoch => {
            return Err(ApiError::InvalidToken(
                "this device's credentials were revoked (re-enrollment or credential reuse): enroll it again".into(),
            ))
        }
        (_, DeviceStatus::Pending) if purpose == Purpose::KioskCall => {
            return Err(ApiError::DevicePending(device.clone()))
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: DeviceStatus, enrolled: bool) -> Option<DeviceState> {
        Some(DeviceState {
            status,
            enrolled,
            token_epoch: 2,
        })
    }

    #[test]
    fn each_standing_admits_what_it_should() {
        let d = DeviceId::parse("k").unwrap();
        let dev = |epoch| Caller::Device { epoch };
        let call = Purpose::KioskCall;
        assert!(admit(&d, Caller::Login, state(DeviceStatus::Active, false), call).is_ok());
        assert!(admit(&d, dev(2), state(DeviceStatus::Active, true), call).is_ok());
        assert!(matches!(
            admit(&d, dev(1), state(DeviceStatus::Active, true), call),
            Err(ApiError::InvalidToken(_))
        ));
        assert!(matches!(
            admit(&d, Caller::Login, state(DeviceStatus::Active, true), call),
            Err(ApiError::DeviceEnrolled(_))
        ));
        assert!(matches!(
            admit(&d, Caller::Login, state(DeviceStatus::Pending, false), call),
            Err(ApiError::DevicePending(_))
        ));
        assert!(admit(
            &d,
            Caller::Login,
            state(DeviceStatus::Pending, false),
            Purpose::Refresh
        )
        .is_ok());
        assert!(matches!(
            admit(
                &d,
                Caller::Login,
                state(DeviceStatus::Revoked, false),
                Purpose::Refresh
            ),
            Err(ApiError::DeviceRevoked(_))
        ));
        assert!(matches!(
            admit(&d, Caller::Login, None, call),
            Err(ApiError::InvalidToken(_))
        ));
    }
}
