//! `Range` on blob GETs (`server::blobs::parse_range`) and `Content-Range` on chunked
//! uploads (`server::uploads::chunk_range`). Properties: a served part lies inside the
//! blob, a header without `bytes=` is served whole, and an accepted chunk range is
//! ordered, has an `end + 1`, and agrees with a valid `Content-Length`.
#![no_main]

use agent_registry::web::range::{parse_range, RangeReq};
use agent_registry::handlers::uploads::chunk_range;
use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (head, rest) = data.split_at(9);
    // Small sizes are the edge cases; the high bit picks a huge one.
    let raw = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    let size = if raw >> 63 == 1 { raw } else { raw % 4096 };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (range, length) = text.split_once('\n').unwrap_or((text, ""));

    match parse_range(Some(range), size) {
        RangeReq::Part(s, e) => assert!(s <= e && e < size, "{range:?} size {size}: {s}-{e}"),
        RangeReq::Full => {}
        RangeReq::Unsatisfiable => {
            assert!(
                range.trim().starts_with("bytes="),
                "{range:?} is not a byte range"
            )
        }
    }
    assert_eq!(parse_range(None, size), RangeReq::Full);

    let mut h = HeaderMap::new();
    let Ok(v) = HeaderValue::from_str(range) else {
        return;
    };
    h.insert(header::CONTENT_RANGE, v);
    // Bit 0 of the selector byte: send a Content-Length (the line after the range).
    let with_length = head[8] & 1 == 1;
    if with_length {
        let Ok(v) = HeaderValue::from_str(length) else {
            return;
        };
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(Some((start, end))) = chunk_range(&h) {
        assert!(start <= end && end < u64::MAX, "{range:?}: {start}-{end}");
        if let (true, Ok(len)) = (with_length, length.parse::<u64>()) {
            assert_eq!(
                len,
                end - start + 1,
                "{range:?} with Content-Length {length:?}"
            );
        }
    }
});
