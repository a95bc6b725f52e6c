//! Image signatures in cosign's format (pure format code: no I/O, no HTTP).
//!
//! A signature of manifest `sha256:H` in repository `R` is:
//! - the **payload**, cosign's "simple signing" JSON naming the signed digest
//!   ([`payload`]): `{"critical":{"identity":{"docker-reference":"HOST/R"},
//!   "image":{"docker-manifest-digest":"sha256:H"},"type":"cosign container image
//!   signature"},"optional":null}`;
//! - the **signature**, ECDSA P-256 over SHA-256 of the payload bytes, ASN.1 DER, base64;
//! - the **signature manifest**, an OCI image manifest whose one layer per signature is
//!   a payload blob (media type [`SIMPLE_SIGNING_MEDIA_TYPE`]) carrying the signature in
//!   the annotation [`SIGNATURE_ANNOTATION`], whose config is the image config cosign
//!   writes for it (go-containerregistry's empty image plus those layers), and whose
//!   `subject` is the signed manifest, so the referrers API lists it too. It is tagged
//!   [`signature_tag`] `sha256-H.sig`, the name every cosign version looks up.
//!
//! Verification ([`verify`]) needs both: the signature must verify under one of the
//! given keys AND the payload must name the digest being verified (a valid signature of
//! another image proves nothing about this one).

pub mod keys;

pub use keys::{PrivateKey, PublicKey};

use crate::oci::Digest;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The media type of a payload layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The config media type of a signature manifest.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The `critical.type` of a payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// A format error, lowercase, naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignError(pub String);

impl SignError {
    pub fn new(msg: impl Into<String>) -> SignError {
        SignError(msg.into())
    }
}

/// The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm().as_str(), digest.hex())
}

#[derive(Serialize, Deserialize)]
struct Payload {
    critical: Critical,
    optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The simple-signing payload for `digest` of `docker_reference` (`HOST[:PORT]/REPO`),
/// byte for byte as cosign writes it (Go's encoding/json, struct field order).
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    let p = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: docker_reference.to_string(),
            },
            image: Image {
                docker_manifest_digest: digest.to_string(),
            },
            kind: PAYLOAD_TYPE.to_string(),
        },
        optional: None,
    };
    serde_json::to_vec(&p).unwrap_or_default()
}

/// What a payload claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub docker_reference: String,
    pub digest: String,
}

/// Parses a payload; refuses another `type` (an attestation, say).
pub fn parse_payload(bytes: &[u8]) -> Result<Claim, SignError> {
    let p: Payload = serde_json::from_slice(bytes)
        .map_err(|e| SignError::new(format!("the payload is not a simple-signing payload: {e}")))?;
    if p.critical.kind != PAYLOAD_TYPE {
        return Err(SignError::new(format!(
            "the payload's type is {:?}, not {PAYLOAD_TYPE:?}",
            p.critical.kind
        )));
    }
    Ok(Claim {
        docker_reference: p.critical.identity.docker_reference,
        digest: p.critical.image.docker_manifest_digest,
    })
}

/// A descriptor as go-containerregistry writes it (mediaType, size, digest, annotations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Desc {
    pub media_type: String,
    pub size: u64,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Desc {
    fn of(media_type: &str, bytes: &[u8]) -> Desc {
        Desc {
            media_type: media_type.to_string(),
            size: bytes.len() as u64,
            digest: Digest::sha256_of(bytes).to_string(),
            annotations: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Desc,
    layers: Vec<Desc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<Desc>,
}

/// One signature as listed by a signature manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The payload blob.
    pub layer: Desc,
    /// The base64 DER signature of the annotation.
    pub signature: String,
}

/// The signature layers of a signature manifest (layers of another media type, or without
/// the annotation, are skipped: they are not simple signing signatures).
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, SignError> {
    let m: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| SignError::new(format!("the signature manifest is not valid: {e}")))?;
    Ok(m.layers
        .into_iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        .filter_map(|l| {
            let sig = l.annotations.as_ref()?.get(SIGNATURE_ANNOTATION)?.clone();
            Some(SignatureLayer {
                layer: l,
                signature: sig,
            })
        })
        .collect())
}

/// A signature manifest and the blobs it needs pushed first.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    /// The new payload blob (the earlier layers' blobs are in the registry already).
    pub payload: Vec<u8>,
}

