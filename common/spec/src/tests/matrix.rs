//! Steps written with `matrix:`: expansion into trials, limits, and refused
//! matrices.

use super::*;

#[test]
fn grid_matrix_expands_in_place() {
    let p = parse(SWEEP).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        names(&p),
        [
            "prep", "train.0", "train.1", "train.2", "train.3", "train.4", "train.5", "report"
        ]
    );
    // Keys in sorted order (depth, lr), the last one varying fastest.
    let expected = [
        ("3", "0.1"),
        ("3", "0.01"),
        ("5", "0.1"),
        ("5", "0.01"),
        ("7", "0.1"),
        ("7", "0.01"),
    ];
    for (index, (depth, lr)) in expected.iter().enumerate() {
        let s = step(&p, &format!("train.{index}"));
        assert_eq!(
            s.command,
            [
                "python3",
                "train.py",
                &format!("--lr={lr}"),
                "--depth",
                depth,
                "--epochs=3"
            ]
        );
        assert_eq!(
            s.trial,
            Some(Trial {
                of: "train".into(),
                index: index as u32,
                values: values(&[("depth", depth), ("lr", lr)]),
                max_parallel: Some(2),
            })
        );
        assert_eq!(
            s.env,
            values(&[
                ("FERRY_MATRIX_DEPTH", depth),
                ("FERRY_MATRIX_LR", lr),
                ("TAG", &format!("lr{lr}-d{depth}")),
            ])
        );
        // Everything else is the step as written.
        assert_eq!(s.needs, ["prep"]);
        assert_eq!(s.inputs[0].step, "prep");
        assert_eq!(s.outputs, ["model.json"]);
        assert_eq!(s.params, ["epochs"]);
        assert!(s.gather.is_empty());
    }
    // `needs: [train]` stands for every trial.
    let report = step(&p, "report");
    assert_eq!(
        report.needs,
        [
            "train.0", "train.1", "train.2", "train.3", "train.4", "train.5"
        ]
    );
    assert_eq!(report.trial, None);
    assert!(step(&p, "prep").trial.is_none());
}

#[test]
fn list_matrix_keeps_the_written_order() {
    let yaml = r#"name: sweep
steps:
  - name: train
    shell: "train --lr ${matrix.lr} --opt ${matrix.opt}"
    matrix:
      - {lr: 0.1, opt: adam}
      - {opt: sgd, lr: 0.5}
      - {lr: 0.1, opt: sgd}
"#;
    let p = parse(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&p), ["train.0", "train.1", "train.2"]);
    let scripts: Vec<&str> = p.steps.iter().map(|s| s.command[2].as_str()).collect();
    assert_eq!(
        scripts,
        [
            "train --lr 0.1 --opt adam",
            "train --lr 0.5 --opt sgd",
            "train --lr 0.1 --opt sgd"
        ]
    );
    let trial = p.steps[1].trial.as_ref().unwrap();
    assert_eq!(trial.of, "train");
    assert_eq!(trial.index, 1);
    assert_eq!(trial.values, values(&[("lr", "0.5"), ("opt", "sgd")]));
    assert_eq!(trial.max_parallel, None);
    assert_eq!(p.steps[1].env["FERRY_MATRIX_OPT"], "sgd");
}

