//! `ferry lineage DIGEST` as text: the artifact's ancestry as a tree, from the
//! artifact down through the steps that made each input. A plain function of the
//! coordinator's answer; nothing here talks to the network.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferry_common::digest::short;
use ferry_common::proto;

use crate::render;

/// The tree for the artifact `digest`, drawn from `nodes` (one per artifact a
/// step produced, as `Lineage` answers). Each node prints once; a digest met
/// again (two steps reading one file) says "(see above)", which also ends any
/// cycle in a malformed answer.
pub fn render_tree(digest: &str, nodes: &[proto::LineageNode]) -> String {
    let by_digest: HashMap<&str, &proto::LineageNode> =
        nodes.iter().map(|n| (n.digest.as_str(), n)).collect();
    let mut out = Vec::new();
    let mut printed = BTreeSet::new();
    match by_digest.get(digest).copied().or(nodes.first()) {
        Some(root) => write_node(&mut out, root, "", 0, &by_digest, &mut printed),
        None => out.push(format!("{}: not produced by a step", short(digest))),
    }
    out.join("\n")
}

fn write_node<'a>(
    out: &mut Vec<String>,
    node: &'a proto::LineageNode,
    label: &str,
    depth: usize,
    by_digest: &HashMap<&str, &'a proto::LineageNode>,
    printed: &mut BTreeSet<&'a str>,
) {
    let indent = "  ".repeat(depth);
    if !printed.insert(node.digest.as_str()) {
        out.push(format!(
            "{indent}{label}{} ({}) (see above)",
            node.name,
            short(&node.digest)
        ));
        return;
    }
    out.push(format!(
        "{indent}{label}{} ({}, {}) ← run {} step {} attempt {}",
        node.name,
        short(&node.digest),
        render::bytes(node.size),
        node.run_id,
        node.step,
        node.attempt
    ));
    let detail = format!("{indent}  ");
    write_command(out, &detail, &node.command);
    let code = if node.code_digest.is_empty() || node.code_digest == node.bundle_digest {
        short(&node.bundle_digest).to_string()
    } else {
        format!(
            "{} (bundle {})",
            short(&node.code_digest),
            short(&node.bundle_digest)
        )
    };
    out.push(format!("{detail}code: {code}"));
    if !node.params.is_empty() {
        out.push(format!("{detail}params: {}", sorted(&node.params)));
    }
    if !node.matrix.is_empty() {
        out.push(format!("{detail}matrix: {}", sorted(&node.matrix)));
    }
    for input in &node.inputs {
        match by_digest.get(input.digest.as_str()) {
            Some(child) => write_node(
                out,
                child,
                &format!("input {}: ", input.name),
                depth + 1,
                by_digest,
                printed,
            ),
            None => out.push(format!(
                "{detail}input {} ({}): not produced by a step",
                input.name,
                short(&input.digest)
            )),
        }
    }
}

/// `command: ...` on one line; a multi-line word (the script of a `shell:`
/// step) is shown below it, a line each, so that it does not break the tree.
fn write_command(out: &mut Vec<String>, indent: &str, command: &[String]) {
    let scripts: Vec<&String> = command.iter().filter(|w| w.contains('\n')).collect();
    if scripts.is_empty() {
        out.push(format!("{indent}command: {}", shell_words(command)));
        return;
    }
    let words: Vec<String> = command
        .iter()
        .map(|w| {
            if w.contains('\n') {
                "(script below)".to_string()
            } else {
                shell_words(std::slice::from_ref(w))
            }
        })
        .collect();
    out.push(format!("{indent}command: {}", words.join(" ")));
    for script in scripts {
        for line in script.trim_end_matches('\n').lines() {
            out.push(format!("{indent}  │ {line}").trim_end().to_string());
        }
    }
}

