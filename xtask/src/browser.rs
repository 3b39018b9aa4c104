//! What the dashboard's browser test needs: Debian's Chromium (never a
//! browser download) and playwright-core from `xtask/browser`'s lock file.
//! The test itself is an end-to-end scenario of propass-agent: it starts the
//! real server and agent and drives `xtask/browser/dashboard.mjs`.

use std::path::Path;

use crate::sys::{self, root};

/// Where Debian's package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Installs what is missing.
pub fn ensure() -> Result<(), String> {
    if !Path::new(CHROMIUM).is_file() {
        sys::apt_install(&["chromium"])?;
    }
    sys::npm_ci(&root().join("xtask/browser"), "the browser test's")
}
