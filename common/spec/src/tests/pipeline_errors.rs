//! Refused pipelines, pipeline-wide: YAML-level errors, names, parameters, run
//! settings, and how diagnostics are located in odd but valid YAML.

use super::*;

#[test]
fn yaml_syntax_error_is_located() {
    let d = single(
        "name: x\nsteps:\n  - name: a\n    command: [x\n",
        &["flow sequence"],
        Some(5),
    );
    assert!(!d.message.contains("at line 5"), "{d}");
}

#[test]
fn unknown_fields_are_errors() {
    let d = single(
        "name: x\nsteps:\n  - name: a\n    comand: [x]\n",
        &["unknown field `comand`", "`command`"],
        Some(4),
    );
    assert_eq!(d.column, Some(5));
    assert!(!d.to_string().contains("column 5"), "{d}");
    single(
        "name: x\nowner: me\nsteps:\n  - name: a\n    command: [x]\n",
        &["unknown field `owner`"],
        Some(2),
    );
    single(
        "name: x\nsteps:\n  - name: a\n    command: [x]\n    resources: {cpu: 1, disk: 3}\n",
        &["unknown field `disk`", "`memory`"],
        Some(5),
    );
}

#[test]
fn wrong_types_are_errors() {
    single(
        "name: x\nsteps:\n  - name: a\n    command: [x]\n    needs: a\n",
        &["needs", "expected a sequence"],
        Some(5),
    );
    single("name: x\nsteps: {a: 1}\n", &["steps", "sequence"], Some(2));
    single("just text\n", &["expected a pipeline"], Some(1));
    single(
        "name: x\nparams:\n  a: 1\n  a: 2\nsteps:\n  - name: a\n    command: [x]\n",
        &["duplicate key \"a\""],
        Some(3),
    );
    single(
        "name: x\nname: y\nsteps:\n  - name: a\n    command: [x]\n",
        &["duplicate field `name`"],
        Some(1),
    );
}

#[test]
fn empty_file() {
    single("", &["empty"], None);
    single("# nothing\n\n---\n", &["empty"], None);
}

#[test]
fn missing_name_and_steps() {
    let diags = errors("params: {a: 1}\n");
    find(&diags, &["no `name`"]);
    find(&diags, &["no steps"]);
    single("name: x\nsteps: []\n", &["no steps"], Some(2));
}

#[test]
fn invalid_names() {
    single(
        "name: my pipeline\nsteps:\n  - name: a\n    command: [x]\n",
        &["pipeline name \"my pipeline\" is invalid"],
        Some(1),
    );
    let long = "a".repeat(65);
    single(
        &format!("name: {long}\nsteps:\n  - name: a\n    command: [x]\n"),
        &["pipeline name", "invalid"],
        Some(1),
    );
    let d = single(
        "name: x\nsteps:\n  - name: a\n    command: [x]\n  - name: b.c\n    command: [x]\n",
        &["step name \"b.c\" is invalid"],
        Some(5),
    );
    assert_eq!(d.column, Some(11));
    single(
        "name: x\nsteps:\n  - command: [x]\n",
        &["step #1 has no `name`"],
        Some(3),
    );
}

#[test]
fn duplicate_step_points_at_second() {
    let d = single(
        "name: x\nsteps:\n  - name: a\n    command: [x]\n  - name: b\n    command: [x]\n  - name: a\n    command: [y]\n",
        &["step \"a\" is defined more than once", "first at line 3"],
        Some(7),
    );
    assert_eq!(d.column, Some(11));
}

#[test]
fn param_default_must_be_scalar() {
    let yaml = "name: x\nparams:\n  ok: 1\n  list: [1, 2]\n  map: {a: 1}\n  none:\nsteps:\n  - name: a\n    command: [x]\n";
    let diags = errors(yaml);
    assert_eq!(diags.len(), 3, "{}", render(&diags));
    assert_eq!(
        find(&diags, &["parameter \"list\"", "a list"]).line,
        Some(4)
    );
    assert_eq!(find(&diags, &["parameter \"map\"", "a map"]).line, Some(5));
    assert_eq!(find(&diags, &["parameter \"none\"", "null"]).line, Some(6));
}

