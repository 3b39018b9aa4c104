//! Who made a test database, written as the database's comment: a run
//! killed before it could drop its databases leaves them recognisable, and
//! the next `cargo xtask` run on the same machine drops them — only those
//! whose maker is gone, so a run going on beside it keeps its own.

/// How every comment of a test database starts.
pub const OWNER_PREFIX: &str = "propass-test";

/// This machine's name, as the kernel has it.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// The comment a test database gets: this machine and this process.
pub fn owner_comment() -> String {
    format!(
        "{OWNER_PREFIX} host={} pid={}",
        this_host(),
        std::process::id()
    )
}

/// Whether a database commented `comment` was made by a process of this
/// machine that no longer runs.
pub fn abandoned(comment: &str) -> bool {
    abandoned_on(comment, &this_host(), |pid| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

fn abandoned_on(comment: &str, host: &str, alive: impl Fn(u32) -> bool) -> bool {
    let Some(rest) = comment.strip_prefix(OWNER_PREFIX) else {
        return false;
    };
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    match (field("host"), field("pid").and_then(|p| p.parse().ok())) {
        (Some(h), Some(pid)) => !host.is_empty() && h == host && !alive(pid),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gone_maker_on_this_machine_abandons_a_database() {
        let alive = |pid| pid == 7;
        let on = |c: &str| abandoned_on(c, "box", alive);
        assert!(on("propass-test host=box pid=8"));
        assert!(!on("propass-test host=box pid=7"), "its maker still runs");
        assert!(!on("propass-test host=other pid=8"), "another machine's");
        assert!(!on("propass-test host=box"), "no pid: not ours to judge");
        assert!(!on("a database of someone else"));
        assert!(!abandoned_on("propass-test host= pid=8", "", alive));
        assert!(owner_comment().starts_with(OWNER_PREFIX));
    }
}
