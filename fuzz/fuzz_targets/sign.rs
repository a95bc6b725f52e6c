//! `sign`'s parsers on bytes a registry (or a compromised upstream) supplies: the
//! simple-signing payload, the signature manifest, a signature to verify.
//! Properties: a payload that parses and names a valid digest re-serialises to one that
//! parses to the same claim; appending a signature to any manifest that parses gives a
//! manifest that parses, keeps its signature layers and holds the new one; random bytes
//! never verify under a fixed key.
#![no_main]

use agent_registry::oci::Digest;
use agent_registry::sign::{self, Desc, NamedKey, PrivateKey, Verdict};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFTiyjurAGFw7r+7i
sF+JJzu2/lj4BKvEwIrVaZVAKEqhRANCAARlH637Y8fbr+TGfUS+vHDuiSM978kL
QcHqlgNFimAfHMjCeL76Ld/ady4+67/5GmQXLAm0rA7JQFR8fZJ3VETX
-----END PRIVATE KEY-----
";

fn key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::from_pem(KEY, b"").expect("the fixed key parses"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let subject: Digest = Digest::sha256_of(b"subject");
    match selector % 3 {
        0 => {
            let Ok(claim) = sign::parse_payload(body) else {
                return;
            };
            let Ok(d) = claim.digest.parse::<Digest>() else {
                return;
            };
            let again = sign::parse_payload(&sign::payload(&claim.docker_reference, &d))
                .expect("a payload this module wrote parses");
            assert_eq!(again.docker_reference, claim.docker_reference);
            assert_eq!(again.digest, d.to_string());
        }
        1 => {
            let Ok(before) = sign::signature_layers(body) else {
                return;
            };
            let payload = sign::payload("h/r", &subject);
            let signature = key().sign(&payload);
            let desc = Desc {
                media_type: agent_registry::oci::manifest::OCI_MANIFEST.into(),
                size: 1,
                digest: subject.to_string(),
                annotations: None,
            };
            let built = sign::signature_manifest(Some(body), &payload, &signature, desc)
                .expect("a manifest whose layers parse takes another");
            let after = sign::signature_layers(&built.manifest).expect("the result parses");
            assert!(after.len() == before.len() || after.len() == before.len() + 1);
            assert!(before.iter().all(|l| after.contains(l)));
            assert!(after
                .iter()
                .any(|l| l.layer.digest == Digest::sha256_of(&payload).to_string()));
        }
        _ => {
            let (payload, sig) = body.split_at(body.len() / 2);
            let keys = [NamedKey {
                name: "fixed".into(),
                key: key().public_key(),
            }];
            let sig = String::from_utf8_lossy(sig);
            assert!(
                !matches!(
                    sign::verify(payload, &sig, &subject, &keys),
                    Verdict::Verified { .. }
                ),
                "random bytes verified"
            );
        }
    }
});
