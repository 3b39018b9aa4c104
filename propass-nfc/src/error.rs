//! What can go wrong at the reader, said so that the person at the kiosk
//! knows what to do.

/// Reader and tag errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NfcError {
    /// No reader found or the named one cannot be opened.
    #[error("no NFC reader found{0}: check that it is plugged in")]
    NoReader(String),
    /// The reader stopped answering.
    #[error("the NFC reader stopped answering ({0}): check its cable, then try again")]
    ReaderUnplugged(String),
    /// Nothing on the reader within the wait.
    #[error("no card on the reader: place the card flat on the reader")]
    NoTag,
    /// More than one card in the field.
    #[error("two cards on the reader: leave only one card on it")]
    TwoTags,
    /// The card cannot take a new UID.
    #[error("this card cannot be written ({0}): use a blank magic card (Gen1a or Gen2/CUID)")]
    NotWritable(String),
    /// The card refused the keys.
    #[error("the card refused authentication: it is not a blank with factory keys")]
    AuthFailed,
    /// The card left the field during an operation (before anything was written).
    #[error("the card was removed during the operation; nothing was recorded: start again")]
    TagRemoved,
    /// The card was (or may have been) written but does not read back as expected.
    #[error("verification failed: {what}")]
    VerifyFailed {
        /// What did not read back — never the card's bytes: a UID is what
        /// it takes to clone a badge, and this text reaches logs.
        what: String,
    },
    /// The UID or block 0 is not something we can write safely.
    #[error("refusing to write: {0}")]
    InvalidBlock0(String),
    /// A badge our blanks cannot copy.
    #[error("this badge cannot be copied: {0}")]
    NotCopyable(String),
    /// A whole-badge copy failed at a sector once writing had begun: the
    /// blank may hold part of the badge.
    #[error("the copy failed at sector {sector} ({what}); the blank may hold part of the badge")]
    SectorFailed {
        /// The sector.
        sector: u8,
        /// What went wrong there.
        what: String,
    },
    /// The wait was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Result of reader operations.
pub type NfcResult<T> = Result<T, NfcError>;
