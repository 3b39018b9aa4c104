//! Child processes that never outlive their test.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// SIGTERM, then SIGKILL when the child has not exited after `grace`.
/// Returns how long the child took to exit after SIGTERM, if it did.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<Duration> {
    if let Ok(Some(_)) = child.try_wait() {
        return Some(Duration::ZERO);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A child process stopped (SIGTERM, then SIGKILL after the grace period)
/// when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct ProcessGuard {
    child: Child,
    grace: Duration,
}

impl ProcessGuard {
    /// Takes charge of `child`, with 15 s of grace on drop.
    pub fn new(child: Child) -> Self {
        Self {
            child,
            grace: Duration::from_secs(15),
        }
    }

    /// Starts `cmd`; `what` names it in the error.
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self, String> {
        cmd.spawn()
            .map(Self::new)
            .map_err(|e| format!("cannot start {what}: {e}"))
    }

    /// The child.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Stops it now (SIGTERM, then SIGKILL after the grace period); see [`terminate`].
    pub fn terminate(&mut self) -> Option<Duration> {
        terminate(&mut self.child, self.grace)
    }

    /// SIGKILL, at once: a crash, as far as the child can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.terminate();
    }
}
