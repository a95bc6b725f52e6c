//! The pure parts of the cluster: rendezvous hashing of a key over member URLs, and the
//! HMAC that authenticates a peer request. Depends on std and `sha2` only.

use sha2::{Digest as _, Sha256};

/// The rendezvous score of `member` for `key`: the first 8 bytes of
/// sha256(member "\n" key). The member with the highest score owns the key.
pub fn score(member: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update(b"\n");
    h.update(key.as_bytes());
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out[..8]);
    u64::from_be_bytes(b)
}

/// The owner of `key` among `members`: the highest score (ties by the larger URL, so
/// every node that sees the same members picks the same owner).
pub fn owner<'a>(members: impl IntoIterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    members
        .into_iter()
        .max_by(|a, b| score(a, key).cmp(&score(b, key)).then_with(|| a.cmp(b)))
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Equal in time independent of where `a` and `b` differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How far a peer request's timestamp may be from this node's clock.
pub const MAX_SKEW_SECS: u64 = 300;

fn message(at: u64, method: &str, target: &str) -> String {
    format!("agent-registry-peer-v1\n{at}\n{method}\n{target}")
}

/// The `X-Agent-Registry-Peer` value for a request (`target`: path and query):
/// `v1:<unix seconds>:<hex hmac>`. The secret itself never goes on the wire.
pub fn sign(secret: &[u8], at: u64, method: &str, target: &str) -> String {
    let mac = hmac_sha256(secret, message(at, method, target).as_bytes());
    format!("v1:{at}:{}", hex::encode(mac))
}

/// Whether `value` is a valid signature of this request made within
/// [`MAX_SKEW_SECS`] of `now`; compared in constant time.
pub fn verify(secret: &[u8], value: &str, now: u64, method: &str, target: &str) -> bool {
    let mut parts = value.trim().splitn(3, ':');
    let (Some("v1"), Some(at), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(at) = at.parse::<u64>() else {
        return false;
    };
    if at.abs_diff(now) > MAX_SKEW_SECS || secret.is_empty() {
        return false;
    }
    let Ok(mac) = hex::decode(mac) else {
        return false;
    };
    let want = hmac_sha256(secret, message(at, method, target).as_bytes());
    constant_time_eq(&mac, &want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signatures_verify_only_with_the_secret_the_request_and_the_time() {
        let v = sign(b"s3cret", 1000, "GET", "/v2/a/blobs/x?ns=u");
        assert!(verify(b"s3cret", &v, 1000, "GET", "/v2/a/blobs/x?ns=u"));
        assert!(verify(
            b"s3cret",
            &v,
            1000 + MAX_SKEW_SECS,
            "GET",
            "/v2/a/blobs/x?ns=u"
        ));
        assert!(!verify(b"other", &v, 1000, "GET", "/v2/a/blobs/x?ns=u"));
        assert!(!verify(b"s3cret", &v, 1000, "GET", "/v2/b/blobs/x?ns=u"));
        assert!(!verify(b"s3cret", &v, 1000, "HEAD", "/v2/a/blobs/x?ns=u"));
        assert!(!verify(b"s3cret", &v, 2000, "GET", "/v2/a/blobs/x?ns=u"));
        assert!(!verify(
            b"s3cret",
            "s3cret",
            1000,
            "GET",
            "/v2/a/blobs/x?ns=u"
        ));
        assert!(!verify(b"", &sign(b"", 1000, "GET", "/"), 1000, "GET", "/"));
    }

    #[test]
    fn adding_a_member_moves_keys_only_to_it() {
        let three = ["http://a:1", "http://b:1", "http://c:1"];
        let four = ["http://a:1", "http://b:1", "http://c:1", "http://d:1"];
        let mut owners = std::collections::HashMap::new();
        for i in 0..1000 {
            let key = format!("sha256:{i:064x}");
            let before = owner(three, &key).unwrap();
            let after = owner(four, &key).unwrap();
            assert!(after == before || after == "http://d:1", "{key}");
            *owners.entry(before).or_insert(0) += 1;
        }
        // Spread: every member owns a fair share.
        assert!(owners.values().all(|n| *n > 250), "{owners:?}");
    }
}
