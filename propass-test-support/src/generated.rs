//! Files (or regions of files) generated from code — configuration tables,
//! sample configuration files — checked against what the code generates now.

use std::path::Path;

/// Fails when `path` (or its region between `markers`, the end marker
/// excluded) is not `fresh`; with `PROPASS_BLESS=1` rewrites it instead.
/// `how` says how to regenerate it.
pub fn assert_generated(path: &Path, markers: Option<(&str, &str)>, fresh: &str, how: &str) {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let (before, now, after) = match markers {
        Some((begin, end)) => {
            let a = current
                .find(begin)
                .unwrap_or_else(|| panic!("{begin:?} not found in {}", path.display()))
                + begin.len();
            let b = current
                .find(end)
                .unwrap_or_else(|| panic!("{end:?} not found in {}", path.display()));
            (&current[..a], &current[a..b], &current[b..])
        }
        None => ("", current.as_str(), ""),
    };
    if now == fresh {
        return;
    }
    if std::env::var_os("PROPASS_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(path, format!("{before}{fresh}{after}")).unwrap();
        return;
    }
    panic!("{} is stale; regenerate it with\n  {how}", path.display());
}

/// The assignments a sample configuration file shows commented out
/// (`#key = value` lines), uncommented: what it says the defaults are.
pub fn uncommented_assignments(sample: &str) -> String {
    sample
        .lines()
        .filter_map(|l| {
            l.strip_prefix('#')
                .filter(|l| l.contains(" = ") && !l.starts_with(' '))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}
