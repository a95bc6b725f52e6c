//! Small pieces of HTTP the client needs: `Retry-After` values, redirect targets and
//! origins, and error chains rendered as one lowercase line.

use http::header::{self, HeaderMap};
use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

/// `Retry-After` as seconds or an HTTP date (a date in the past is zero).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The absolute URL a redirect points to, resolved against `current`.
pub(super) fn location(current: &str, headers: &HeaderMap) -> Option<String> {
    let loc = headers.get(header::LOCATION)?.to_str().ok()?.trim();
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return Some(loc.to_string());
    }
    let uri: http::Uri = current.parse().ok()?;
    let scheme = uri.scheme_str()?;
    if let Some(rest) = loc.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    let authority = uri.authority()?;
    if loc.starts_with('/') {
        return Some(format!("{scheme}://{authority}{loc}"));
    }
    let dir = uri.path().rsplit_once('/').map_or("", |(d, _)| d);
    Some(format!("{scheme}://{authority}{dir}/{loc}"))
}

/// `scheme://host[:port]`, lowercased, for comparing origins.
pub(super) fn origin(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}",
            u.scheme_str().unwrap_or_default(),
            u.authority().map(|a| a.as_str()).unwrap_or_default()
        )
        .to_ascii_lowercase(),
        Err(_) => url.to_ascii_lowercase(),
    }
}

/// An error and its causes as `a: b: c`, each part starting lowercase, repeats dropped.
pub(super) fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in causes(e) {
        let text = lower_first(&cause.to_string());
        if !text.is_empty() && !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// An error and its causes. An `io::Error` wrapping another error is followed into
/// that error itself (its `source()` would skip it): TLS failures arrive as a rustls
/// error inside an `io::Error` inside another `io::Error`.
pub(super) fn causes<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&c| {
        match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => c.source(),
        }
    })
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && b.is_lowercase() => {
            a.to_lowercase().chain(s.chars().skip(1)).collect()
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn redirect_targets() {
        let mut h = HeaderMap::new();
        let cur = "https://registry-1.docker.io/v2/library/a/blobs/sha256:00";
        for (loc, want) in [
            ("https://cdn.example/x?sig=1", "https://cdn.example/x?sig=1"),
            ("//cdn.example/y", "https://cdn.example/y"),
            ("/v2/other", "https://registry-1.docker.io/v2/other"),
            (
                "sha256:11",
                "https://registry-1.docker.io/v2/library/a/blobs/sha256:11",
            ),
        ] {
            h.insert(header::LOCATION, HeaderValue::from_static(loc));
            assert_eq!(location(cur, &h).as_deref(), Some(want), "{loc}");
        }
        assert_eq!(
            origin("HTTPS://Registry-1.docker.io/v2/"),
            "https://registry-1.docker.io"
        );
        assert_ne!(origin("https://a:5000/x"), origin("https://a/x"));
    }

    #[test]
    fn retry_after_values() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(95) && d <= Duration::from_secs(100),
            "{d:?}"
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_chains_read_well() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        assert_eq!(chain(&io), "connection refused");
        assert_eq!(lower_first("TLS handshake"), "TLS handshake");
        // How hyper-rustls reports a handshake failure: io(io(rustls)).
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::General("bad".into()),
        ));
        assert!(causes(&tls).any(|c| c.is::<rustls::Error>()));
        assert_eq!(chain(&tls), "unexpected error: bad");
    }
}
