//! Bearer tokens of the registry token flow: compact JWTs signed with Ed25519 (`EdDSA`).
//! The key pair is made on first start and kept in `<data_dir>/auth/token-signing.key`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Clock skew allowed on `nbf` and `exp`, in seconds. Tokens are checked by the server
/// that signed them (or a replica sharing its key and, via NTP, its clock), so a few
/// seconds are plenty; a token is never accepted more than this past its `exp`.
pub const LEEWAY: u64 = 5;

/// One entry of the `access` claim, as in the Docker token spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user; empty for an anonymous token.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
    /// The API token this token was issued for, directly or by renewing such a token:
    /// it is honoured only while that API token is live. `None`: a password login (or
    /// an anonymous token), honoured only while the user `sub` exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// Signed for the server's own CLI with the key in the data directory
    /// ([`super::admin_token`]): `sub` names no user and its access is not re-checked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cli: bool,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token is for another service")]
    Audience,
    #[error("token was issued by someone else")]
    Issuer,
    /// The user, or the API token, the token was issued for is gone (deleted,
    /// revoked, expired).
    #[error("the credential this token was issued for is no longer valid")]
    Revoked,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

pub struct Keys {
    signing: SigningKey,
    verifying: VerifyingKey,
    kid: String,
}

impl Keys {
    /// Reads the key from `dir/token-signing.key`, or makes one and writes it (0600,
    /// through a temp file and rename, so a crash never leaves half a key).
    pub fn load_or_create(dir: &Path) -> std::io::Result<Keys> {
        let path = dir.join("token-signing.key");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let mut key = [0u8; 32];
                rand::Rng::fill(&mut rand::rngs::OsRng, &mut key);
                let tmp = dir.join(format!(".token-signing.key.{}", std::process::id()));
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                key.to_vec()
            }
            Err(e) => return Err(e),
        };
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: expected 32 bytes", path.display()),
            )
        })?;
        Ok(Keys::from_bytes(&key))
    }

    pub fn from_bytes(key: &[u8; 32]) -> Keys {
        let signing = SigningKey::from_bytes(key);
        let verifying = signing.verifying_key();
        let digest = <sha2::Sha256 as sha2::Digest>::digest(verifying.as_bytes());
        Keys {
            signing,
            verifying,
            kid: hex::encode(&digest[..8]),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: self.kid.clone(),
        };
        // Serializing these plain structs cannot fail.
        let h = serde_json::to_vec(&header).unwrap_or_default();
        let c = serde_json::to_vec(claims).unwrap_or_default();
        let input = format!("{}.{}", B64.encode(h), B64.encode(c));
        let sig = self.signing.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }

    /// Checks the signature, the algorithm, the times (with [`LEEWAY`]), the
    /// audience and the issuer (both `service`).
    pub fn verify(&self, token: &str, service: &str, now: u64) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(JwtError::Algorithm);
        }
        let sig = B64.decode(s).map_err(|_| JwtError::Malformed)?;
        let sig = Signature::from_slice(&sig).map_err(|_| JwtError::Malformed)?;
        let input_len = h.len() + 1 + c.len();
        let input = token.get(..input_len).ok_or(JwtError::Malformed)?;
        self.verifying
            .verify(input.as_bytes(), &sig)
            .map_err(|_| JwtError::Signature)?;
        let claims: Claims = B64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        // Saturating: a signed `exp` near u64::MAX means "never", not an overflow.
        if claims.exp.saturating_add(LEEWAY) <= now {
            return Err(JwtError::Expired);
        }
        if claims.nbf > now + LEEWAY {
            return Err(JwtError::NotYetValid);
        }
        if claims.aud != service {
            return Err(JwtError::Audience);
        }
        if claims.iss != service {
            return Err(JwtError::Issuer);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> Claims {
        Claims {
            iss: "svc".into(),
            sub: "alice".into(),
            aud: "svc".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "1".into(),
            access: vec![Access {
                kind: "repository".into(),
                name: "agents/a".into(),
                actions: vec!["pull".into()],
            }],
            tid: None,
            cli: false,
        }
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let keys = Keys::from_bytes(&[7; 32]);
        let now = 1_000_000;
        let t = keys.sign(&claims(now));
        assert_eq!(keys.verify(&t, "svc", now), Ok(claims(now)));
        assert_eq!(keys.verify(&t, "svc", now + 400), Err(JwtError::Expired));
        // The leeway is a few seconds, not half a minute.
        assert!(keys.verify(&t, "svc", now + 300 + LEEWAY - 1).is_ok());
        assert_eq!(
            keys.verify(&t, "svc", now + 300 + LEEWAY),
            Err(JwtError::Expired)
        );
        assert_eq!(keys.verify(&t, "svc", now + 320), Err(JwtError::Expired));
        // The origin fields round-trip; tokens without them (older ones) still verify.
        let mut c = claims(now);
        c.tid = Some("tok_1".into());
        assert_eq!(keys.verify(&keys.sign(&c), "svc", now), Ok(c));
        assert_eq!(keys.verify(&t, "other", now), Err(JwtError::Audience));
        let other = Keys::from_bytes(&[8; 32]);
        assert_eq!(other.verify(&t, "svc", now), Err(JwtError::Signature));
        // Tampering with the claims (granting push) breaks the signature.
        let mut c = claims(now);
        c.access[0].actions.push("push".into());
        let forged_body = B64.encode(serde_json::to_vec(&c).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_body, parts[2]);
        assert_eq!(keys.verify(&forged, "svc", now), Err(JwtError::Signature));
        // alg=none and garbage.
        let none = B64.encode(br#"{"alg":"none","typ":"JWT","kid":""}"#);
        let t2 = format!("{none}.{}.", parts[1]);
        assert_eq!(keys.verify(&t2, "svc", now), Err(JwtError::Algorithm));
        assert_eq!(keys.verify("a.b", "svc", now), Err(JwtError::Malformed));
        let mut c = claims(now);
        c.iss = "evil".into();
        assert_eq!(
            keys.verify(&keys.sign(&c), "svc", now),
            Err(JwtError::Issuer)
        );
        let mut c = claims(now);
        c.nbf = now + 3600;
        assert_eq!(
            keys.verify(&keys.sign(&c), "svc", now),
            Err(JwtError::NotYetValid)
        );
    }

    /// Found by the `jwt` fuzz target: `exp + LEEWAY` overflowed (a panic with overflow
    /// checks) on a signed token whose `exp` is within 30 s of u64::MAX.
    #[test]
    fn expiry_at_the_end_of_time_does_not_overflow() {
        let keys = Keys::from_bytes(&[7; 32]);
        let now = 1_000_000;
        let mut c = claims(now);
        c.exp = u64::MAX;
        assert_eq!(keys.verify(&keys.sign(&c), "svc", now), Ok(c));
    }

    #[test]
    fn key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load_or_create(dir.path()).unwrap();
        let b = Keys::load_or_create(dir.path()).unwrap();
        assert_eq!(a.kid, b.kid);
        let t = a.sign(&claims(5));
        assert!(b.verify(&t, "svc", 5).is_ok());
        let mode = std::fs::metadata(dir.path().join("token-signing.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
