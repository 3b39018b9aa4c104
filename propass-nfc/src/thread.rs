//! The reader on its own OS thread: libnfc's calls block (a wait for a tag
//! can last seconds), so they never run on the async runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use crate::error::{NfcError, NfcResult};
use crate::reader::Reader;

type Job = Box<dyn FnOnce(&mut Option<Reader>, &Option<String>, &AtomicBool) + Send>;

/// A handle to the reader thread. Cloneable; the thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct ReaderThread {
    tx: mpsc::Sender<Job>,
    cancel: Arc<AtomicBool>,
}

impl ReaderThread {
    /// Starts the thread; the reader (named by `connstring`, or the first
    /// one) is opened at the first job, and again after it was unplugged.
    pub fn spawn(connstring: Option<String>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        std::thread::Builder::new()
            .name("nfc-reader".into())
            .spawn(move || {
                let mut reader: Option<Reader> = None;
                for job in rx {
                    // A panicking job (a bug) must not take the reader away for good.
                    let run = std::panic::AssertUnwindSafe(|| job(&mut reader, &connstring, &flag));
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("reader job panicked; closing the reader");
                        reader = None;
                    }
                }
            })?;
        Ok(Self { tx, cancel })
    }

    /// Runs `f` with the open reader on the reader thread.
    pub async fn run<R, F>(&self, f: F) -> NfcResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Reader, &AtomicBool) -> NfcResult<R> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |slot, connstring, cancel| {
            let r = (|| {
                if slot.is_none() {
                    *slot = Some(Reader::open(connstring.as_deref())?);
                }
                let reader = slot.as_mut().expect("opened");
                let r = f(reader, cancel);
                if matches!(r, Err(NfcError::ReaderUnplugged(_))) {
                    *slot = None;
                }
                r
            })();
            let _ = done.send(r);
        });
        self.tx
            .send(job)
            .map_err(|_| NfcError::ReaderUnplugged("reader thread stopped".into()))?;
        result
            .await
            .map_err(|_| NfcError::ReaderUnplugged("reader thread stopped".into()))?
    }

    /// Starts a new flow: forgets a cancel of an earlier one. A cancel then
    /// lasts for every job of the flow, also one queued or between two steps.
    pub fn begin(&self) {
        self.cancel.store(false, Ordering::SeqCst);
    }

    /// Cancels the flow in progress (its waits fail with `Cancelled`).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}
