//! The cluster's secrets keys and the AEAD that seals secret values
//! (XChaCha20-Poly1305, RustCrypto's `chacha20poly1305`).
//!
//! A key file holds 32 random bytes; its id is derived from the key (the first
//! 16 hex digits of its BLAKE3 hash), so a sealed value names the key that
//! opens it and a new key file has a new id. A coordinator seals with its
//! current key (`secrets_key` in coordinator.toml) and opens with it or any
//! older key (`secrets_keys`): rotation is adding a new current key while the
//! old one stays in the keyring, then `ferry secrets rotate-key`.

use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Length of a key file.
pub const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secrets key {path} has {len} bytes; a key file holds exactly {KEY_BYTES} random \
         bytes (create one with `ferry certs secrets-key PATH`)"
    )]
    Length { path: PathBuf, len: usize },
    #[error(
        "the secrets key {path} may be read by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("cannot create the secrets key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secret was sealed with key {key_id}, which is not in this coordinator's keyring \
         (`secrets_key` and `secrets_keys` in coordinator.toml)"
    )]
    UnknownKey { key_id: String },
    #[error("the secret sealed with key {key_id} does not open: the ciphertext or key is wrong")]
    Tampered { key_id: String },
    #[error("the secret could not be sealed")]
    Seal,
}

/// A value sealed by one key: what the state machine stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// One key of the keyring.
pub struct SecretKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> SecretKey {
        let id = blake3::hash(bytes).to_hex()[..16].to_string();
        SecretKey {
            id,
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }

    /// Reads a key file: exactly 32 bytes, readable by its owner only.
    pub fn load(path: &Path) -> Result<SecretKey, SecretsError> {
        let read = |source| SecretsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretsError::Readable {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let key: [u8; KEY_BYTES] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretsError::Length {
                    path: path.to_path_buf(),
                    len: bytes.len(),
                })?;
        Ok(SecretKey::from_bytes(&key))
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Writes a new key file of 32 random bytes (mode 0600; never over an existing
/// file) and answers its id.
pub fn create_key_file(path: &Path) -> Result<String, SecretsError> {
    let create = |source| SecretsError::Create {
        path: path.to_path_buf(),
        source,
    };
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(create)?;
    file.write_all(&key).map_err(create)?;
    file.sync_all().map_err(create)?;
    let bytes: [u8; KEY_BYTES] = key.into();
    Ok(SecretKey::from_bytes(&bytes).id)
}

/// The keys a coordinator holds: the current one seals, all of them open.
#[derive(Debug)]
pub struct Keyring {
    current: SecretKey,
    older: Vec<SecretKey>,
}

impl Keyring {
    pub fn new(current: SecretKey, older: Vec<SecretKey>) -> Keyring {
        Keyring { current, older }
    }

    /// Loads `current` and `older` key files.
    pub fn load(current: &Path, older: &[PathBuf]) -> Result<Keyring, SecretsError> {
        Ok(Keyring {
            current: SecretKey::load(current)?,
            older: older
                .iter()
                .map(|p| SecretKey::load(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `value` with the current key and a random nonce; `context` (the
    /// secret's project and name) is bound to it, so a sealed value copied
    /// onto another secret does not open.
    pub fn seal(&self, context: &str, value: &[u8]) -> Result<Sealed, SecretsError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Seal)?;
        Ok(Sealed {
            key_id: self.current.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a value sealed by any key of the keyring.
    pub fn open(&self, context: &str, sealed: &Sealed) -> Result<Vec<u8>, SecretsError> {
        let key = std::iter::once(&self.current)
            .chain(&self.older)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| SecretsError::UnknownKey {
                key_id: sealed.key_id.clone(),
            })?;
        let tampered = || SecretsError::Tampered {
            key_id: sealed.key_id.clone(),
        };
        if sealed.nonce.len() != 24 {
            return Err(tampered());
        }
        key.cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| tampered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        let id_a = create_key_file(&a).unwrap();
        let id_b = create_key_file(&b).unwrap();
        assert_ne!(id_a, id_b);
        assert!(create_key_file(&a).is_err(), "never over an existing key");
        let ring_a = Keyring::load(&a, &[]).unwrap();
        assert_eq!(ring_a.current_id(), id_a);
        let value = b"hf_0123456789abcdef";
        let sealed = ring_a.seal("default/hf", value).unwrap();
        assert!(
            !sealed
                .ciphertext
                .windows(value.len())
                .any(|w| w == value.as_slice()),
            "ciphertext holds no plaintext"
        );
        let again = ring_a.seal("default/hf", value).unwrap();
        assert_ne!(sealed.nonce, again.nonce, "a random nonce per value");
        assert_eq!(ring_a.open("default/hf", &sealed).unwrap(), value);
        // Bound to the secret it was sealed for.
        assert!(matches!(
            ring_a.open("default/other", &sealed),
            Err(SecretsError::Tampered { .. })
        ));
        // A wrong key is refused, by id or when the id is forged.
        let ring_b = Keyring::load(&b, &[]).unwrap();
        assert!(matches!(
            ring_b.open("default/hf", &sealed),
            Err(SecretsError::UnknownKey { .. })
        ));
        let forged = Sealed {
            key_id: id_b.clone(),
            ..sealed.clone()
        };
        assert!(matches!(
            ring_b.open("default/hf", &forged),
            Err(SecretsError::Tampered { .. })
        ));
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(ring_a.open("default/hf", &flipped).is_err());
        // Rotation: b seals, a still opens what it sealed.
        let rotated = Keyring::load(&b, std::slice::from_ref(&a)).unwrap();
        assert_eq!(rotated.open("default/hf", &sealed).unwrap(), value);
        assert_eq!(rotated.seal("default/hf", value).unwrap().key_id, id_b);
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, [1u8; 16]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = SecretKey::load(&short).unwrap_err().to_string();
        assert!(err.contains("has 16 bytes"), "{err}");
        let open = dir.path().join("open");
        std::fs::write(&open, [1u8; 32]).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretKey::load(&open).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
