//! Signing keys: ECDSA P-256 only (cosign's default and the only kind this registry
//! signs or verifies with).
//!
//! Private keys are read from PEM:
//! - `PRIVATE KEY`: PKCS#8, plain;
//! - `ENCRYPTED PRIVATE KEY`: PKCS#8 PBES2 (what `openssl pkcs8 -topk8 -v2 aes-256-cbc`
//!   and `openssl genpkey -aes256` write);
//! - `EC PRIVATE KEY`: SEC1, plain;
//! - `ENCRYPTED SIGSTORE PRIVATE KEY` / `ENCRYPTED COSIGN PRIVATE KEY`: cosign's own
//!   format, a JSON document (go-securesystemslib's `encrypted` package) whose
//!   ciphertext is the PKCS#8 DER sealed with nacl/secretbox under a key that scrypt
//!   derives from the password:
//!
//! ```json
//! {"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"<32 bytes, base64>"},
//!  "cipher":{"name":"nacl/secretbox","nonce":"<24 bytes, base64>"},
//!  "ciphertext":"<poly1305 tag || xsalsa20 ciphertext, base64>"}
//! ```
//!
//! Public keys are PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as cosign writes `cosign.pub`.

use super::SignError;
use crypto_secretbox::aead::{Aead, KeyInit};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::der::pem::{self, LineEnding};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The PEM label cosign writes (and this project writes) for an encrypted key.
pub const SIGSTORE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The label of keys written by cosign before v2; still read.
pub const COSIGN_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";

/// scrypt cost parameters written: N = 2^15, r = 8, p = 1 (cosign's).
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// The largest scrypt N read (2^17, go-securesystemslib's "OWASP" level): a key file
/// must not make a reader spend unbounded memory.
const SCRYPT_MAX_LOG_N: u8 = 17;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// An ECDSA P-256 private key.
#[derive(Clone)]
pub struct PrivateKey(SigningKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.public_key().fingerprint())
    }
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> PrivateKey {
        PrivateKey(SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// Reads a PEM private key (see the module documentation for the formats);
    /// `password` decrypts the encrypted ones (cosign allows an empty one).
    pub fn from_pem(text: &str, password: &[u8]) -> Result<PrivateKey, SignError> {
        let text = text.trim_start();
        let label = pem_label(text)
            .ok_or_else(|| SignError::new("not a PEM private key (no -----BEGIN line)"))?;
        match label {
            "PRIVATE KEY" => SigningKey::from_pkcs8_pem(text)
                .map(PrivateKey)
                .map_err(|e| SignError::new(format!("not an ECDSA P-256 PKCS#8 key: {e}"))),
            "ENCRYPTED PRIVATE KEY" => SigningKey::from_pkcs8_encrypted_pem(text, password)
                .map(PrivateKey)
                .map_err(|e| {
                    SignError::new(format!(
                        "cannot decrypt the PKCS#8 key (wrong password in COSIGN_PASSWORD, or not ECDSA P-256): {e}"
                    ))
                }),
            "EC PRIVATE KEY" => {
                use p256::elliptic_curve::SecretKey;
                SecretKey::<p256::NistP256>::from_sec1_pem(text)
                    .map(|k| PrivateKey(SigningKey::from(k)))
                    .map_err(|e| SignError::new(format!("not an ECDSA P-256 SEC1 key: {e}")))
            }
            SIGSTORE_KEY_LABEL | COSIGN_KEY_LABEL => {
                let (_, body) = pem::decode_vec(text.as_bytes())
                    .map_err(|e| SignError::new(format!("bad PEM: {e}")))?;
                let der = decrypt(&body, password)?;
                SigningKey::from_pkcs8_der(&der)
                    .map(PrivateKey)
                    .map_err(|e| SignError::new(format!("the decrypted key is not ECDSA P-256: {e}")))
            }
            other => Err(SignError::new(format!(
                "unsupported private key type {other:?} (expected PRIVATE KEY, ENCRYPTED PRIVATE KEY, EC PRIVATE KEY or {SIGSTORE_KEY_LABEL})"
            ))),
        }
    }

    /// The key in cosign's encrypted format (`cosign.key`), sealed under `password`.
    pub fn to_cosign_pem(&self, password: &[u8]) -> Result<String, SignError> {
        let der = self
            .0
            .to_pkcs8_der()
            .map_err(|e| SignError::new(format!("cannot encode the key: {e}")))?;
        let sealed = encrypt(der.as_bytes(), password)?;
        pem::encode_string(SIGSTORE_KEY_LABEL, LineEnding::LF, &sealed)
            .map_err(|e| SignError::new(format!("cannot encode the key: {e}")))
    }

    /// The key as plain PKCS#8 PEM (`PRIVATE KEY`).
    pub fn to_pkcs8_pem(&self) -> Result<String, SignError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|s| s.to_string())
            .map_err(|e| SignError::new(format!("cannot encode the key: {e}")))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    /// ECDSA P-256 over SHA-256 of `message`, ASN.1 DER (what cosign puts, base64, in
    /// the signature annotation).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: Signature = self.0.sign(message);
        let der: DerSignature = sig.to_der();
        der.as_bytes().to_vec()
    }
}

