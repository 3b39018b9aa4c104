//! Authentication, in leaves that never see the application state:
//! [`password`] hashing, [`tokens`] (claims and keys), the login
//! [`throttle`], and the [`checks`] that the request extractors
//! (`routes::extract`) and the WebSocket upgrade share.

pub mod checks;
pub mod password;
pub mod throttle;
pub mod tokens;

pub use checks::{bearer_token, ensure_standing, ensure_standing_on_active_device, Purpose};
pub use throttle::{LoginThrottle, ThrottleKey};
pub use tokens::{Claims, JwtKeys, Subject};
