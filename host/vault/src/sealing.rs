//! Encryption at rest: per-tenant data keys wrapped by the host's
//! key-encryption key, and chunks sealed with XChaCha20-Poly1305 under the
//! tenant's data key.
//!
//! Every sealed chunk binds where it belongs (tenant, dataset, version, chunk
//! index, column) into its associated data, so a chunk copied to another tenant,
//! dataset, version or position fails to open rather than decrypting into the
//! wrong place. A wrapped data key binds its tenant the same way. Random
//! 192-bit nonces make nonce reuse a non-issue at any realistic volume.
//!
//! Erasing a tenant destroys its wrapped data key: without it no chunk of
//! the tenant opens again (crypto-shredding). Rotating the key-encryption key
//! re-wraps data keys and rewrites no data.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The format version leading every sealed chunk and wrapped key.
const FORMAT: u8 = 1;
const NONCE: usize = 24;
/// Bytes a sealed value adds to its plaintext: format, nonce, tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE + 16;

/// Why a sealed value did not open. Deliberately one kind for every
/// authentication failure: which part was wrong is not the reader's to learn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The value is too short or of an unknown format.
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    /// Wrong key, wrong place, or altered bytes.
    #[error("sealed value failed authentication (wrong key, moved, or altered)")]
    Authentication,
    /// A key file is not 32 bytes (or 64 hex digits).
    #[error("key file `{path}`: {detail}")]
    KeyFile { path: String, detail: String },
}

/// A 256-bit secret key, wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Secret([u8; 32]);

impl Secret {
    fn random() -> Self {
        Self(rand::random())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

/// The value of an ASCII hex digit (0 for any other byte).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// The host's key-encryption key: it only wraps tenant data keys.
#[derive(Clone)]
pub struct KeyEncryptionKey(Secret);

/// One tenant's data key: it seals that tenant's chunks.
#[derive(Clone)]
pub struct DataKey(Secret);

// Keys never print.
impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey(..)")
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Where a chunk belongs: bound into its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkAddress<'a> {
    pub tenant: &'a str,
    pub dataset: &'a str,
    pub version: u64,
    pub chunk: u64,
    /// Columns are sealed apart, so a scan decrypts only what it reads.
    pub column: u32,
}

impl ChunkAddress<'_> {
    /// Length-prefixed fields, so no two addresses encode alike.
    fn associated_data(&self) -> Vec<u8> {
        let mut ad = b"kanon chunk v1".to_vec();
        push_field(&mut ad, self.tenant);
        push_field(&mut ad, self.dataset);
        ad.extend_from_slice(&self.version.to_le_bytes());
        ad.extend_from_slice(&self.chunk.to_le_bytes());
        ad.extend_from_slice(&self.column.to_le_bytes());
        ad
    }
}

/// Append `field` with its length first.
fn push_field(ad: &mut Vec<u8>, field: &str) {
    ad.extend_from_slice(&(field.len() as u64).to_le_bytes());
    ad.extend_from_slice(field.as_bytes());
}

fn record_associated_data(tenant: &str, dataset: &str, version: u64) -> Vec<u8> {
    let mut ad = b"kanon record v1".to_vec();
    push_field(&mut ad, tenant);
    push_field(&mut ad, dataset);
    ad.extend_from_slice(&version.to_le_bytes());
    ad
}

const CHECK_AD: &[u8] = b"kanon key check v1";
const CHECK_VALUE: &[u8] = b"kanon";

fn wrap_associated_data(tenant: &str) -> Vec<u8> {
    let mut ad = b"kanon data key v1".to_vec();
    push_field(&mut ad, tenant);
    ad
}

/// `FORMAT ‖ nonce ‖ ciphertext+tag`.
fn seal_with(cipher: &XChaCha20Poly1305, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE] = rand::random();
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encrypts any length a Vec holds");
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    out.push(FORMAT);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

fn open_with(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(SealError::Malformed("shorter than its header and tag"));
    }
    if sealed[0] != FORMAT {
        return Err(SealError::Malformed("unknown format version"));
    }
    let (nonce, ciphertext) = sealed[1..].split_at(NONCE);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .map_err(|_| SealError::Authentication)
}

impl KeyEncryptionKey {
    /// A fresh random key: for development hosts and tests. Operators keep
    /// theirs in a key file.
    pub fn generate() -> Self {
        Self(Secret::random())
    }