/// An ECDSA P-256 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn from_pem(text: &str) -> Result<PublicKey, SignError> {
        let text = text.trim_start();
        match pem_label(text) {
            Some("PUBLIC KEY") => VerifyingKey::from_public_key_pem(text)
                .map(PublicKey)
                .map_err(|e| SignError::new(format!("not an ECDSA P-256 public key: {e}"))),
            Some(other) => Err(SignError::new(format!(
                "a {other:?} PEM block is not a public key (expected PUBLIC KEY)"
            ))),
            None => Err(SignError::new("not a PEM public key (no -----BEGIN line)")),
        }
    }

    pub fn to_pem(&self) -> Result<String, SignError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SignError::new(format!("cannot encode the public key: {e}")))
    }

    /// `sha256:<hex>` of the SubjectPublicKeyInfo DER: names a key whose file is unknown.
    pub fn fingerprint(&self) -> String {
        let der = self
            .0
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(der)))
    }

    /// Whether `der_signature` is this key's ECDSA signature of `message`.
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> bool {
        match Signature::from_der(der_signature) {
            Ok(sig) => self.0.verify(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

/// The label of the first PEM block of `text`.
fn pem_label(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("-----BEGIN ")?;
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64_bytes")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64_bytes")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64_bytes")]
    nonce: Vec<u8>,
}

/// `[]byte` as Go's encoding/json writes it: standard base64.
mod b64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::b64().encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::b64().decode(s).map_err(serde::de::Error::custom)
    }
}

fn scrypt_key(
    password: &[u8],
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<[u8; 32], SignError> {
    let params = scrypt::Params::new(log_n, r, p, 32)
        .map_err(|e| SignError::new(format!("bad scrypt parameters: {e}")))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut key)
        .map_err(|e| SignError::new(format!("scrypt: {e}")))?;
    Ok(key)
}

/// Seals `plaintext` the way go-securesystemslib's `encrypted.Encrypt` does.
fn encrypt(plaintext: &[u8], password: &[u8]) -> Result<Vec<u8>, SignError> {
    let mut salt = vec![0u8; 32];
    let mut nonce = vec![0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let key = scrypt_key(password, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key.into());
    let ciphertext = cipher
        .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| SignError::new("secretbox sealing failed"))?;
    let sealed = Sealed {
        kdf: Kdf {
            name: "scrypt".into(),
            params: ScryptParams {
                n: 1 << SCRYPT_LOG_N,
                r: SCRYPT_R,
                p: SCRYPT_P,
            },
            salt,
        },
        cipher: Cipher {
            name: "nacl/secretbox".into(),
            nonce,
        },
        ciphertext,
    };
    serde_json::to_vec(&sealed).map_err(|e| SignError::new(format!("cannot encode the key: {e}")))
}

