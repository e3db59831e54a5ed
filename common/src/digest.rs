//! Content hashing for blobs and bundles.
//!
//! Every blob Ferry stores or moves (code bundles, step inputs and outputs) is named
//! by the BLAKE3 digest of its bytes, written as 64 lowercase hexadecimal
//! characters. The client, the coordinator and the worker all hash with these
//! functions, so a digest computed on one side always matches the other.

use std::fs::File;
use std::io;
use std::path::Path;

/// Size of one blob chunk on the wire, in bytes (256 KiB).
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Returns true if `s` looks like a digest: exactly 64 lowercase hexadecimal characters.
pub fn is_valid_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Returns the hex BLAKE3 digest of `data`.
pub fn digest_bytes(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Hashes the file at `path` (see [`crate::blobio`]: holes are not read) and returns its hex BLAKE3 digest and
/// its size in bytes.
pub fn digest_file(path: &Path) -> io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    // Frames of a MiB hashed on every core; holes are not read.
    for frame in crate::blobio::FrameReader::new(File::open(path)?)? {
        let frame = frame?;
        frame.hash_into(&mut hasher);
        size += frame.len();
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// Returns the first 12 characters of a digest, for display. Shorter input is
/// returned whole.
pub fn short(digest: &str) -> &str {
    match digest.char_indices().nth(12) {
        Some((i, _)) => &digest[..i],
        None => digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn digest_of_empty_input_is_the_known_blake3_value() {
        assert_eq!(
            digest_bytes(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn digests_are_valid_and_distinct() {
        let a = digest_bytes(b"hello");
        let b = digest_bytes(b"hello!");
        assert!(is_valid_digest(&a));
        assert!(is_valid_digest(&b));
        assert_ne!(a, b);
        assert_eq!(a, digest_bytes(b"hello"));
    }

    #[test]
    fn validity_check_rejects_bad_strings() {
        assert!(!is_valid_digest(""));
        assert!(!is_valid_digest(&"a".repeat(63)));
        assert!(!is_valid_digest(&"a".repeat(65)));
        assert!(!is_valid_digest(&"A".repeat(64)));
        assert!(!is_valid_digest(&"g".repeat(64)));
        assert!(!is_valid_digest(&format!("../{}", "a".repeat(61))));
        assert!(is_valid_digest(&"0123456789abcdef".repeat(4)));
    }

    #[test]
    fn file_digest_matches_bytes_digest_across_read_boundaries() {
        let data: Vec<u8> = (0..(3 * crate::blobio::FRAME_BYTES + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let (d, size) = digest_file(f.path()).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(d, digest_bytes(&data));
    }

    #[test]
    fn file_digest_of_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = digest_file(&dir.path().join("nope")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn short_takes_twelve_characters() {
        let d = digest_bytes(b"x");
        assert_eq!(short(&d), &d[..12]);
        assert_eq!(short("abc"), "abc");
    }
}