#[test]
fn many_trials_are_all_needed() {
    let yaml = "name: s\nsteps:\n  - name: train\n    command: [t]\n    matrix: {seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}\n  - name: after\n    command: [a]\n    needs: [train, train]\n";
    let p = parse(yaml).unwrap();
    let after = step(&p, "after");
    let expected: BTreeSet<String> = (0..12).map(|k| format!("train.{k}")).collect();
    assert_eq!(
        after.needs.iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(after.needs.len(), 12);
    assert!(after.needs.is_sorted());
    assert_eq!(p.steps[11].name, "train.11");
    assert_eq!(p.steps[11].trial.as_ref().unwrap().values["seed"], "11");
}

#[test]
fn max_parallel_only_on_matrix_steps() {
    let base = "name: s\nsteps:\n  - name: a\n    command: [x]\n";
    single(
        &format!("{base}    max_parallel: 2\n"),
        &[
            "max_parallel of step \"a\" limits how many of its trials run at once, but the step has no `matrix`",
            "at the top of the pipeline",
        ],
        Some(5),
    );
    let sweep = format!("{base}    matrix: {{x: [1, 2]}}\n");
    for bad in ["0", "-1", "1.5", "two", "99999999999"] {
        single(
            &format!("{sweep}    max_parallel: {bad}\n"),
            &["max_parallel of step \"a\" must be a positive integer", bad],
            Some(6),
        );
    }
    let p = parse(&format!("{sweep}    max_parallel: 1\n")).unwrap();
    assert!(
        p.steps
            .iter()
            .all(|s| s.trial.as_ref().unwrap().max_parallel == Some(1))
    );
    assert_eq!(p.max_parallel, None);
}

/// `count` values `0..count` for a grid key.
fn range(count: usize) -> String {
    let items: Vec<String> = (0..count).map(|n| n.to_string()).collect();
    format!("[{}]", items.join(", "))
}

#[test]
fn trials_per_step_are_limited() {
    let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n";
    let d = single(
        &format!(
            "{base}    matrix: {{a: {}, b: {}}}\n",
            range(120),
            range(100)
        ),
        &[],
        Some(5),
    );
    assert_eq!(
        d.message,
        "matrix of step \"train\" expands to 12000 combinations; at most 10000 are allowed"
    );
    let entries: Vec<String> = (0..10_001).map(|n| format!("{{a: {n}}}")).collect();
    single(
        &format!("{base}    matrix: [{}]\n", entries.join(", ")),
        &["matrix of step \"train\" expands to 10001 combinations; at most 10000"],
        Some(5),
    );
    let p = parse(&format!(
        "{base}    matrix: {{a: {r}, b: {r}, c: {r}, d: {r}}}\n",
        r = range(10)
    ))
    .unwrap();
    assert_eq!(p.steps.len(), MAX_TRIALS_PER_STEP);
    assert_eq!(p.steps[9999].name, "train.9999");
    assert_eq!(
        p.steps[9999].trial.as_ref().unwrap().values,
        values(&[("a", "9"), ("b", "9"), ("c", "9"), ("d", "9")])
    );
}

#[test]
fn huge_grids_are_refused_before_expansion() {
    let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n";
    single(
        &format!(
            "{base}    matrix: {{a: {r}, b: {r}, c: {r}}}\n",
            r = range(100)
        ),
        &["expands to 1000000 combinations; at most 10000 are allowed"],
        Some(5),
    );
    // 10^40 combinations: only counting, never expanding, can answer this.
    let keys: Vec<String> = (0..40).map(|k| format!("k{k}: {}", range(10))).collect();
    single(
        &format!("{base}    matrix: {{{}}}\n", keys.join(", ")),
        &[&format!(
            "expands to more than {} combinations; at most 10000 are allowed",
            usize::MAX
        )],
        Some(5),
    );
}

#[test]
fn expanded_pipeline_is_limited() {
    let sweep = |name: &str| {
        format!(
            "  - name: {name}\n    command: [x]\n    matrix: {{a: {r}, b: {r}, c: {r}, d: {r}}}\n",
            r = range(10)
        )
    };
    let ten: String = (0..10).map(|k| sweep(&format!("s{k}"))).collect();
    let p = parse(&format!("name: big\nsteps:\n{ten}")).unwrap();
    assert_eq!(p.steps.len(), MAX_STEPS);
    let d = single(
        &format!("name: big\nsteps:\n{ten}  - name: one_more\n    command: [x]\n"),
        &[],
        Some(2),
    );
    assert_eq!(
        d.message,
        "the pipeline expands to 100001 steps (100000 of them trials of matrix steps); at most 100000 are allowed"
    );
    let plain: String = (0..=MAX_STEPS)
        .map(|k| format!("  - name: s{k}\n    command: [x]\n"))
        .collect();
    single(
        &format!("name: big\nsteps:\n{plain}"),
        &["the pipeline has 100001 steps; at most 100000 are allowed"],
        Some(2),
    );
}

#[test]
fn duplicate_combinations() {
    let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n";
    single(
        &format!("{base}    matrix:\n      depth: [1, 2]\n      lr: [0.1, 0.2, 0.1]\n"),
        &[
            "matrix key \"lr\" of step \"train\" lists 0.1 twice; every combination must be different",
        ],
        Some(7),
    );
    single(
        &format!("{base}    matrix: {{lr: [1, \"1\"]}}\n"),
        &["matrix key \"lr\"", "lists \"1\" twice"],
        Some(5),
    );
    single(
        &format!(
            "{base}    matrix:\n      - {{lr: 0.1, opt: adam}}\n      - {{lr: 0.1, opt: sgd}}\n      - {{opt: adam, lr: 0.1}}\n"
        ),
        &["matrix entries #1 and #3 of step \"train\" are the same combination (lr=0.1, opt=adam)"],
        Some(5),
    );
}

#[test]
fn bad_matrix_shapes() {
    let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n";
    let cases: &[(&str, &[&str], usize)] = &[
        (
            "    matrix: 3\n",
            &[
                "matrix of step \"train\" must be a map from names to lists of values",
                "got 3",
            ],
            5,
        ),
        (
            "    matrix: {}\n",
            &["matrix of step \"train\" is empty"],
            5,
        ),
        (
            "    matrix: []\n",
            &["matrix of step \"train\" is empty"],
            5,
        ),
        (
            "    matrix:\n      lr: 0.1\n",
            &[
                "matrix key \"lr\" of step \"train\" must list its values",
                "got 0.1",
            ],
            6,
        ),
        (
            "    matrix:\n      lr: []\n",
            &["matrix key \"lr\" of step \"train\" lists no values"],
            6,
        ),
        (
            "    matrix:\n      lr: [0.1, [1]]\n",
            &[
                "a value of matrix key \"lr\" of step \"train\" is a list",
                "strings, numbers or booleans",
            ],
            6,
        ),
        (
            "    matrix:\n      - {lr: 0.1}\n      - 7\n",
            &["matrix entry #2 of step \"train\" is a number; each entry must be a map"],
            5,
        ),
        (
            "    matrix:\n      - {lr: 0.1}\n      - {}\n",
            &["matrix entry #2 of step \"train\" is empty"],
            5,
        ),
        (
            "    matrix:\n      - {lr: 0.1, opt: adam}\n      - {lr: 0.2}\n",
            &[
                "matrix entry #2 of step \"train\" sets lr but entry #1 sets lr, opt; every entry must set the same keys",
            ],
            5,
        ),
        (
            "    matrix:\n      - {lr: {a: 1}}\n",
            &["value \"lr\" of matrix entry #1 of step \"train\" is a map"],
            6,
        ),
    ];
    for (field, words, line) in cases {
        single(&format!("{base}{field}"), words, Some(*line));
    }
}

#[test]
fn bad_matrix_names() {
    let base = "name: s\nsteps:\n  - name: train\n    command: [x]\n    matrix:\n";
    let d = single(
        &format!("{base}      ok: [1]\n      1lr: [1, 2]\n"),
        &["matrix key \"1lr\" of step \"train\" is invalid: it must start with a letter or '_'"],
        Some(7),
    );
    assert_eq!(d.column, Some(7));
    single(
        &format!("{base}      lr-x: [1]\n"),
        &["matrix key \"lr-x\"", "invalid"],
        Some(6),
    );
    single(
        &format!("{base}      7: [1]\n"),
        &["matrix key 7 of step \"train\" is invalid"],
        Some(6),
    );
    single(
        &format!("{base}      LR: [1]\n      lr: [2]\n"),
        &[
            "matrix keys \"LR\" and \"lr\" of step \"train\" both become the environment variable FERRY_MATRIX_LR",
        ],
        Some(7),
    );
    // A bad name in many entries is reported once.
    single(
        &format!("{base}      - {{1x: 1}}\n      - {{1x: 2}}\n"),
        &["matrix key \"1x\""],
        Some(6),
    );
}

#[test]
fn matrix_placeholders_are_checked() {
    let plain = "name: s\nsteps:\n  - name: a\n";
    let d = single(
        &format!("{plain}    command: [run, \"--lr=${{matrix.lr}}\"]\n"),
        &[
            "${matrix.lr} in the command of step \"a\" refers to a matrix value, but the step has no `matrix`",
        ],
        Some(4),
    );
    assert_eq!(d.column, Some(26));
    single(
        &format!("{plain}    shell: echo\n    env:\n      LR: \"${{matrix.lr}}\"\n"),
        &[
            "${matrix.lr} in env var LR of step \"a\"",
            "has no `matrix`",
        ],
        Some(6),
    );
    let sweep = "name: s\nsteps:\n  - name: a\n    matrix: {lr: [1, 2], depth: [3]}\n";
    single(
        &format!("{sweep}    shell: \"train ${{matrix.lrr}}\"\n"),
        &[
            "${matrix.lrr} in the shell script of step \"a\" refers to matrix key \"lrr\", which the step's matrix does not define (did you mean \"lr\"?)",
        ],
        Some(5),
    );
    single(
        &format!("{sweep}    shell: \"train ${{matrix.width}}\"\n"),
        &["matrix key \"width\"", "(it defines: depth, lr)"],
        Some(5),
    );
    single(
        &format!("{sweep}    shell: \"train ${{matrix}}\"\n"),
        &[
            "\"${matrix}\"",
            "not of the form ${params.NAME} or ${matrix.NAME}",
        ],
        Some(5),
    );
    // A matrix value may be the program itself.
    let p = parse(&format!("{sweep}    command: [\"${{matrix.lr}}\"]\n")).unwrap();
    assert_eq!(p.steps[1].command, ["2"]);
    // An invalid matrix still defines its keys: one mistake, one message.
    single(
        "name: s\nsteps:\n  - name: a\n    matrix: {lr: [1, 1]}\n    shell: \"t ${matrix.lr}\"\n",
        &["lists 1 twice"],
        Some(4),
    );
    // A parameter whose value looks like a placeholder is not substituted again.
    let p = parse(
        "name: s\nparams:\n  raw: \"${matrix.lr}\"\nsteps:\n  - name: a\n    matrix: {lr: [1]}\n    shell: \"t ${params.raw} ${matrix.lr}\"\n"
    )
    .unwrap();
    assert_eq!(p.steps[0].command[2], "t ${matrix.lr} 1");
}

#[test]
fn a_pipeline_too_large_once_expanded_is_refused_before_expansion() {
    let script = "x".repeat(6_000);
    let values: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let yaml = format!(
        "name: big\nsteps:\n  - name: t\n    matrix: {{i: [{}]}}\n    shell: \"echo ${{matrix.i}} {script}\"\n",
        values.join(", ")
    );
    single(
        &yaml,
        &[
            "the pipeline expands to about 60.4 MiB",
            "step \"t\" alone takes about",
            "at most 48.0 MiB are allowed",
        ],
        Some(2),
    );
    // The same sweep with the script in a file is fine.
    let small = yaml.replace(&script, "train.sh");
    assert!(parse_pipeline("pipeline.yaml", &small, &BTreeMap::new()).is_ok());
}
