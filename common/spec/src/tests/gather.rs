//! `gather:`: its forms, its errors, and matrix steps among other steps.

use super::*;

#[test]
fn gather_forms() {
    let p = parse(GATHER).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        names(&p),
        ["train.0", "train.1", "eval.0", "eval.1", "pick"]
    );
    for eval in ["eval.0", "eval.1"] {
        let s = step(&p, eval);
        assert_eq!(s.needs, ["train.0", "train.1"]);
        assert_eq!(
            s.gather,
            [Gather {
                step: "train".into(),
                best: None
            }]
        );
    }
    let pick = step(&p, "pick");
    assert_eq!(pick.needs, ["eval.0", "eval.1", "train.0", "train.1"]);
    assert_eq!(
        pick.gather,
        [
            Gather {
                step: "train".into(),
                best: Some(BestBy {
                    metric: "accuracy".into(),
                    goal: Goal::Max
                })
            },
            Gather {
                step: "eval".into(),
                best: Some(BestBy {
                    metric: "loss".into(),
                    goal: Goal::Min
                })
            },
        ]
    );
    assert!(pick.inputs.is_empty());
}

#[test]
fn gather_errors() {
    let base = "name: g\nsteps:\n  - name: train\n    command: [t]\n    matrix: {lr: [1, 2]}\n  - name: prep\n    command: [p]\n  - name: pick\n    command: [x]\n";
    let long = "m".repeat(MAX_METRIC_NAME_LEN + 1);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "    gather: [trian]\n".into(),
            vec!["step \"pick\" gathers \"trian\", which is not a step (did you mean \"train\"?)"],
        ),
        (
            "    gather: [prep]\n".into(),
            vec![
                "step \"pick\" gathers \"prep\", which is not a matrix step",
                "use `needs` or `inputs`",
            ],
        ),
        (
            "    gather: [train, {step: train, best: acc}]\n".into(),
            vec!["step \"pick\" gathers \"train\" twice"],
        ),
        (
            "    gather: [pick]\n".into(),
            vec!["step \"pick\" gathers itself"],
        ),
        (
            "    gather: [{step: train, goal: min}]\n".into(),
            vec!["gather of \"train\" by step \"pick\" sets `goal` without `best`"],
        ),
        (
            "    gather: [{step: train, best: acc, goal: up}]\n".into(),
            vec!["gather.goal of step \"pick\" must be max or min, got \"up\""],
        ),
        (
            "    gather: [{step: train, best: \"\"}]\n".into(),
            vec!["gather.best of step \"pick\" must be a metric name of 1 to 128 bytes, got \"\""],
        ),
        (
            format!("    gather: [{{step: train, best: {long}}}]\n"),
            vec!["gather.best of step \"pick\" must be a metric name"],
        ),
        (
            "    gather: [{step: train, best: 3}]\n".into(),
            vec!["gather.best", "got 3"],
        ),
        (
            "    gather: [{stpe: train}]\n".into(),
            vec![
                "gather of step \"pick\" has an unknown field \"stpe\" (did you mean \"step\"?); use `step`, `best` and `goal`",
            ],
        ),
        (
            "    gather: [{best: acc}]\n".into(),
            vec!["an entry of gather of step \"pick\" has no `step`"],
        ),
        (
            "    gather: [{step: [train]}]\n".into(),
            vec!["gather.step of step \"pick\" must be a step name, got a list"],
        ),
        (
            "    gather: [7]\n".into(),
            vec!["gather of step \"pick\" lists 7; each entry must be a step name or a map"],
        ),
    ];
    for (field, words) in cases {
        single(&format!("{base}{field}"), &words, Some(10));
    }
    single(
        "name: g\nsteps:\n  - name: train\n    command: [t]\n    matrix: {lr: [1]}\n    gather: [train]\n",
        &["step \"train\" gathers itself"],
        Some(6),
    );
    single(
        &format!("{base}    gather: train\n"),
        &["gather", "expected a sequence"],
        Some(10),
    );
    // Two sweeps behind one environment variable.
    single(
        "name: g\nsteps:\n  - name: train\n    command: [t]\n    matrix: {lr: [1]}\n  - name: train_best\n    command: [t]\n    matrix: {lr: [1]}\n  - name: pick\n    command: [x]\n    gather: [{step: train, best: acc}, train_best]\n",
        &[
            "step \"pick\" gathers \"train\" and \"train_best\", which both set the environment variable FERRY_GATHER_TRAIN_BEST",
        ],
        Some(11),
    );
}

#[test]
fn gather_cycles_are_found() {
    let yaml = "name: g\nsteps:\n  - name: a\n    command: [x]\n    matrix: {n: [1]}\n    gather: [b]\n  - name: b\n    command: [x]\n    matrix: {n: [1]}\n    gather: [a]\n";
    let d = single(yaml, &["steps form a cycle: a → b → a"], Some(6));
    assert_eq!(d.column, Some(14));
}

#[test]
fn input_from_a_matrix_step_is_refused() {
    let yaml = "name: g\nsteps:\n  - name: train\n    command: [t]\n    matrix: {lr: [1, 2]}\n    outputs: [model.json]\n  - name: select\n    command: [s]\n    inputs:\n      m: train/model.json\n";
    let d = single(yaml, &[], Some(10));
    assert_eq!(
        d.message,
        "input \"m\" of step \"select\" points at \"train/model.json\", but \"train\" is a matrix step (one step per combination); use `gather: [train]` to receive every trial's outputs"
    );
}

#[test]
fn matrix_steps_take_inputs_and_needs() {
    let yaml = "name: g\nsteps:\n  - name: prep\n    command: [p]\n    outputs: [d.csv]\n  - name: setup\n    command: [s]\n  - name: train\n    command: [t]\n    needs: [setup]\n    inputs: {d: prep/d.csv}\n    matrix: {lr: [1, 2]}\n";
    let p = parse(yaml).unwrap();
    assert_eq!(names(&p), ["prep", "setup", "train.0", "train.1"]);
    for s in &p.steps[2..] {
        assert_eq!(s.needs, ["prep", "setup"]);
        assert_eq!(
            s.inputs,
            [Input {
                name: "d".into(),
                step: "prep".into(),
                output: "d.csv".into()
            }]
        );
    }
    single(
        "name: g\nsteps:\n  - name: a\n    command: [x]\n    needs: [a.0]\n  - name: b\n    command: [x]\n",
        &["step \"a\" needs \"a.0\", which is not a step"],
        Some(5),
    );
}
