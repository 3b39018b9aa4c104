//! What xtask's commands need of the system, and installing it: the
//! distribution's packages through apt-get as root, or the one command to
//! run for a user who is not.

use std::path::PathBuf;
use std::process::Command;

use crate::sys::{apt_install, distribution_has_chromium, on_path};

/// What a command needs of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Building and running: a C toolchain, libnfc's development files,
    /// libclang for nfc1-sys's bindgen, PostgreSQL (demo, db, package, chaos).
    Build,
    /// And HAProxy (the fleet benchmark runs two instances behind it).
    Bench,
    /// And what the tests drive: libnfc's tools, HAProxy, Node.js, Chromium.
    Test,
}

/// Debian packages found by a program they install, and the least a
/// command must need for them. libnfc-bin's `nfc-mfclassic` reads cards
/// copied onto the emulated reader in the tests.
const PACKAGES: &[(&str, &str, Needs)] = &[
    // A C toolchain: nfc1-sys and ring build C.
    ("build-essential", "cc", Needs::Build),
    ("pkg-config", "pkg-config", Needs::Build),
    ("libnfc-bin", "nfc-mfclassic", Needs::Test),
    // The multi-instance test and `bench fleet` run deploy/haproxy.cfg.
    ("haproxy", "haproxy", Needs::Bench),
];

/// Whether libnfc's development files are installed (pkg-config knows libnfc).
fn has_libnfc() -> bool {
    Command::new("pkg-config")
        .args(["--exists", "libnfc"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether bindgen (run by nfc1-sys) finds libclang and clang's own headers
/// (`stdbool.h`): what the distribution's unversioned `libclang-dev` brings
/// (Debian 12: LLVM 14, Debian 13: 19, Ubuntu 22.04: 14, 24.04: 18).
fn has_libclang() -> bool {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ];
    let lib = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .map(|e| e.path().join("lib"))
        .chain(dirs.iter().map(PathBuf::from))
        .any(|d| {
            std::fs::read_dir(&d)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    {
                        let n = e.file_name().to_string_lossy().into_owned();
                        // libclang.so* or libclang-14.so*, not libclang-cpp.
                        (n.starts_with("libclang.so") || n.starts_with("libclang-"))
                            && !n.starts_with("libclang-cpp")
                            && n.contains(".so")
                    }
                })
        });
    let headers = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .any(|e| {
            std::fs::read_dir(e.path().join("lib/clang"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|v| v.path().join("include/stdbool.h").is_file())
        });
    lib && headers
}

/// Installs missing system packages with apt-get as root, or says exactly what to run:
/// PostgreSQL, pkg-config, libnfc's development files and the libclang that
/// nfc1-sys's bindgen needs.
pub fn ensure_packages(needs: Needs) -> Result<(), String> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, prog, least)| *least <= needs && !on_path(prog))
        .map(|(pkg, _, _)| *pkg)
        .collect();
    if crate::pg::find_bin_dir().is_none() {
        missing.push("postgresql");
    }
    if !on_path("pkg-config") || !has_libnfc() {
        missing.push("libnfc-dev");
    }
    if !has_libclang() {
        missing.push("libclang-dev");
    }
    // Node.js for the seed client's check and the browser test, and the
    // browser itself (unless CHROMIUM names one): in the same one command.
    if needs == Needs::Test && (!on_path("node") || !on_path("npm")) {
        missing.extend(["nodejs", "npm"]);
    }
    // Where apt has no real Chromium, the commands that need one (test,
    // e2e) stop in `browser::ensure` and say what to do.
    if needs == Needs::Test && crate::browser::needs_chromium() && distribution_has_chromium() {
        missing.push("chromium");
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)?;
    if crate::pg::find_bin_dir().is_none() {
        return Err("PostgreSQL's initdb is still not found after installing postgresql".into());
    }
    if !has_libnfc() {
        return Err("pkg-config still does not find libnfc after installing libnfc-dev".into());
    }
    if !has_libclang() {
        return Err(
            "libclang (for nfc1-sys's bindgen) is still not found after installing libclang-dev"
                .into(),
        );
    }
    Ok(())
}
