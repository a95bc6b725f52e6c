//! `Range` request headers resolved against a blob's size.

/// A single byte range resolved against the blob size: `[start, end]` inclusive.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses `Range: bytes=a-b | a- | -n`. Multiple ranges and other units are served whole.
pub fn parse_range(h: Option<&str>, size: u64) -> RangeReq {
    let Some(spec) = h.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => b
            .parse::<u64>()
            .ok()
            .and_then(|n| (n > 0 && size > 0).then(|| (size.saturating_sub(n), size - 1))),
        (false, true) => a.parse::<u64>().ok().map(|s| (s, size.saturating_sub(1))),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(size.saturating_sub(1)))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        Some((s, e)) if s < size && s <= e => RangeReq::Part(s, e),
        _ => RangeReq::Unsatisfiable,
    }
}