/// The signature manifest: the layers of `existing` (the manifest under the `.sig` tag,
/// if any) plus one for `payload` signed `der_signature` (unless `existing` has that very
/// signature already), with `subject` the signed manifest's descriptor.
pub fn signature_manifest(
    existing: Option<&[u8]>,
    payload: &[u8],
    der_signature: &[u8],
    subject: Desc,
) -> Result<Built, SignError> {
    let mut layers: Vec<Desc> = match existing {
        Some(m) => signature_layers(m)?.into_iter().map(|l| l.layer).collect(),
        None => Vec::new(),
    };
    let mut layer = Desc::of(SIMPLE_SIGNING_MEDIA_TYPE, payload);
    layer.annotations = Some(BTreeMap::from([(
        SIGNATURE_ANNOTATION.to_string(),
        base64::engine::general_purpose::STANDARD.encode(der_signature),
    )]));
    if !layers.contains(&layer) {
        layers.push(layer);
    }
    let config = config_json(&layers);
    let m = Manifest {
        schema_version: 2,
        media_type: Some(crate::oci::manifest::OCI_MANIFEST.to_string()),
        config: Desc::of(CONFIG_MEDIA_TYPE, &config),
        layers,
        subject: Some(subject),
    };
    let manifest = serde_json::to_vec(&m)
        .map_err(|e| SignError::new(format!("cannot encode the signature manifest: {e}")))?;
    Ok(Built {
        manifest,
        config,
        payload: payload.to_vec(),
    })
}

