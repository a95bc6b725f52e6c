//! `WWW-Authenticate` parsing (`upstream::challenge::parse`) on any header value.
//! Properties: it terminates, schemes and parameter names are non-empty lowercase
//! tokens, and rendering the challenges back (values quoted and escaped) parses to the
//! same challenges.
#![no_main]

use agent_registry::upstream::challenge::{parse, Challenge};
use libfuzzer_sys::fuzz_target;

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            (b.is_ascii_alphanumeric() && !b.is_ascii_uppercase())
                || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn render(challenges: &[Challenge]) -> String {
    let one = |c: &Challenge| {
        let params: Vec<String> = c
            .params
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        match params.is_empty() {
            true => c.scheme.clone(),
            false => format!("{} {}", c.scheme, params.join(",")),
        }
    };
    challenges.iter().map(one).collect::<Vec<_>>().join(", ")
}

fuzz_target!(|data: &[u8]| {
    // Header values are bytes; the parser takes the lossy UTF-8 the client hands it.
    let header = String::from_utf8_lossy(data);
    let challenges = parse(&header);
    for c in &challenges {
        assert!(is_token(&c.scheme), "scheme {:?} of {header:?}", c.scheme);
        for (k, _) in &c.params {
            assert!(is_token(k), "parameter {k:?} of {header:?}");
            assert!(c.param(k).is_some());
        }
    }
    let rendered = render(&challenges);
    assert_eq!(
        parse(&rendered),
        challenges,
        "{header:?} rendered as {rendered:?}"
    );
});
