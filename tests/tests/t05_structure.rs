//! The code's shape, checked like behaviour: within each crate no two modules use
//! each other (directly or around a circle), and no file of non-test code grows
//! past 1,200 lines. A module and its own submodules may use each other (that is
//! how Rust modules are written); siblings and cousins may not form a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferry_tests::workspace_root;

/// The source folders of the workspace's crates.
const CRATES: &[&str] = &[
    "common/src",
    "common/spec/src",
    "coordinator/src",
    "coordinator/core/src",
    "worker/src",
    "client/src",
    "tests/src",
];

const MAX_LINES: usize = 1_200;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a::b` for `src/a/b.rs` or `src/a/b/mod.rs`; empty for the crate root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Test code: files named tests.rs or under a tests/ folder, the in-memory
/// consensus simulation, and whatever follows a file's first `#[cfg(test)]`.
fn is_test_file(parts: &[String]) -> bool {
    parts.iter().any(|p| p == "tests" || p == "sim")
}

fn non_test_text(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

/// Expands `crate::{a, b::c}` and `super::{..}` groups (one level of nesting at
/// a time) so that every path is written out.
fn expand_groups(text: &str) -> String {
    let mut text = text.to_string();
    for _ in 0..4 {
        let mut out = String::new();
        let mut rest = text.as_str();
        let mut changed = false;
        while let Some(at) = rest.find("::{") {
            let head = &rest[..at];
            let start = head
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |i| i + 1);
            let prefix = &head[start..];
            let Some(close) = rest[at + 3..].find(['{', '}']) else {
                break;
            };
            if rest.as_bytes()[at + 3 + close] == b'{' || prefix.is_empty() {
                out.push_str(&rest[..at + 3]);
                rest = &rest[at + 3..];
                continue;
            }
            let inner = &rest[at + 3..at + 3 + close];
            out.push_str(&head[..start]);
            let expanded: Vec<String> = inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|item| format!("{prefix}::{item}"))
                .collect();
            out.push_str(&expanded.join(", "));
            rest = &rest[at + 3 + close + 1..];
            changed = true;
        }
        out.push_str(rest);
        text = out;
        if !changed {
            break;
        }
    }
    text
}

/// The modules of the crate that `module` names through `crate::` or `super::`.
fn uses(module: &[String], text: &str, known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let text = expand_groups(text);
    let mut found = BTreeSet::new();
    for (index, _) in text
        .match_indices("crate::")
        .chain(text.match_indices("super::"))
    {
        let before = text[..index].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let path: String = text[index..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut base: Vec<String> = Vec::new();
        match segments.first() {
            Some(&"crate") => {
                segments.remove(0);
            }
            _ => {
                // `super` of a module is its parent, whether it lives in a.rs or
                // a/mod.rs.
                base = module.to_vec();
                while segments.first() == Some(&"super") {
                    segments.remove(0);
                    base.pop();
                }
            }
        }
        let mut full = base;
        full.extend(segments.iter().map(|s| s.to_string()));
        while !full.is_empty() {
            if known.contains(&full) {
                found.insert(full.clone());
                break;
            }
            full.pop();
        }
    }
    found
}

/// True when one is the other or contains it.
fn nested(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[test]
fn no_module_uses_another_that_uses_it_back_and_no_file_is_too_long() {
    let root = workspace_root();
    let mut too_long = Vec::new();
    let mut circles = Vec::new();
    for folder in CRATES {
        let src = root.join(folder);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut texts = BTreeMap::new();
        for file in &files {
            let module = module_of(&src, file);
            if module.first().is_some_and(|m| m == "bin") || is_test_file(&module) {
                continue;
            }
            let text = std::fs::read_to_string(file).expect("a source file");
            let code = non_test_text(&text);
            let lines = code.lines().count();
            // Comments may name paths; only code counts as a use.
            let code: String = code
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            if lines > MAX_LINES {
                too_long.push(format!("{} ({lines} lines)", file.display()));
            }
            texts.insert(module, code);
        }
        let known: BTreeSet<Vec<String>> = texts.keys().cloned().collect();
        let edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = texts
            .iter()
            .map(|(module, code)| {
                let used = uses(module, code, &known)
                    .into_iter()
                    .filter(|other| !nested(module, other))
                    .collect();
                (module.clone(), used)
            })
            .collect();
        for (from, targets) in &edges {
            for to in targets {
                // Is there a way back from `to` to `from`?
                let mut seen = BTreeSet::new();
                let mut stack = vec![to.clone()];
                while let Some(at) = stack.pop() {
                    if at == *from {
                        circles.push(format!(
                            "{folder}: {} uses {} and is used back",
                            from.join("::"),
                            to.join("::")
                        ));
                        break;
                    }
                    if seen.insert(at.clone()) {
                        stack.extend(edges.get(&at).into_iter().flatten().cloned());
                    }
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "module circles:\n{}",
        circles.join("\n")
    );
    assert!(
        too_long.is_empty(),
        "files of non-test code over {MAX_LINES} lines:\n{}",
        too_long.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle_and_group_imports() {
    let known: BTreeSet<Vec<String>> = [vec!["a".to_string()], vec!["b".to_string()]]
        .into_iter()
        .collect();
    let a = vec!["a".to_string()];
    let used = uses(&a, "use crate::{b::Thing, a::Other};", &known);
    assert!(used.contains(&vec!["b".to_string()]));
    let used = uses(
        &["a".to_string(), "x".to_string()],
        "use super::super::b::T;",
        &known,
    );
    assert!(used.contains(&vec!["b".to_string()]));
    assert_eq!(
        expand_groups("use crate::{a::{b, c}, d};"),
        "use crate::a::b, crate::a::c, crate::d;"
    );
}
