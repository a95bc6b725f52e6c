//! Pure OCI types and parsers: digests, names and references, error codes, manifests. No I/O.

pub mod digest;
pub mod errors;
pub mod manifest;
pub mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use errors::ErrorCode;
pub use manifest::{Descriptor, ManifestInfo};
pub use name::{NameError, Reference, RepoName};
