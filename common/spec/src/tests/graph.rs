//! References between steps: `needs`, `inputs`, and cycles.

use super::*;

#[test]
fn unknown_need_with_suggestion() {
    let yaml = "name: x\nsteps:\n  - name: split\n    command: [x]\n  - name: train\n    command: [x]\n    needs:\n      - split\n      - splt\n";
    let d = single(
        yaml,
        &["step \"train\" needs \"splt\", which is not a step (did you mean \"split\"?)"],
        Some(9),
    );
    assert_eq!(d.column, Some(9));
    assert_eq!(
        d.to_string(),
        "error: pipeline.yaml:9:9: step \"train\" needs \"splt\", which is not a step (did you mean \"split\"?)"
    );
    let d = single(
        "name: x\nsteps:\n  - name: split\n    command: [x]\n  - name: train\n    command: [x]\n    needs: [zzzzzz]\n",
        &["needs \"zzzzzz\", which is not a step"],
        Some(7),
    );
    assert!(!d.message.contains("did you mean"), "{d}");
}

#[test]
fn need_token_is_not_matched_inside_other_words() {
    // "a" appears inside "data" and "ab" before the real entry.
    let yaml = "name: x\nsteps:\n  - name: data\n    command: [x]\n  - name: ab\n    command: [x]\n  - name: c\n    command: [x]\n    needs: [data, ab, a]\n";
    let d = single(yaml, &["needs \"a\""], Some(9));
    assert_eq!(d.column, Some(23));
}

#[test]
fn self_need() {
    single(
        "name: x\nsteps:\n  - name: a\n    command: [x]\n    needs: [a]\n",
        &["step \"a\" needs itself"],
        Some(5),
    );
}

#[test]
fn cycle_is_printed() {
    let yaml = "name: x\nsteps:\n  - name: a\n    command: [x]\n    needs: [c]\n  - name: b\n    command: [x]\n    needs: [a]\n  - name: c\n    command: [x]\n    needs: [b]\n  - name: d\n    command: [x]\n    needs: [c]\n";
    let d = single(yaml, &["steps form a cycle: a → b → c → a"], Some(5));
    assert_eq!(d.column, Some(13));
}

#[test]
fn cycle_through_inputs_and_two_cycles() {
    let yaml = "name: x\nsteps:\n  - name: a\n    command: [x]\n    inputs: {i: b/o}\n    outputs: [o]\n  - name: b\n    command: [x]\n    inputs: {i: a/o}\n    outputs: [o]\n  - name: c\n    command: [x]\n    needs: [d]\n  - name: d\n    command: [x]\n    needs: [c]\n";
    let diags = errors(yaml);
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    let d = find(&diags, &["a → b → a"]);
    assert_eq!(d.line, Some(5));
    let d = find(&diags, &["c → d → c"]);
    assert_eq!(d.line, Some(13));
}

const TWO: &str = "name: x\nsteps:\n  - name: train\n    command: [x]\n    outputs: [weights.bin]\n  - name: evaluate\n    command: [x]\n    inputs:\n";

#[test]
fn input_points_at_undeclared_output() {
    let d = single(
        &format!("{TWO}      model: train/model.json\n"),
        &[
            "input \"model\" of step \"evaluate\" points at \"train/model.json\", but step \"train\" declares no output \"model.json\" (it declares: weights.bin)",
        ],
        Some(9),
    );
    assert_eq!(d.column, Some(14));
}

#[test]
fn input_errors() {
    single(
        &format!("{TWO}      model: model.json\n"),
        &["\"model.json\"", "not of the form <step>/<output>"],
        Some(9),
    );
    single(
        &format!("{TWO}      model: trian/weights.bin\n"),
        &["no step \"trian\"", "did you mean \"train\""],
        Some(9),
    );
    single(
        &format!("{TWO}      my-model: train/weights.bin\n"),
        &["input name \"my-model\"", "invalid"],
        Some(9),
    );
    single(
        &format!("{TWO}      model: evaluate/x\n"),
        &["output of the step itself"],
        Some(9),
    );
    single(
        &format!("{TWO}      model: train/./weights.bin\n      Model: train/weights.bin\n"),
        &["FERRY_INPUT_MODEL"],
        Some(10),
    );
    single(
        "name: x\nsteps:\n  - name: a\n    command: [x]\n  - name: b\n    command: [x]\n    inputs: {i: a/o}\n",
        &["declares no output \"o\"", "declares no outputs"],
        Some(7),
    );
}

#[test]
fn input_reference_splits_at_first_slash() {
    let p = parse(&format!(
        "{TWO}      w: train/weights.bin\n  - name: deep\n    command: [x]\n    outputs: [models/m.json]\n  - name: use\n    command: [x]\n    inputs: {{m: deep/models/m.json}}\n"
    ))
    .unwrap();
    let step = p.steps.iter().find(|s| s.name == "use").unwrap();
    assert_eq!(step.inputs[0].step, "deep");
    assert_eq!(step.inputs[0].output, "models/m.json");
    assert_eq!(step.needs, ["deep"]);
}
