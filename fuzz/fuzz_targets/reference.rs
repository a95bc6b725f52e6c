//! Repository names, manifest references and digests (`oci::name`, `oci::digest`).
//! Properties: whatever parses renders back to the exact input, a digest's hex is
//! lowercase of its algorithm's length, and a valid name is safe as a relative path.
#![no_main]

use agent_registry::oci::{Algorithm, Digest, Reference, RepoName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        let len = match d.algorithm() {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        };
        assert_eq!(d.hex().len(), len, "{s:?}");
        assert!(d
            .hex()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(&d));
    }
    match Reference::parse(s) {
        Ok(r) => {
            assert_eq!(r.to_string(), s);
            if let Reference::Tag(t) = &r {
                assert!(
                    !t.is_empty() && t.len() <= 128 && !t.contains(['/', ':']),
                    "{t:?}"
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(n) = RepoName::parse(s) {
        assert_eq!(n.as_str(), s);
        assert!(s.len() <= 255);
        assert!(s
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
    }
});
