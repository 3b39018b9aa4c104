//! What the dashboard's browser test needs: Debian's Chromium (never a
//! browser download) and playwright-core from `xtask/browser`'s lock file.
//! The test itself is an end-to-end scenario of propass-agent: it starts the
//! real server and agent and drives `xtask/browser/dashboard.mjs`.

use std::path::Path;

use crate::sys::{self, root};

/// Where Debian's package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether Debian's Chromium is to be installed: none at [`CHROMIUM`], and
/// `CHROMIUM=/path` names no other (Ubuntu ships Chromium as a snap only,
/// which containers lack: point it at Chrome or another build).
pub fn needs_chromium() -> bool {
    let named = std::env::var_os("CHROMIUM").filter(|p| Path::new(p).is_file());
    named.is_none() && !Path::new(CHROMIUM).is_file()
}

/// The browser (installed with the other packages by `ensure_packages`),
/// then playwright-core from the lock file.
pub fn ensure() -> Result<(), String> {
    if needs_chromium() {
        let why = if sys::distribution_has_chromium() {
            format!("{CHROMIUM} is missing although the chromium package was asked for")
        } else {
            "this distribution ships Chromium only as a snap (Ubuntu), which the dashboard's browser test cannot drive"
                .to_owned()
        };
        return Err(format!(
            "{why}: install Google Chrome or another Chromium build and set CHROMIUM=/path/to/it"
        ));
    }
    sys::npm_ci(&root().join("xtask/browser"), "the browser test's")
}
