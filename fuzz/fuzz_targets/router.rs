//! `server::router::parse` on any path. Properties: the route is a faithful split of the
//! path (rendering it back gives the path), and a repository name that passes
//! `RepoName::parse` (the check every handler makes) is safe as a relative path.
#![no_main]

use agent_registry::oci::RepoName;
use agent_registry::web::route::{parse, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let route = parse(path);
    let _ = route.label();
    let rendered = match &route {
        Route::Tags(n) => Some(format!("/v2/{n}/tags/list")),
        Route::Manifest(n, r) => Some(format!("/v2/{n}/manifests/{r}")),
        Route::Blob(n, d) => Some(format!("/v2/{n}/blobs/{d}")),
        Route::Upload(n, id) => Some(format!("/v2/{n}/blobs/uploads/{id}")),
        Route::Referrers(n, d) => Some(format!("/v2/{n}/referrers/{d}")),
        Route::Admin(rest) => Some(format!("/admin/{rest}")),
        Route::UploadStart(n) => {
            let base = format!("/v2/{n}/blobs/uploads");
            assert!(
                path == base || path == format!("{base}/"),
                "{path:?} -> {route:?}"
            );
            None
        }
        _ => None,
    };
    if let Some(r) = rendered {
        assert_eq!(r, path, "{route:?}");
    }
    // The last segment of a resource route holds no `/`.
    if let Route::Manifest(_, last) | Route::Blob(_, last) | Route::Referrers(_, last) = route {
        assert!(!last.contains('/'), "{path:?} -> {route:?}");
    }
    if let Some(name) = route.repo() {
        if let Ok(repo) = RepoName::parse(name) {
            let s = repo.as_str();
            assert_eq!(s, name);
            assert!(!s.starts_with('/') && !s.ends_with('/'), "{s:?}");
            assert!(s
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
        }
    }
});
