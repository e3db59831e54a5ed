//! Relative paths a spec names: a step's outputs (files in its work directory)
//! and `cache.paths` (files or folders of the code bundle), checked and
//! normalized so that equal paths compare equal.

/// Validates and normalizes an output path: relative, naming a file inside the
/// step's work directory. `./a//b.txt` becomes `a/b.txt`. The error reads as a
/// sentence: `output path "../x" leaves the step's work directory`.
pub fn validate_output_path(path: &str) -> Result<String, String> {
    normalize_output(path).map_err(|why| format!("output path {path:?} {why}"))
}

/// The problem with an output path, as a predicate: `is empty`, `leaves the step's
/// work directory`, ...
pub(super) fn normalize_output(path: &str) -> Result<String, String> {
    const ROOT: &str = "the step's work directory";
    check_relative(path, "outputs", ROOT)?;
    if path.ends_with('/') {
        return Err("ends with '/'; an output must name a file".to_string());
    }
    let parts = relative_parts(path, ROOT)?;
    if parts.is_empty() {
        return Err("does not name a file".to_string());
    }
    Ok(parts.join("/"))
}

/// Like [`normalize_output`], for a file or folder of the code bundle (`cache.paths`):
/// a trailing `/` marks a folder and is dropped.
pub(super) fn normalize_bundle_path(path: &str) -> Result<String, String> {
    const ROOT: &str = "the code bundle";
    check_relative(path, "cache paths", ROOT)?;
    let parts = relative_parts(path, ROOT)?;
    if parts.is_empty() {
        return Err(
            "names the whole code bundle; leave out `paths` to key the cache on all of it"
                .to_string(),
        );
    }
    Ok(parts.join("/"))
}

/// The problems a relative path can show before it is split: empty, odd
/// characters, absolute. `kind` and `root` complete the sentence "`kind` are
/// paths relative to `root`".
fn check_relative(path: &str, kind: &str, root: &str) -> Result<(), String> {
    if path.trim().is_empty() {
        return Err("is empty".to_string());
    }
    if path.contains('\0') {
        return Err("contains a NUL character".to_string());
    }
    if path.contains('\\') {
        return Err("contains a backslash; separate directories with '/'".to_string());
    }
    if path.starts_with('/') {
        return Err(format!("is absolute; {kind} are paths relative to {root}"));
    }
    Ok(())
}

/// The components of a relative path, without empty and `.` ones. A `..` is
/// refused: one that climbs above `root` says so, any other asks to drop it.
fn relative_parts<'p>(path: &'p str, root: &str) -> Result<Vec<&'p str>, String> {
    let mut parts: Vec<&str> = Vec::new();
    let mut depth: i64 = 0;
    let mut escapes = false;
    let mut dotdot = false;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                dotdot = true;
                depth -= 1;
                if depth < 0 {
                    escapes = true;
                }
            }
            _ => {
                depth += 1;
                parts.push(part);
            }
        }
    }
    if escapes {
        return Err(format!("leaves {root}"));
    }
    if dotdot {
        return Err("contains a '..' component; write the path without it".to_string());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths() {
        assert_eq!(validate_output_path("./ok.txt"), Ok("ok.txt".to_string()));
        assert_eq!(validate_output_path("a/b.json"), Ok("a/b.json".to_string()));
        assert_eq!(
            validate_output_path("models//m.json"),
            Ok("models/m.json".to_string())
        );
        let e = validate_output_path("../x").unwrap_err();
        assert!(e.contains("leaves the step's work directory"), "{e}");
        assert!(
            validate_output_path("/etc/passwd")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            validate_output_path("a/../../b")
                .unwrap_err()
                .contains("leaves")
        );
        assert!(validate_output_path("a/../b").unwrap_err().contains(".."));
        for bad in ["", " ", ".", "./", "dir/", "a\\b"] {
            assert!(validate_output_path(bad).is_err(), "{bad:?} should fail");
        }
    }
}
