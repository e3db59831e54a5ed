//! An artifact's lineage as a graph: each artifact below the step attempt that
//! wrote it, each such step below its inputs (artifacts, or files the run was
//! given) and its code bundle, with the step's parameters and command beside.

use std::collections::HashMap;

use axum::extract::{Path, State};
use ferry_common::digest::short;
use ferry_common::proto;
use minijinja::context;
use serde::Serialize;

use crate::render;
use crate::ui::error::PageResult;
use crate::ui::{Shared, dag};

/// A box of the lineage graph.
#[derive(Debug, PartialEq)]
pub(crate) struct Item {
    pub(crate) key: String,
    pub(crate) label: String,
    /// `artifact`, `step` or `code` (coloured by the page's CSS).
    pub(crate) kind: &'static str,
    pub(crate) detail: String,
    pub(crate) href: String,
}

/// The graph of `nodes` (as `Lineage` answers). Pure.
pub(crate) fn graph(nodes: &[proto::LineageNode]) -> (Vec<Item>, Vec<(usize, usize)>) {
    let mut items: Vec<Item> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut edges = Vec::new();
    let mut add = |items: &mut Vec<Item>, item: Item| -> usize {
        *index.entry(item.key.clone()).or_insert_with(|| {
            items.push(item);
            items.len() - 1
        })
    };
    for node in nodes {
        let artifact = add(
            &mut items,
            Item {
                key: format!("artifact:{}", node.digest),
                label: node.name.clone(),
                kind: "artifact",
                detail: format!("{} · {}", short(&node.digest), render::bytes(node.size)),
                href: format!("/lineage/{}", node.digest),
            },
        );
        let step = add(
            &mut items,
            Item {
                key: format!("step:{}:{}:{}", node.run_id, node.step, node.attempt),
                label: node.step.clone(),
                kind: "step",
                detail: format!("run {} · attempt {}", node.run_id, node.attempt),
                href: format!(
                    "/runs/{}/steps/{}",
                    node.run_id,
                    crate::ui::query::encode(&node.step)
                ),
            },
        );
        push_edge(&mut edges, step, artifact);
        let code = if node.code_digest.is_empty() {
            &node.bundle_digest
        } else {
            &node.code_digest
        };
        if !code.is_empty() {
            let code_item = add(
                &mut items,
                Item {
                    key: format!("code:{code}"),
                    label: "code".to_string(),
                    kind: "code",
                    detail: short(code).to_string(),
                    href: String::new(),
                },
            );
            push_edge(&mut edges, code_item, step);
        }
        for input in &node.inputs {
            let from = add(
                &mut items,
                Item {
                    key: format!("artifact:{}", input.digest),
                    label: input.name.clone(),
                    kind: "artifact",
                    detail: format!("{} · {}", short(&input.digest), render::bytes(input.size)),
                    href: format!("/lineage/{}", input.digest),
                },
            );
            push_edge(&mut edges, from, step);
        }
    }
    edges.sort_unstable();
    (items, edges)
}

fn push_edge(edges: &mut Vec<(usize, usize)>, from: usize, to: usize) {
    if from != to && !edges.contains(&(from, to)) {
        edges.push((from, to));
    }
}

#[derive(Serialize)]
struct StepRow {
    run: u64,
    step: String,
    attempt: u32,
    artifact: String,
    digest: String,
    command: String,
    code: String,
    params: String,
    matrix: String,
}

/// `GET /lineage/{digest}`.
pub(crate) async fn page(State(ui): State<Shared>, Path(digest): Path<String>) -> PageResult {
    let answer = super::lineage_of(&ui, &digest).await?;
    let (items, edges) = graph(&answer.nodes);
    let nodes: Vec<dag::Node<'_>> = items
        .iter()
        .map(|i| dag::Node {
            key: &i.key,
            label: &i.label,
            state: i.kind,
            detail: Some(i.detail.as_str()),
            href: &i.href,
        })
        .collect();
    let svg = dag::render(&nodes, &edges);
    let steps: Vec<StepRow> = answer
        .nodes
        .iter()
        .map(|n| StepRow {
            run: n.run_id,
            step: n.step.clone(),
            attempt: n.attempt,
            artifact: n.name.clone(),
            digest: n.digest.clone(),
            command: crate::lineage::shell_words(&n.command),
            code: if n.code_digest.is_empty() {
                n.bundle_digest.clone()
            } else {
                n.code_digest.clone()
            },
            params: crate::compare::key_values(&n.params),
            matrix: crate::compare::key_values(&n.matrix),
        })
        .collect();
    ui.views.page(
        "lineage.html",
        context! {
            title => format!("Lineage of {}", short(&digest)),
            digest => digest,
            graph => svg,
            steps => steps,
        },
        &ui.guard.cookie(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_sit_below_their_steps_and_inputs() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let nodes = vec![
            proto::LineageNode {
                digest: b.clone(),
                name: "model.json".into(),
                run_id: 3,
                step: "train".into(),
                attempt: 1,
                code_digest: "c".repeat(64),
                inputs: vec![proto::InputView {
                    name: "train.csv".into(),
                    digest: a.clone(),
                    size: 10,
                }],
                ..Default::default()
            },
            proto::LineageNode {
                digest: a.clone(),
                name: "train.csv".into(),
                run_id: 3,
                step: "split".into(),
                attempt: 1,
                code_digest: "c".repeat(64),
                ..Default::default()
            },
        ];
        let (items, edges) = graph(&nodes);
        let kinds: Vec<&str> = items.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, ["artifact", "step", "code", "artifact", "step"]);
        // step→model, code→train, train.csv→train, split→train.csv, code→split
        assert_eq!(edges, [(1, 0), (2, 1), (2, 4), (3, 1), (4, 3)]);
    }
}
