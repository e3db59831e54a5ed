//! Tests of [`parse_pipeline`] as a whole, split by area, and the helpers they
//! share. Tests of one module's pure helpers sit beside that module.

use std::collections::{BTreeMap, BTreeSet};

use super::types::render;
use super::*;

mod containers;
mod gather;
mod graph;
mod matrix;
mod pipeline_errors;
mod resolve;
mod step_errors;

fn parse(yaml: &str) -> Result<Pipeline, SpecError> {
    parse_pipeline("pipeline.yaml", yaml, &BTreeMap::new())
}

fn parse_with(yaml: &str, overrides: &[(&str, &str)]) -> Result<Pipeline, SpecError> {
    let overrides = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_pipeline("pipeline.yaml", yaml, &overrides)
}

fn errors(yaml: &str) -> Vec<Diagnostic> {
    match parse(yaml) {
        Ok(p) => panic!("expected an error, got {p:#?}"),
        Err(e) => e.diagnostics,
    }
}

/// The only diagnostic whose message contains all of `words`; panics with
/// every diagnostic otherwise.
fn find<'a>(diags: &'a [Diagnostic], words: &[&str]) -> &'a Diagnostic {
    let hits: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| words.iter().all(|w| d.message.contains(w)))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one diagnostic with {words:?}, got:\n{}",
        render(diags)
    );
    hits[0]
}

/// Exactly one diagnostic, containing `words`, at `line` (if given).
fn single(yaml: &str, words: &[&str], line: Option<usize>) -> Diagnostic {
    let diags = errors(yaml);
    assert_eq!(
        diags.len(),
        1,
        "expected one diagnostic:\n{}",
        render(&diags)
    );
    let d = find(&diags, words).clone();
    assert_eq!(d.line, line, "wrong line for {d}");
    d
}

const IRIS: &str = r#"
name: iris
params:
  seed: 42
  test_fraction: 0.3
  verbose: true
  label: species
steps:
  - name: evaluate
    command: ["python3", "eval.py", "--model", "model.json"]
    inputs:
      test: split/test.csv
      model: train/model.json
    outputs: [report.json]
  - name: split        # first real step
    command: ["python3", "split.py", "--seed", "${params.seed}", "--fraction=${params.test_fraction}", 3]
    outputs: [train.csv, ./test.csv]
    resources: {cpu: 2, memory: 1Gi, gpu: 1}
  - name: train
    shell: "python3 train.py --label ${params.label} | tee log.txt"
    needs: [split, split]
    inputs:
      train: split/train.csv
    outputs:
      - model.json
      - models/m.json
    env:
      VERBOSE: "${params.verbose}"
      SEED: ${params.seed}
      N: 3
      LITERAL: "$$HOME costs $5"
    retries: 2
    timeout: 1h30m
"#;

const SWEEP: &str = r#"name: sweep
params:
  epochs: 3
steps:
  - name: report
    command: [report]
    needs: [train]
  - name: train
    command: [python3, train.py, "--lr=${matrix.lr}", --depth, "${matrix.depth}", "--epochs=${params.epochs}"]
    matrix:
      lr: [0.1, 0.01]
      depth: [3, 5, 7]
    inputs: {data: prep/data.csv}
    outputs: [model.json]
    env:
      TAG: "lr${matrix.lr}-d${matrix.depth}"
    max_parallel: 2
  - name: prep
    command: [prep]
    outputs: [data.csv]
"#;

fn names(p: &Pipeline) -> Vec<&str> {
    p.steps.iter().map(|s| s.name.as_str()).collect()
}

fn step<'a>(p: &'a Pipeline, name: &str) -> &'a Step {
    p.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {:?}", names(p)))
}

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const GATHER: &str = r#"name: g
steps:
  - name: pick
    command: [p]
    gather:
      - {step: train, best: accuracy}
      - {step: eval, best: loss, goal: min}
  - name: train
    command: [t]
    matrix: {lr: [1, 2]}
    outputs: [model.json]
  - name: eval
    command: [e]
    matrix: {split: [a, b]}
    gather: [train]
"#;
