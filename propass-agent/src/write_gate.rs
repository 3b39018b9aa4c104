//! The point of no return of a copy: once a flow starts writing a blank it
//! must finish and record the card, so shutdown waits for it; a flow that has
//! not started writing when shutdown begins never starts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Counts the flows writing a blank; closed once the agent stops.
#[derive(Default)]
pub struct WriteGate {
    closed: AtomicBool,
    writing: AtomicUsize,
    idle: Notify,
}

/// Held while a blank is written and its card recorded.
pub struct Writing<'a>(&'a WriteGate);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.0.writing.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl WriteGate {
    /// Lets a flow start writing, unless the agent is stopping. The count
    /// goes up before the check, and `close` sets the flag before reading the
    /// count: a flow and a shutdown that race always see each other.
    pub fn enter(&self) -> Option<Writing<'_>> {
        self.writing.fetch_add(1, Ordering::SeqCst);
        let guard = Writing(self);
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        Some(guard)
    }

    /// Whether the agent is stopping.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Refuses new writes from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Waits, at most `grace`, for the writes under way; whether they all
    /// finished.
    pub async fn drained(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.writing.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_waits_for_writes_under_way_and_refuses_new_ones() {
        let gate = std::sync::Arc::new(WriteGate::default());
        let writing = gate.enter().expect("open gate");
        gate.close();
        assert!(gate.enter().is_none(), "a closed gate refuses new writes");
        let g = gate.clone();
        let closing = tokio::spawn(async move { g.drained(Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        assert!(!closing.is_finished());
        drop(writing);
        assert!(closing.await.unwrap(), "all writes finished");
    }

    #[tokio::test]
    async fn a_write_that_outlasts_the_grace_is_reported() {
        let gate = WriteGate::default();
        let _writing = gate.enter().unwrap();
        gate.close();
        assert!(!gate.drained(Duration::from_millis(10)).await);
    }
}
