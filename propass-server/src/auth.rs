//! Authentication, in leaves that never see the application state:
//! [`password`] hashing, [`tokens`] (claims and keys), the device [`secrets`] (enrollment codes, refresh
//! credentials), and the [`checks`] that the request extractors
//! (`routes::extract`) and the WebSocket upgrade share.

pub mod checks;
pub mod password;
pub mod secrets;
pub mod tokens;

pub use crate::device::Purpose;
pub use checks::{bearer_token, ensure_standing, ensure_standing_on_active_device};
pub use tokens::{Claims, JwtKeys, Subject, TokenType};
