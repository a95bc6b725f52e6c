//! Request routing: parses `/v2/<name>/(manifests|blobs|tags|referrers)/...` from the right,
//! since a repository name may have any number of `/` segments.
//!
//! The path is used exactly as received, never percent-decoded: a name with `%2f`, `..`
//! or an empty segment fails the name grammar, so no request can name a path outside
//! the data directory.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Base,
    Catalog,
    /// `/v2/_search`: hosted images by name, tag, capability, author, date, size.
    Search,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
    Healthz,
    Readyz,
    Health,
    Metrics,
    /// The token endpoint of the registry token flow.
    Token,
    /// `/admin/<rest>`.
    Admin(&'a str),
    NotFound,
}

/// Every value [`Route::label`] returns (the `route` label of the request metrics).
pub const LABELS: &[&str] = &[
    "base",
    "catalog",
    "search",
    "tags",
    "manifest",
    "blob",
    "upload",
    "referrers",
    "health",
    "metrics",
    "token",
    "admin",
    "not_found",
];

impl Route<'_> {
    /// A stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Search => "search",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
            Route::Healthz | Route::Readyz | Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Token => "token",
            Route::Admin(_) => "admin",
            Route::NotFound => "not_found",
        }
    }

    /// The repository the request is about, if any.
    pub fn repo(&self) -> Option<&str> {
        match *self {
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
            _ => None,
        }
    }
}

pub fn parse(path: &str) -> Route<'_> {
    match path {
        "/v2" | "/v2/" => return Route::Base,
        "/v2/_catalog" => return Route::Catalog,
        "/v2/_search" => return Route::Search,
        "/healthz" => return Route::Healthz,
        "/readyz" => return Route::Readyz,
        "/health" => return Route::Health,
        "/metrics" => return Route::Metrics,
        "/token" => return Route::Token,
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        return Route::Admin(rest);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::NotFound;
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags(name);
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Route::UploadStart(name);
    }
    let Some((head, last)) = rest.rsplit_once('/') else {
        return Route::NotFound;
    };
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Route::Upload(name, last);
    }
    let Some((name, kind)) = head.rsplit_once('/') else {
        return Route::NotFound;
    };
    match kind {
        "manifests" => Route::Manifest(name, last),
        "blobs" => Route::Blob(name, last),
        "referrers" => Route::Referrers(name, last),
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expected: Route<'_>) {
        assert_eq!(parse(path), expected, "{path}");
    }

    #[test]
    fn labels_lists_every_label() {
        let paths = [
            "/v2/",
            "/v2/_catalog",
            "/v2/_search",
            "/v2/a/tags/list",
            "/v2/a/manifests/v1",
            "/v2/a/blobs/sha256:1",
            "/v2/a/blobs/uploads/",
            "/v2/a/referrers/sha256:1",
            "/healthz",
            "/metrics",
            "/token",
            "/admin/x",
            "/nope",
        ];
        let mut seen: Vec<&str> = paths.iter().map(|p| parse(p).label()).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut all = LABELS.to_vec();
        all.sort_unstable();
        assert_eq!(seen, all);
        for r in [
            Route::Readyz,
            Route::Health,
            Route::Upload("a", "b"),
            Route::NotFound,
        ] {
            assert!(LABELS.contains(&r.label()), "{r:?}");
        }
    }

    #[test]
    fn routes() {
        check("/v2/", Route::Base);
        check("/v2", Route::Base);
        check("/v2/_catalog", Route::Catalog);
        check("/metrics", Route::Metrics);
        check("/token", Route::Token);
        check("/admin/config", Route::Admin("config"));
        check("/admin", Route::NotFound);
        check("/v2/a/b/c/tags/list", Route::Tags("a/b/c"));
        check("/v2/a/manifests/latest", Route::Manifest("a", "latest"));
        check(
            "/v2/lib/x/manifests/sha256:abc",
            Route::Manifest("lib/x", "sha256:abc"),
        );
        check("/v2/a/b/blobs/sha256:1", Route::Blob("a/b", "sha256:1"));
        check("/v2/a/b/blobs/uploads/", Route::UploadStart("a/b"));
        check("/v2/a/b/blobs/uploads", Route::UploadStart("a/b"));
        check("/v2/a/b/blobs/uploads/xyz", Route::Upload("a/b", "xyz"));
        check(
            "/v2/a/referrers/sha256:1",
            Route::Referrers("a", "sha256:1"),
        );
        // A repository may itself be called "manifests" or "blobs".
        check(
            "/v2/manifests/manifests/v1",
            Route::Manifest("manifests", "v1"),
        );
        check("/v2/blobs/blobs/sha256:1", Route::Blob("blobs", "sha256:1"));
        check("/v2/a/other/x", Route::NotFound);
        check("/v2/x", Route::NotFound);
        check("/etc/passwd", Route::NotFound);
        // Encoded or dotted names reach the handler raw and fail the name grammar there.
        check(
            "/v2/a%2f..%2fb/manifests/v1",
            Route::Manifest("a%2f..%2fb", "v1"),
        );
    }
}
