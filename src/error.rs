//! The one error type of the request path. It knows which side failed: the client
//! (4xx with an OCI code), an upstream (502/504) or this server (500).

use crate::oci::ErrorCode;
use crate::storage::{IngestError, MetaError, StorageError, UploadError};
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

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e.is_out_of_space() {
            true => Error::insufficient_storage(&e),
            false => Error::Internal(e.to_string()),
        }
    }
}

impl From<MetaError> for Error {
    fn from(e: MetaError) -> Self {
        match e.is_out_of_space() {
            true => Error::insufficient_storage(&e),
            false => Error::Internal(e.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        match crate::storage::is_out_of_space(&e) {
            true => Error::insufficient_storage(&e),
            false => Error::Internal(format!("storage i/o: {e}")),
        }
    }
}

impl From<IngestError> for Error {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Body(m) => Error::bad_request(
                ErrorCode::BlobUploadInvalid,
                format!("request body broke off: {m}"),
            ),
            IngestError::Storage(s) => s.into(),
        }
    }
}

impl From<UploadError> for Error {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Unknown(id) => {
                Error::not_found(ErrorCode::BlobUploadUnknown, format!("upload {id} unknown"))
            }
            UploadError::OutOfOrder { .. } | UploadError::RangeMismatch { .. } => Error::client(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
                e.to_string(),
            ),
            UploadError::Mismatch { actual } => Error::bad_request(
                ErrorCode::DigestInvalid,
                format!("digest mismatch: uploaded content has digest {actual}"),
            ),
            UploadError::Ingest(i) => i.into(),
        }
    }
}