/// The config go-containerregistry computes for its empty image with `layers` appended
/// (what cosign pushes): zero times, empty platform, one empty history entry and one
/// diff ID per layer (the payloads are uncompressed: diff ID = digest).
fn config_json(layers: &[Desc]) -> Vec<u8> {
    const ZERO: &str = "0001-01-01T00:00:00Z";
    let history: Vec<serde_json::Value> = layers
        .iter()
        .map(|_| serde_json::json!({ "created": ZERO }))
        .collect();
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    // Field order of go-containerregistry's ConfigFile.
    let mut s = String::from(r#"{"architecture":"","created":""#);
    s.push_str(ZERO);
    s.push_str(r#"","history":"#);
    s.push_str(&serde_json::to_string(&history).unwrap_or_default());
    s.push_str(r#","os":"","rootfs":{"type":"layers","diff_ids":"#);
    s.push_str(&serde_json::to_string(&diff_ids).unwrap_or_default());
    s.push_str(r#"},"config":{}}"#);
    s.into_bytes()
}

/// A verification key and the name it is reported by (its file, or its fingerprint).
#[derive(Debug, Clone)]
pub struct NamedKey {
    pub name: String,
    pub key: PublicKey,
}

/// The outcome for one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The signature verifies under key `key` and its payload names the expected digest.
    Verified { key: String },
    /// Why not.
    Unverified { reason: String },
}

/// Checks one signature of the image `expected`: `payload` (its bytes, as fetched) signed
/// `signature_b64` must verify under one of `keys`, and the payload must name `expected`.
pub fn verify(
    payload: &[u8],
    signature_b64: &str,
    expected: &Digest,
    keys: &[NamedKey],
) -> Verdict {
    let unverified = |reason: String| Verdict::Unverified { reason };
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return unverified("the signature annotation is not base64".into());
    };
    if keys.is_empty() {
        return unverified("no public key to verify with".into());
    }
    let Some(k) = keys.iter().find(|k| k.key.verify(payload, &der)) else {
        return unverified(match keys {
            [one] => format!("the signature does not verify with key {}", one.name),
            _ => format!(
                "the signature verifies with none of the {} keys",
                keys.len()
            ),
        });
    };
    match parse_payload(payload) {
        Err(e) => unverified(e.0),
        Ok(c) if c.digest != expected.to_string() => {
            unverified(format!("the signature is for {}, not {expected}", c.digest))
        }
        Ok(_) => Verdict::Verified {
            key: k.name.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn payload_is_cosigns_bytes() {
        let p = payload("localhost:5000/agents/x", &d('a'));
        assert_eq!(
            String::from_utf8(p.clone()).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"localhost:5000/agents/x"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":null}}"#,
                d('a')
            )
        );
        let c = parse_payload(&p).unwrap();
        assert_eq!(c.digest, d('a').to_string());
        assert_eq!(
            signature_tag(&d('a')),
            format!("sha256-{}.sig", "a".repeat(64))
        );
        let other = String::from_utf8(p)
            .unwrap()
            .replace(PAYLOAD_TYPE, "https://in-toto.io/Statement/v0.1");
        assert!(parse_payload(other.as_bytes()).is_err());
    }

    #[test]
    fn manifest_appends_layers_once_and_names_the_subject() {
        let k = PrivateKey::generate();
        let subject = Desc {
            media_type: crate::oci::manifest::OCI_MANIFEST.into(),
            size: 7,
            digest: d('a').to_string(),
            annotations: None,
        };
        let p = payload("h/r", &d('a'));
        let sig = k.sign(&p);
        let one = signature_manifest(None, &p, &sig, subject.clone()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&one.manifest).unwrap();
        assert_eq!(v["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
        assert_eq!(v["subject"]["digest"], d('a').to_string());
        assert_eq!(
            v["config"]["digest"],
            Digest::sha256_of(&one.config).to_string()
        );
        let cfg: serde_json::Value = serde_json::from_slice(&one.config).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], v["layers"][0]["digest"]);
        // Signing the same payload again adds nothing (RFC 6979 signatures are
        // deterministic); another key's signature is a second layer.
        let again = signature_manifest(Some(&one.manifest), &p, &sig, subject.clone()).unwrap();
        assert_eq!(again.manifest, one.manifest);
        let k2 = PrivateKey::generate();
        let two = signature_manifest(Some(&one.manifest), &p, &k2.sign(&p), subject).unwrap();
        let layers = signature_layers(&two.manifest).unwrap();
        assert_eq!(layers.len(), 2);
        let cfg: serde_json::Value = serde_json::from_slice(&two.config).unwrap();
        assert_eq!(cfg["history"].as_array().unwrap().len(), 2);
    }

    /// The worked example of ARCHITECTURE.md ("Signatures"), signed by Python's
    /// `cryptography` (an independent ECDSA implementation), checked byte for byte.
    #[test]
    fn architecture_worked_example_holds() {
        let subject: Digest =
            "sha256:89333bc71f02c647533ab52e592ad22c609728f12eabff6fda0920109db40401"
                .parse()
                .unwrap();
        let p = payload("registry.example.com/agents/my-agent", &subject);
        assert_eq!(p.len(), 252);
        assert_eq!(
            Digest::sha256_of(&p).to_string(),
            "sha256:1a5635d7d7a4f5d81068c3266d42f4382bb77add3ab6da46d8bfcc6efc60f5ac"
        );
        let public = PublicKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\n\
             MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+U4C/yVLVWGS8Jg4OJqv40VmaWsg\n\
             AVFu1aDCdYhVUZNI+NcuOwt8Ch1d8XxQdELCAvnnaoDZMqirVYPMigHhFA==\n\
             -----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let sig = "MEUCIGU9jOi29cl6Qk3bWGEkVCJvEdfgQQZS1ZK0flepBcDIAiEAkQRhI+kLHAvE9PKoABpQRNGI+WHkFxugZ4HDIOqp/sI=";
        let keys = [NamedKey {
            name: "cosign.pub".into(),
            key: public,
        }];
        assert_eq!(
            verify(&p, sig, &subject, &keys),
            Verdict::Verified {
                key: "cosign.pub".into()
            }
        );
        let layer = Desc::of(SIMPLE_SIGNING_MEDIA_TYPE, &p);
        let config = config_json(&[layer]);
        assert_eq!(config.len(), 233);
        assert_eq!(
            Digest::sha256_of(&config).to_string(),
            "sha256:b1f0d11697cdf741eb4d8767c5ce824475567e6efcd354157bbe92dc23c165bd"
        );
    }

    #[test]
    fn verification_needs_the_key_and_the_digest() {
        let k = PrivateKey::generate();
        let keys = [NamedKey {
            name: "cosign.pub".into(),
            key: k.public_key(),
        }];
        let p = payload("h/r", &d('a'));
        let sig = base64::engine::general_purpose::STANDARD.encode(k.sign(&p));
        assert_eq!(
            verify(&p, &sig, &d('a'), &keys),
            Verdict::Verified {
                key: "cosign.pub".into()
            }
        );
        // Signed, but for another image.
        match verify(&p, &sig, &d('b'), &keys) {
            Verdict::Unverified { reason } => assert!(reason.contains("is for"), "{reason}"),
            v => panic!("{v:?}"),
        }
        // A tampered payload.
        let mut t = p.clone();
        let n = t.len() - 3;
        t[n] ^= 1;
        assert!(matches!(
            verify(&t, &sig, &d('a'), &keys),
            Verdict::Unverified { .. }
        ));
        // Another key.
        let other = [NamedKey {
            name: "other.pub".into(),
            key: PrivateKey::generate().public_key(),
        }];
        match verify(&p, &sig, &d('a'), &other) {
            Verdict::Unverified { reason } => assert!(reason.contains("other.pub"), "{reason}"),
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            verify(&p, "%%%", &d('a'), &keys),
            Verdict::Unverified { .. }
        ));
    }
}