    /// The key from a key file's contents: 32 raw bytes, or 64 hex digits
    /// (surrounding whitespace ignored). `path` names the file in errors,
    /// which never quote the contents.
    pub fn from_key_file(path: &str, contents: &[u8]) -> Result<Self, SealError> {
        let error = |detail: &str| SealError::KeyFile { path: path.to_owned(), detail: detail.to_owned() };
        // Filled in place, so it is wiped on every path.
        let mut key = Secret([0; 32]);
        if contents.len() == 32 {
            key.0.copy_from_slice(contents);
        } else {
            // Bytes, not text: slicing a `str` inside a multi-byte character
            // panics, and the panic message quotes the whole string.
            let digits = contents.trim_ascii();
            if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
                return Err(error("expected 32 bytes or 64 hex digits"));
            }
            for (byte, pair) in key.0.iter_mut().zip(digits.chunks_exact(2)) {
                *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
            }
        }
        Ok(Self(key))
    }

    /// The key as 64 hex digits, for writing a generated key file.
    pub fn to_hex(&self) -> String {
        self.0.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A value sealed under this key that proves, later, that a key is this
    /// one: a data directory keeps it to refuse a wrong key at open.
    pub fn check_value(&self) -> Vec<u8> {
        seal_with(&self.0.cipher(), CHECK_AD, CHECK_VALUE)
    }

    /// Whether `check` was made by [`Self::check_value`] of this key.
    pub fn matches_check(&self, check: &[u8]) -> bool {
        open_with(&self.0.cipher(), CHECK_AD, check).is_ok_and(|v| v == CHECK_VALUE)
    }

    /// A keyed hash of `bytes` under a key derived from this one: proves a
    /// backup's manifest was written by a holder of this key, unaltered.
    pub fn authenticate(&self, bytes: &[u8]) -> [u8; 32] {
        let key = blake3::derive_key("kanon 2026-11 backup manifest", &self.0.0);
        *blake3::keyed_hash(&key, bytes).as_bytes()
    }

    /// A new data key for `tenant`, and its wrapping under this key.
    pub fn new_data_key(&self, tenant: &str) -> (DataKey, Vec<u8>) {
        let key = DataKey(Secret::random());
        let wrapped = self.wrap(&key, tenant);
        (key, wrapped)
    }

    /// `key` sealed under this key, bound to `tenant`.
    pub fn wrap(&self, key: &DataKey, tenant: &str) -> Vec<u8> {
        seal_with(&self.0.cipher(), &wrap_associated_data(tenant), &key.0.0)
    }

    /// The data key of `tenant` from its wrapping.
    pub fn unwrap_key(&self, wrapped: &[u8], tenant: &str) -> Result<DataKey, SealError> {
        let mut plain = open_with(&self.0.cipher(), &wrap_associated_data(tenant), wrapped)?;
        let key: [u8; 32] =
            plain.as_slice().try_into().map_err(|_| SealError::Malformed("not a data key"))?;
        plain.zeroize();
        Ok(DataKey(Secret(key)))
    }

    /// Rotation: a wrapping under `self` re-wrapped under `next`. The data
    /// it protects is not touched.
    pub fn rewrap(
        &self,
        next: &KeyEncryptionKey,
        wrapped: &[u8],
        tenant: &str,
    ) -> Result<Vec<u8>, SealError> {
        Ok(next.wrap(&self.unwrap_key(wrapped, tenant)?, tenant))
    }
}

impl DataKey {
    /// The secret a tenant's run pseudonyms are derived from: tied to the
    /// data key, so erasing the tenant also unlinks every pseudonym.
    pub fn pseudonym_secret(&self) -> [u8; 32] {
        blake3::derive_key("kanon 2026-11 tenant pseudonym secret", &self.0.0)
    }

    /// Seal a dataset version's metadata record: confidential (column names
    /// are the tenant's) and bound to its place, like a chunk.
    pub fn seal_record(&self, tenant: &str, dataset: &str, version: u64, record: &[u8]) -> Vec<u8> {
        seal_with(&self.0.cipher(), &record_associated_data(tenant, dataset, version), record)
    }

    /// Open a record sealed by [`Self::seal_record`] for the same place.
    pub fn open_record(
        &self,
        tenant: &str,
        dataset: &str,
        version: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        open_with(&self.0.cipher(), &record_associated_data(tenant, dataset, version), sealed)
    }

    /// Seal a chunk's bytes for `address`.
    pub fn seal(&self, address: &ChunkAddress<'_>, plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.0.cipher(), &address.associated_data(), plaintext)
    }