#[test]
fn invalid_param_name() {
    single(
        "name: x\nparams:\n  1seed: 1\nsteps:\n  - name: a\n    command: [x]\n",
        &["parameter name \"1seed\" is invalid"],
        Some(3),
    );
    single(
        "name: x\nparams:\n  seed: 1\n  SEED: 2\nsteps:\n  - name: a\n    command: [x]\n",
        &["FERRY_PARAM_SEED"],
        Some(4),
    );
}

#[test]
fn unknown_override() {
    let err = parse_with(IRIS, &[("sed", "1")]).unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    let d = &err.diagnostics[0];
    assert!(d.message.contains("no parameter \"sed\""), "{d}");
    assert!(d.message.contains("did you mean \"seed\""), "{d}");
    assert!(
        d.message
            .contains("it declares: label, seed, test_fraction, verbose"),
        "{d}"
    );
    assert_eq!(d.line, None);
    let err = parse_with(
        "name: x\nsteps:\n  - name: a\n    command: [x]\n",
        &[("seed", "1")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("declares no parameters"), "{err}");
}

#[test]
fn collects_many_errors() {
    let yaml = "name: x\nsteps:\n  - name: a\n    command: [x]\n    needs: [b, zz]\n    outputs: [../o]\n    retries: 99\n  - name: b\n    command: [x]\n    needs: [a]\n    timeout: soon\n";
    let diags = errors(yaml);
    assert_eq!(diags.len(), 5, "{}", render(&diags));
    assert_eq!(find(&diags, &["\"zz\""]).line, Some(5));
    assert_eq!(find(&diags, &["../o"]).line, Some(6));
    assert_eq!(find(&diags, &["retries"]).line, Some(7));
    assert_eq!(find(&diags, &["timeout"]).line, Some(11));
    assert_eq!(find(&diags, &["cycle: a → b → a"]).line, Some(5));
}

#[test]
fn flow_style_steps_still_validate() {
    let d = single(
        "name: x\nsteps: [{name: a, command: [x], needs: [q]}]\n",
        &["needs \"q\""],
        None,
    );
    assert_eq!(d.column, None);
}

#[test]
fn zero_indented_steps_and_comments() {
    let yaml = "# header: needs\nname: x # trailing\nsteps:\n# a comment mentioning zz\n- name: a   # zz\n  command: [x]\n  needs: [zz]  # zz\n";
    let d = single(yaml, &["needs \"zz\""], Some(7));
    assert_eq!(d.column, Some(11));
}

#[test]
fn bare_dash_items() {
    let yaml = "name: x\nsteps:\n  -\n    name: a\n    command: [x]\n    needs: [b]\n";
    single(yaml, &["needs \"b\""], Some(6));
}

#[test]
fn bad_scheduling_fields_are_named() {
    let step = "steps:\n  - name: a\n    command: [\"true\"]\n";
    single(
        &format!("name: p\npriority: 5000\n{step}"),
        &["priority must be an integer from -1000 to 1000", "5000"],
        Some(2),
    );
    single(
        &format!("name: p\nproject: \"a b\"\n{step}"),
        &["project must be a name", "\"a b\""],
        Some(2),
    );
    single(
        &format!("name: p\nmax_parallel: 0\n{step}"),
        &["max_parallel must be a positive integer", "0"],
        Some(2),
    );
    single(
        &format!("name: p\ntimeout: 30\n{step}"),
        &["the pipeline's timeout is 30, which has no unit"],
        Some(2),
    );
    let base = "name: p\nsteps:\n  - name: a\n    command: [\"true\"]\n";
    single(
        &format!("{base}    retry_backoff: 2h\n"),
        &["retry_backoff of step \"a\" is 2h; at most 10m is allowed"],
        Some(5),
    );
    single(
        &format!("{base}    node_selector: {{zone: [a]}}\n"),
        &["node_selector label \"zone\" of step \"a\" must be a plain value"],
        Some(5),
    );
    single(
        &format!("{base}    resources:\n      gpu: {{count: 1, modle: H100}}\n"),
        &[
            "resources.gpu of step \"a\" has an unknown field \"modle\"",
            "`model`",
        ],
        Some(6),
    );
    single(
        &format!("{base}    resources:\n      gpu: {{model: H100}}\n"),
        &["sets a model or min_memory but no `count`"],
        Some(6),
    );
    single(
        &format!("{base}    resources:\n      gpu: {{count: 1, min_memory: lots}}\n"),
        &["resources.gpu.min_memory of step \"a\" is invalid"],
        Some(6),
    );
}