fn sorted(map: &HashMap<String, String>) -> String {
    map.iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command line as one would type it: words with spaces or quotes in single
/// quotes.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn input(name: &str, c: char) -> proto::InputView {
        proto::InputView {
            name: name.into(),
            digest: digest(c),
            size: 100,
        }
    }

    fn node(c: char, name: &str, step: &str, inputs: Vec<proto::InputView>) -> proto::LineageNode {
        proto::LineageNode {
            digest: digest(c),
            name: name.into(),
            size: 2048,
            run_id: 7,
            step: step.into(),
            attempt: 1,
            command: vec!["python3".into(), format!("{step}.py")],
            bundle_digest: digest('b'),
            code_digest: digest('b'),
            params: HashMap::new(),
            matrix: HashMap::new(),
            inputs,
        }
    }

    #[test]
    fn the_tree_runs_from_the_artifact_down_to_its_sources() {
        let mut model = node(
            'm',
            "model.json",
            "train",
            vec![input("train", 't'), input("raw", 'r')],
        );
        model.params = HashMap::from([("seed".into(), "1".into()), ("k".into(), "5".into())]);
        model.matrix = HashMap::from([("k".into(), "5".into())]);
        model.code_digest = digest('c');
        model.command.push("--name=a b".into());
        let split = node('t', "train.csv", "split", vec![input("raw", 'r')]);
        let text = render_tree(&digest('m'), &[model, split]);
        let (m, t, r, b, c) = (
            short(&digest('m')).to_string(),
            short(&digest('t')).to_string(),
            short(&digest('r')).to_string(),
            short(&digest('b')).to_string(),
            short(&digest('c')).to_string(),
        );
        assert_eq!(
            text,
            [
                format!("model.json ({m}, 2.0 KiB) ← run 7 step train attempt 1"),
                "  command: python3 train.py '--name=a b'".to_string(),
                format!("  code: {c} (bundle {b})"),
                "  params: k=5 seed=1".to_string(),
                "  matrix: k=5".to_string(),
                format!("  input train: train.csv ({t}, 2.0 KiB) ← run 7 step split attempt 1"),
                "    command: python3 split.py".to_string(),
                format!("    code: {b}"),
                format!("    input raw ({r}): not produced by a step"),
                format!("  input raw ({r}): not produced by a step"),
            ]
            .join("\n")
        );
    }

    #[test]
    fn a_digest_met_again_is_printed_once() {
        let shared = node('s', "data.csv", "prep", vec![]);
        let left = node('l', "left.json", "left", vec![input("data", 's')]);
        // A malformed answer where a node is its own ancestor must still end.
        let looped = node(
            'r',
            "right.json",
            "right",
            vec![input("data", 's'), input("me", 'r')],
        );
        let top = node(
            't',
            "top.json",
            "top",
            vec![input("a", 'l'), input("b", 'r')],
        );
        let text = render_tree(&digest('t'), &[top, left, looped, shared]);
        assert_eq!(text.matches("data.csv").count(), 2, "{text}");
        assert_eq!(text.matches("(see above)").count(), 2, "{text}");
        assert!(
            text.contains(&format!(
                "input me: right.json ({}) (see above)",
                short(&digest('r'))
            )),
            "{text}"
        );
    }

    #[test]
    fn a_script_is_shown_a_line_each() {
        let mut step = node('s', "out.txt", "shell", vec![]);
        step.command = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo one > out.txt\necho 'two'\n".into(),
        ];
        let text = render_tree(&digest('s'), &[step]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "  command: /bin/sh -c (script below)");
        assert_eq!(lines[2], "    │ echo one > out.txt");
        assert_eq!(lines[3], "    │ echo 'two'");
        assert_eq!(lines[4], format!("  code: {}", short(&digest('b'))));
    }

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        let words: Vec<String> = ["echo", "a b", "", "it's", "--k=5"]
            .map(String::from)
            .to_vec();
        assert_eq!(shell_words(&words), r"echo 'a b' '' 'it'\''s' --k=5");
    }
}
