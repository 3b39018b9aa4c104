//! The reader on its own OS thread: libnfc's calls block (a wait for a tag
//! can last seconds), so they never run on the async runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use crate::card_reader::CardReader;
use crate::error::{NfcError, NfcResult};
use crate::reader::Reader;

/// Opens the reader on the reader thread (libnfc's handles stay there).
type Opener = Box<dyn FnMut() -> NfcResult<Box<dyn CardReader>> + Send>;
type Slot = Option<Box<dyn CardReader>>;
type Job = Box<dyn FnOnce(&mut Slot, &mut Opener, &AtomicBool) + Send>;

/// A handle to the reader thread. Cloneable; the thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct ReaderThread {
    tx: mpsc::Sender<Job>,
    cancel: Arc<AtomicBool>,
}

impl ReaderThread {
    /// Starts the thread for the libnfc reader named by `connstring` (or the
    /// first one), opened at the first job and again after it was unplugged.
    pub fn spawn(connstring: Option<String>) -> std::io::Result<Self> {
        Self::spawn_with(move || {
            Reader::open(connstring.as_deref()).map(|r| Box::new(r) as Box<dyn CardReader>)
        })
    }

    /// Starts the thread for the reader `open` returns (called on the thread).
    pub fn spawn_with(
        open: impl FnMut() -> NfcResult<Box<dyn CardReader>> + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let mut open: Opener = Box::new(open);
        std::thread::Builder::new()
            .name("nfc-reader".into())
            .spawn(move || {
                let mut reader: Slot = None;
                for job in rx {
                    // A panicking job (a bug) must not take the reader away for good.
                    let run = std::panic::AssertUnwindSafe(|| job(&mut reader, &mut open, &flag));
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
        F: FnOnce(&mut dyn CardReader, &AtomicBool) -> NfcResult<R> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |slot, open, cancel| {
            let _ = done.send(with_reader(slot, open, |r| f(r, cancel)));
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

/// Opens the reader if needed, runs `f`, and forgets a reader that was unplugged.
fn with_reader<R>(
    slot: &mut Slot,
    open: &mut Opener,
    f: impl FnOnce(&mut dyn CardReader) -> NfcResult<R>,
) -> NfcResult<R> {
    let reader = match slot {
        Some(r) => r,
        None => slot.insert(open()?),
    };
    let r = f(reader.as_mut());
    if matches!(r, Err(NfcError::ReaderUnplugged(_))) {
        *slot = None;
    }
    r
}
