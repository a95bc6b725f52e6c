//! The distribution-spec error codes and the JSON envelope they travel in.

use serde::{Deserialize, Serialize};

/// Error codes of the OCI distribution spec (plus the few Docker adds). The same enum
/// renders our errors and parses upstream error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    Toomanyrequests,
    RangeInvalid,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Toomanyrequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<ErrorEntry>,
}

/// Renders `{"errors":[{"code":..,"message":..}]}`.
pub fn error_body(code: ErrorCode, message: &str) -> Vec<u8> {
    let body = ErrorBody {
        errors: vec![ErrorEntry {
            code,
            message: message.to_string(),
            detail: None,
        }],
    };
    serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"errors\":[]}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_codes() {
        let b = error_body(ErrorCode::ManifestBlobUnknown, "blob x unknown");
        let parsed: ErrorBody = serde_json::from_slice(&b).unwrap();
        assert_eq!(parsed.errors[0].code, ErrorCode::ManifestBlobUnknown);
        let s = String::from_utf8(b).unwrap();
        assert!(s.contains("\"MANIFEST_BLOB_UNKNOWN\""), "{s}");
        let other: ErrorBody =
            serde_json::from_str(r#"{"errors":[{"code":"SOMETHING_NEW"}]}"#).unwrap();
        assert_eq!(other.errors[0].code, ErrorCode::Unknown);
    }
}
