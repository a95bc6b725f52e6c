//! The one error type of the request path. It knows which side failed: the client
//! (4xx with an OCI code), an upstream (502/504) or this server (500).

use crate::oci::ErrorCode;
use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client asked for something wrong or missing.
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: ErrorCode,
        message: String,
    },
    /// The client is over its rate limit: 429 `TOOMANYREQUESTS` with `Retry-After`.
    #[error("{message}")]
    TooManyRequests {
        /// When the client may try again; sent rounded up to whole seconds, at least 1.
        retry_after: std::time::Duration,
        message: String,
    },
    /// 503 with `Retry-After`: the upstream this needs is down or rate-limited and
    /// nothing stale can stand in (a blob).
    #[error("{message}")]
    Unavailable {
        /// Sent rounded up to whole seconds, at least 1.
        retry_after: std::time::Duration,
        message: String,
    },
    /// 401 with a `WWW-Authenticate` challenge (the token flow's realm, service, scope).
    #[error("{message}")]
    Unauthorized { challenge: String, message: String },
    /// Something in this server failed; details go to the log, not the client.
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn client(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Client {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::client(StatusCode::NOT_FOUND, code, message)
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::client(StatusCode::BAD_REQUEST, code, message)
    }

    /// 507: the registry's disk is full. The client may retry once space is freed.
    pub fn insufficient_storage(cause: &dyn std::fmt::Display) -> Error {
        Error::client(
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::Unknown,
            format!("insufficient storage space: {cause}"),
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Client { status, .. } => *status,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        match is_out_of_space(&e) {
            true => Error::insufficient_storage(&e),
            false => Error::Internal(format!("storage i/o: {e}")),
        }
    }
}

/// Whether `e` means the disk (or the owner's quota) is full: ENOSPC, EDQUOT.
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT)) || e.kind() == std::io::ErrorKind::StorageFull
}
