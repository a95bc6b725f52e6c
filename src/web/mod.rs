//! HTTP helpers every layer above may use: body types and response builders
//! (`body.rs`), the request-body clocks, `Range` parsing (`range.rs`), the route a path
//! names (`route.rs`) and query strings. Nothing here knows the shared state.

pub mod body;
pub mod range;
pub mod route;

use http::{header, Response};

/// Parses the query string into decoded pairs.
pub fn query(uri: &http::Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub fn location(resp: &mut Response<body::Body>, value: &str) {
    resp.headers_mut().insert(header::LOCATION, body::hv(value));
}
