//! Bearer tokens (`auth::jwt::Keys::verify`) with a fixed key. Properties: any string
//! the key accepts is exactly what `sign` makes of the claims it yields (no second
//! encoding of a signed token verifies), and a token signed for arbitrary claims
//! verifies unless its times, audience or issuer say no.
#![no_main]

use agent_registry::auth::jwt::{Access, Claims, JwtError, Keys, LEEWAY};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The seed tokens in `fuzz/corpus/jwt` are signed with this key for this service.
const KEY: [u8; 32] = [7; 32];
const SERVICE: &str = "agent-registry";
const NOW: u64 = 1_800_000_000;

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys::from_bytes(&KEY))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    for (k, x) in a.iter_mut().enumerate() {
        *x = b.get(i + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(a)
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    if let Ok(token) = std::str::from_utf8(data) {
        if let Ok(claims) = keys.verify(token, SERVICE, NOW) {
            assert_eq!(
                keys.sign(&claims),
                token,
                "a token sign never made verified"
            );
        }
    }
    // Sign claims taken from the input and check the verdict (times near NOW, so the
    // interesting edges are reached; the high bit of a time picks an extreme one).
    if data.len() < 25 {
        return;
    }
    let near = |v: u64| match v >> 63 {
        1 => v,
        _ => NOW - 1000 + v % 2000,
    };
    let (exp, nbf) = (near(u64_at(data, 0)), near(u64_at(data, 8)));
    let flags = data[16];
    let text = String::from_utf8_lossy(&data[17..]).into_owned();
    let service = |bit: u8| match flags & bit {
        0 => SERVICE.to_string(),
        _ => text.clone(),
    };
    let claims = Claims {
        iss: service(1),
        sub: text.clone(),
        aud: service(2),
        exp,
        nbf,
        iat: NOW,
        jti: text.clone(),
        access: vec![Access {
            kind: "repository".into(),
            name: text.clone(),
            actions: vec!["pull".into()],
        }],
        tid: (flags & 4 != 0).then(|| text.clone()),
        cli: flags & 8 != 0,
    };
    let token = keys.sign(&claims);
    let expected = if exp.saturating_add(LEEWAY) <= NOW {
        Err(JwtError::Expired)
    } else if nbf > NOW + LEEWAY {
        Err(JwtError::NotYetValid)
    } else if claims.aud != SERVICE {
        Err(JwtError::Audience)
    } else if claims.iss != SERVICE {
        Err(JwtError::Issuer)
    } else {
        Ok(claims.clone())
    };
    assert_eq!(keys.verify(&token, SERVICE, NOW), expected, "{claims:?}");
    // Another key never accepts it.
    let other = Keys::from_bytes(&[8; 32]);
    assert_eq!(other.verify(&token, SERVICE, NOW), Err(JwtError::Signature));
});
