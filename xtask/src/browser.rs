//! What the dashboard's browser test needs: Debian's Chromium (never a
//! browser download) and playwright-core from `xtask/browser`'s lock file.
//! The test itself is an end-to-end scenario of propass-agent: it starts the
//! real server and agent and drives `xtask/browser/dashboard.mjs`.

use std::path::Path;

use crate::sys::{self, root};

/// Where Debian's package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Installs what is missing. `CHROMIUM=/path` names another Chromium or
/// Chrome (Ubuntu ships Chromium as a snap only, which containers lack).
pub fn ensure() -> Result<(), String> {
    let named = std::env::var_os("CHROMIUM").filter(|p| Path::new(p).is_file());
    if named.is_none() && !Path::new(CHROMIUM).is_file() {
        sys::apt_install(&["chromium"])?;
        if !Path::new(CHROMIUM).is_file() {
            return Err(format!(
                "{CHROMIUM} is still missing after installing the chromium package (on Ubuntu it is a snap): \
                 install Chromium or Google Chrome and set CHROMIUM=/path/to/it"
            ));
        }
    }
    sys::npm_ci(&root().join("xtask/browser"), "the browser test's")
}
