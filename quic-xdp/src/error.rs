use std::path::PathBuf;

/// Why an endpoint could not be built or configured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The datapath could not be opened, or privileges not dropped.
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    /// A certificate or key file could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Builder settings that cannot be combined or are out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// rustls rejected the TLS configuration, or no randomness was
    /// available for the keys.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    /// An engine thread could not be spawned or failed to start.
    #[error("cannot start the engine thread: {0}")]
    Engine(#[from] std::io::Error),
    /// `Endpoint::serve` was called when a handler was already set.
    #[error("the endpoint already serves connections with a handler")]
    AlreadyServing,
}
