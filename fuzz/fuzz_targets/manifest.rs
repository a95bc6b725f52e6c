//! `oci::manifest::parse` on any body, under each Content-Type the registry sees.
//! Properties: only a JSON object is accepted, the stored media type is non-empty and is
//! the Content-Type when one is sent, an image manifest always references its config
//! blob, and every digest it reports re-parses.
#![no_main]

use agent_registry::oci::manifest::{self, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use agent_registry::oci::Digest;
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 6] = [
    "",
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_LIST,
    "application/vnd.example+json; charset=utf-8",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let ct = TYPES[usize::from(selector) % TYPES.len()];
    let Ok(info) = manifest::parse(body, ct) else {
        return;
    };
    let ct = ct.split(';').next().unwrap_or("").trim();
    if !ct.is_empty() {
        assert_eq!(info.media_type, ct);
    }
    assert!(!info.media_type.is_empty());
    assert_eq!(
        body.trim_ascii_start().first(),
        Some(&b'{'),
        "accepted a manifest that is not a JSON object"
    );
    if info.media_type == OCI_MANIFEST || info.media_type == DOCKER_MANIFEST {
        assert!(
            !info.blobs.is_empty(),
            "image manifest without its config blob"
        );
    }
    for d in info.blobs.iter().chain(&info.children).chain(&info.subject) {
        assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(d));
    }
});