    /// Open a chunk sealed for `address`; fails if it was sealed for any
    /// other address, under any other key, or altered.
    pub fn open(&self, address: &ChunkAddress<'_>, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        open_with(&self.0.cipher(), &address.associated_data(), sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: ChunkAddress<'static> =
        ChunkAddress { tenant: "acme", dataset: "trips", version: 3, chunk: 7, column: 2 };

    #[test]
    fn a_chunk_opens_only_where_it_was_sealed() {
        let kek = KeyEncryptionKey::generate();
        let (key, _) = kek.new_data_key("acme");
        let sealed = key.seal(&HERE, b"driver D001 drove 412 km");
        assert_eq!(sealed.len(), SEAL_OVERHEAD + 24);
        assert_eq!(key.open(&HERE, &sealed).unwrap(), b"driver D001 drove 412 km");
        assert!(!sealed.windows(4).any(|w| w == b"D001"), "no plaintext at rest");

        let moved = [
            ChunkAddress { tenant: "globex", ..HERE },
            ChunkAddress { dataset: "staff", ..HERE },
            ChunkAddress { version: 4, ..HERE },
            ChunkAddress { chunk: 8, ..HERE },
            ChunkAddress { column: 1, ..HERE },
            // Length prefixes: ("ac", "metrips") is not ("acme", "trips").
            ChunkAddress { tenant: "ac", dataset: "metrips", ..HERE },
        ];
        for address in moved {
            assert_eq!(key.open(&address, &sealed), Err(SealError::Authentication), "{address:?}");
        }
    }

    #[test]
    fn altered_truncated_or_foreign_chunks_fail() {
        let kek = KeyEncryptionKey::generate();
        let (key, _) = kek.new_data_key("acme");
        let (other, _) = kek.new_data_key("acme");
        let sealed = key.seal(&HERE, b"payload");
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x01;
            assert!(key.open(&HERE, &altered).is_err(), "bit flip at {i}");
        }
        assert!(matches!(key.open(&HERE, &sealed[..SEAL_OVERHEAD - 1]), Err(SealError::Malformed(_))));
        assert_eq!(other.open(&HERE, &sealed), Err(SealError::Authentication));
        // The same plaintext seals differently each time: fresh nonces.
        assert_ne!(key.seal(&HERE, b"payload"), sealed);
    }

    #[test]
    fn data_keys_unwrap_only_for_their_tenant_and_survive_rotation() {
        let old = KeyEncryptionKey::generate();
        let (key, wrapped) = old.new_data_key("acme");
        let sealed = key.seal(&HERE, b"rows");
        assert!(old.unwrap_key(&wrapped, "globex").is_err(), "a wrapping is bound to its tenant");

        let new = KeyEncryptionKey::generate();
        let rewrapped = old.rewrap(&new, &wrapped, "acme").unwrap();
        assert!(old.unwrap_key(&rewrapped, "acme").is_err(), "the old key no longer opens it");
        let key = new.unwrap_key(&rewrapped, "acme").unwrap();
        assert_eq!(key.open(&HERE, &sealed).unwrap(), b"rows", "data untouched by rotation");
    }

    #[test]
    fn key_files_are_raw_or_hex_and_bad_ones_are_named() {
        let kek = KeyEncryptionKey::generate();
        let hex = format!("{}\n", kek.to_hex());
        let again = KeyEncryptionKey::from_key_file("kek.hex", hex.as_bytes()).unwrap();
        let (key, wrapped) = kek.new_data_key("acme");
        assert!(again.unwrap_key(&wrapped, "acme").is_ok());
        drop(key);
        assert!(KeyEncryptionKey::from_key_file("raw", &[7u8; 32]).is_ok());
        for bad in [&b"short"[..], &[b'z'; 64][..], &[0u8; 31][..]] {
            let err = KeyEncryptionKey::from_key_file("kek.key", bad).unwrap_err();
            assert!(err.to_string().starts_with("key file `kek.key`"), "{err}");
        }
        assert_eq!(format!("{kek:?}"), "KeyEncryptionKey(..)", "keys never print");
    }

    /// A key file that is almost hex is refused with an error that quotes
    /// none of it: no panic (a `str` sliced inside a multi-byte character
    /// panics with the whole text in its message), no `+` read as a sign.
    #[test]
    fn a_bad_key_file_is_an_error_that_prints_no_key_material() {
        let secret = "0123456789abcdef".repeat(4);
        let mut bad = vec![
            // 62 digits and an `é`: 64 bytes, not 64 characters.
            format!("{}é", &secret[..62]),
            format!("é{}", &secret[..62]),
            format!("{}é{}\n", &secret[..31], &secret[..31]),
            // `u8::from_str_radix` takes `+a` for 10.
            format!("+a{}", &secret[2..]),
            format!("{} ", &secret[..63]),
            format!("{}00", secret),
        ];
        bad.push(format!("{}\u{2028}", &secret[..61]));
        for text in &bad {
            let err =
                std::panic::catch_unwind(|| KeyEncryptionKey::from_key_file("kek.hex", text.as_bytes()))
                    .unwrap_or_else(|_| panic!("a key file of {} bytes panicked", text.len()))
                    .unwrap_err()
                    .to_string();
            assert_eq!(err, "key file `kek.hex`: expected 32 bytes or 64 hex digits");
        }
        let upper = KeyEncryptionKey::from_key_file("k", secret.to_uppercase().as_bytes()).unwrap();
        assert_eq!(upper.to_hex(), secret);
    }
}
