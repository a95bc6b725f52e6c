//! Handlers of mirrored repositories: manifests, blobs, tag lists and referrers served
//! from the cache tiers and filled from the upstream that `mirror::route` picked.

pub mod blobs;
pub mod listing;
pub mod manifests;
