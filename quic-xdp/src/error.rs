use std::path::PathBuf;

/// Why an endpoint could not be built or configured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    #[error("cannot read {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error("cannot start the engine thread: {0}")]
    Engine(#[from] std::io::Error),
    #[error("the endpoint already serves connections with a handler")]
    AlreadyServing,
}
