//! Randomness, behind a trait, for the same reason as [`crate::clock`]:
//! [`OsRng`] is the only place in the server that draws from the operating
//! system (`clippy.toml` disallows the direct calls elsewhere).

use uuid::Uuid;

/// Where the server's logic gets unpredictable values.
pub trait Rng: Send + Sync + 'static {
    /// A unique, unguessable token id (`jti`).
    fn token_id(&self) -> Uuid;
    /// 32 unguessable bytes (enrollment codes, device credentials).
    fn secret_bytes(&self) -> [u8; 32];
}

/// The operating system's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRng;

impl Rng for OsRng {
    #[allow(clippy::disallowed_methods)]
    fn token_id(&self) -> Uuid {
        Uuid::new_v4()
    }

    #[allow(clippy::disallowed_methods)]
    fn secret_bytes(&self) -> [u8; 32] {
        use rand::Rng;
        let mut b = [0; 32];
        rand::rng().fill_bytes(&mut b);
        b
    }
}