/// Opens a document written by [`encrypt`] (or by cosign).
fn decrypt(doc: &[u8], password: &[u8]) -> Result<Vec<u8>, SignError> {
    let s: Sealed = serde_json::from_slice(doc)
        .map_err(|e| SignError::new(format!("not cosign's encrypted key format: {e}")))?;
    if s.kdf.name != "scrypt" {
        return Err(SignError::new(format!(
            "unsupported key derivation {:?} (expected scrypt)",
            s.kdf.name
        )));
    }
    if s.cipher.name != "nacl/secretbox" {
        return Err(SignError::new(format!(
            "unsupported cipher {:?} (expected nacl/secretbox)",
            s.cipher.name
        )));
    }
    let n = s.kdf.params.n;
    let log_n = n.trailing_zeros();
    if !n.is_power_of_two() || log_n > u32::from(SCRYPT_MAX_LOG_N) || log_n < 10 {
        return Err(SignError::new(format!(
            "unexpected scrypt N {n} (a power of two from 2^10 to 2^{SCRYPT_MAX_LOG_N})"
        )));
    }
    if s.kdf.params.r != SCRYPT_R || s.kdf.params.p != SCRYPT_P {
        return Err(SignError::new(format!(
            "unexpected scrypt parameters r={} p={} (expected r=8 p=1)",
            s.kdf.params.r, s.kdf.params.p
        )));
    }
    if s.cipher.nonce.len() != 24 {
        return Err(SignError::new("the secretbox nonce is not 24 bytes"));
    }
    let key = scrypt_key(
        password,
        &s.kdf.salt,
        log_n as u8,
        s.kdf.params.r,
        s.kdf.params.p,
    )?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key.into());
    cipher
        .decrypt(
            crypto_secretbox::Nonce::from_slice(&s.cipher.nonce),
            s.ciphertext.as_slice(),
        )
        .map_err(|_| SignError::new("cannot decrypt the key: wrong password (COSIGN_PASSWORD)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosign_format_round_trips_and_refuses_a_wrong_password() {
        let k = PrivateKey::generate();
        let pem = k.to_cosign_pem(b"s3cret").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let (_, body) = pem::decode_vec(pem.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kdf"]["name"], "scrypt");
        assert_eq!(v["kdf"]["params"]["N"], 32768);
        assert_eq!(v["cipher"]["name"], "nacl/secretbox");
        let back = PrivateKey::from_pem(&pem, b"s3cret").unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let e = PrivateKey::from_pem(&pem, b"wrong")
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong password"), "{e}");
        // The old label reads the same.
        let old = pem.replace("SIGSTORE", "COSIGN");
        assert_eq!(
            PrivateKey::from_pem(&old, b"s3cret").unwrap().public_key(),
            k.public_key()
        );
    }

    #[test]
    fn signatures_verify_with_the_public_key_only() {
        let k = PrivateKey::generate();
        let other = PrivateKey::generate();
        let sig = k.sign(b"payload");
        let pubk = PublicKey::from_pem(&k.public_key().to_pem().unwrap()).unwrap();
        assert!(pubk.verify(b"payload", &sig));
        assert!(!pubk.verify(b"payloaD", &sig));
        assert!(!other.public_key().verify(b"payload", &sig));
        assert!(!pubk.verify(b"payload", b"not der"));
    }

    #[test]
    fn plain_pkcs8_reads_and_bad_pem_is_named() {
        let k = PrivateKey::generate();
        let pem = k.to_pkcs8_pem().unwrap();
        assert_eq!(
            PrivateKey::from_pem(&pem, b"").unwrap().public_key(),
            k.public_key()
        );
        let e = PrivateKey::from_pem("hello", b"").unwrap_err().to_string();
        assert!(e.contains("no -----BEGIN line"), "{e}");
        let e = PrivateKey::from_pem("-----BEGIN RSA PRIVATE KEY-----\n", b"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported private key type"), "{e}");
        assert!(PublicKey::from_pem(&pem).is_err());
    }
}
