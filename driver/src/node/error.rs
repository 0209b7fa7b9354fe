//! Errors of the node service, each carrying the gRPC code the CO should see.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

impl NodeError {
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        NodeError::Internal(format!("{what}: {e}"))
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::InvalidArgument(m) => Status::invalid_argument(m),
            NodeError::NotFound(m) => Status::not_found(m),
            NodeError::AlreadyExists(m) => Status::already_exists(m),
            NodeError::FailedPrecondition(m) => Status::failed_precondition(m),
            NodeError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            NodeError::Aborted(m) => Status::aborted(m),
            NodeError::Internal(m) => Status::internal(m),
        }
    }
}
