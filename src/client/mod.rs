//! The `agent` client's local side: the image store (an OCI image layout under
//! `~/.aac/images`), building images from a directory, loading and saving archives, and
//! listing. No HTTP here: push and pull are built on [`store::Store`].

pub mod archive;
pub mod build;
pub mod ignore;
pub mod list;
pub mod store;

pub use store::Store;
