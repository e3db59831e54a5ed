//! Refused steps: command and shell, outputs, resources, retries, timeouts,
//! placeholders, env, the parameters a step lists, and `cache:`.

use super::*;

#[test]
fn command_and_shell() {
    single(
        "name: x\nsteps:\n  - name: a\n    command: [x]\n    shell: echo hi\n",
        &["step \"a\" has both `command` and `shell`"],
        Some(5),
    );
    single(
        "name: x\nsteps:\n  - name: a\n    outputs: [o]\n",
        &["step \"a\" has neither `command`", "shell"],
        Some(3),
    );
    single(
        "name: x\nsteps:\n  - name: a\n    command: []\n",
        &["step \"a\" has an empty command"],
        Some(4),
    );
    single(
        "name: x\nsteps:\n  - name: a\n    shell: \"  \"\n",
        &["empty `shell`"],
        Some(4),
    );
    single(
        "name: x\nsteps:\n  - name: a\n    command: python3 train.py\n",
        &["command of step \"a\" is a string", "shell"],
        Some(4),
    );
    single(
        "name: x\nsteps:\n  - name: a\n    command: [python3, [a]]\n",
        &["argument 2", "a list"],
        Some(4),
    );
    single(
        "name: x\nsteps:\n  - name: a\n    command: [\"\", a]\n",
        &["the program", "empty"],
        Some(4),
    );
}

#[test]
fn output_errors() {
    let base = "name: x\nsteps:\n  - name: train\n    command: [x]\n    outputs:\n";
    let d = single(
        &format!("{base}      - ok.txt\n      - ../model.json\n"),
        &["output \"../model.json\" of step \"train\" leaves the step's work directory"],
        Some(7),
    );
    assert_eq!(d.column, Some(9));
    single(
        &format!("{base}      - /etc/passwd\n"),
        &["\"/etc/passwd\"", "absolute"],
        Some(6),
    );
    single(&format!("{base}      - \"\"\n"), &["is empty"], Some(6));
    single(
        &format!("{base}      - a.txt\n      - ./a.txt\n"),
        &["\"./a.txt\"", "declared twice"],
        Some(7),
    );
    single(
        &format!("{base}      - models\n      - models/m.json\n"),
        &["clashes"],
        Some(7),
    );
}

#[test]
fn resource_errors() {
    let base = "name: x\nsteps:\n  - name: a\n    command: [x]\n    resources:\n";
    let d = single(
        &format!("{base}      cpu: 1\n      memory: 12GB\n"),
        &["resources.memory of step \"a\"", "\"12GB\"", "suffix"],
        Some(7),
    );
    assert_eq!(d.column, Some(7));
    single(
        &format!("{base}      cpu: lots\n"),
        &["resources.cpu", "\"lots\""],
        Some(6),
    );
    single(
        &format!("{base}      cpu: 0\n"),
        &["resources.cpu", "greater than zero"],
        Some(6),
    );
    single(
        &format!("{base}      gpu: -1\n"),
        &["resources.gpu", "non-negative integer", "-1"],
        Some(6),
    );
    single(
        &format!("{base}      gpu: 1.5\n"),
        &["resources.gpu"],
        Some(6),
    );
    single(
        &format!("{base}      memory: [1]\n"),
        &["resources.memory", "a list"],
        Some(6),
    );
}

#[test]
fn retries_and_timeout_errors() {
    let base = "name: x\nsteps:\n  - name: a\n    command: [x]\n";
    single(
        &format!("{base}    retries: 21\n"),
        &["retries of step \"a\"", "0 to 20", "21"],
        Some(5),
    );
    single(
        &format!("{base}    retries: -1\n"),
        &["retries", "-1"],
        Some(5),
    );
    single(
        &format!("{base}    retries: two\n"),
        &["retries", "\"two\""],
        Some(5),
    );
    single(
        &format!("{base}    timeout: 10 minutes\n"),
        &["timeout of step \"a\"", "\"10 minutes\""],
        Some(5),
    );
    single(
        &format!("{base}    timeout: 0s\n"),
        &["timeout", "greater than zero"],
        Some(5),
    );
    single(
        &format!("{base}    timeout: 30\n"),
        &["timeout", "no unit", "30s"],
        Some(5),
    );
    let p = parse(&format!("{base}    retries: 20\n    timeout: 500ms\n")).unwrap();
    assert_eq!(p.steps[0].retries, 20);
    assert_eq!(p.steps[0].timeout_ms, Some(500));
}

#[test]
fn undeclared_placeholder() {
    let yaml = "name: x\nparams:\n  seed: 1\nsteps:\n  - name: a\n    command:\n      - run\n      - \"--seed=${params.sed}\"\n";
    let d = single(
        yaml,
        &[
            "${params.sed}",
            "the command of step \"a\"",
            "not declared",
            "did you mean \"seed\"",
        ],
        Some(8),
    );
    assert_eq!(d.column, Some(17));
}

#[test]
fn malformed_placeholders() {
    let base = "name: x\nparams:\n  seed: 1\nsteps:\n  - name: a\n";
    single(
        &format!("{base}    command: [run, \"${{params.seed\"]\n"),
        &["\"${params.seed\"", "not closed"],
        Some(6),
    );
    single(
        &format!("{base}    command: [run]\n    env:\n      A: \"${{seed}}\"\n"),
        &[
            "\"${seed}\"",
            "env var A of step \"a\"",
            "not of the form ${params.NAME}",
        ],
        Some(8),
    );
    single(
        &format!("{base}    shell: echo ${{params.}}\n"),
        &["\"${params.}\"", "shell script"],
        Some(6),
    );
    // `$$` and a lone `$` are not special.
    let p = parse(&format!(
        "{base}    shell: echo $$ $HOME ${{params.seed}}$\n"
    ))
    .unwrap();
    assert_eq!(p.steps[0].command[2], "echo $$ $HOME 1$");
}

#[test]
fn env_names() {
    let base = "name: x\nsteps:\n  - name: a\n    command: [x]\n    env:\n";
    single(
        &format!("{base}      OK: 1\n      1BAD: x\n"),
        &["env var name \"1BAD\"", "invalid"],
        Some(7),
    );
    single(
        &format!("{base}      FERRY_TOKEN: x\n"),
        &["\"FERRY_TOKEN\"", "reserved prefix FERRY_"],
        Some(6),
    );
    single(
        &format!("{base}      LIST: [1]\n"),
        &["env var \"LIST\"", "a list"],
        Some(6),
    );
}

#[test]
fn cache_forms() {
    let base = "name: c\nsteps:\n  - name: a\n    command: [x]\n";
    let cache_of = |field: &str| {
        parse(&format!("{base}{field}")).unwrap().steps[0]
            .cache
            .clone()
    };
    assert_eq!(cache_of(""), CacheSpec::default());
    assert!(CacheSpec::default().enabled);
    assert!(!cache_of("    cache: false\n").enabled);
    assert_eq!(cache_of("    cache: true\n"), CacheSpec::default());
    assert_eq!(
        cache_of(
            "    cache:\n      version: 2\n      paths: [src/, ./train.py, src, lib//util/]\n      enabled: false\n"
        ),
        CacheSpec {
            enabled: false,
            version: "2".into(),
            paths: vec!["lib/util".into(), "src".into(), "train.py".into()],
            secrets: false,
        }
    );
    let spec = cache_of("    cache: {version: \"v3-${params.x}\"}\n");
    assert!(spec.enabled);
    assert_eq!(spec.version, "v3-${params.x}");
    assert!(cache_of("    cache: {paths: []}\n").paths.is_empty());
}

#[test]
fn cache_errors() {
    let base = "name: c\nsteps:\n  - name: a\n    command: [x]\n";
    let cases: &[(&str, &[&str], usize)] = &[
        (
            "    cache: maybe\n",
            &[
                "cache of step \"a\" must be true, false or a map with `version`, `paths` and `enabled`, got \"maybe\"",
            ],
            5,
        ),
        (
            "    cache: {verison: 2}\n",
            &[
                "cache of step \"a\" has an unknown field \"verison\" (did you mean \"version\"?); use `version`, `paths`, `enabled` and `secrets`",
            ],
            5,
        ),
        (
            "    cache:\n      enabled: yes\n",
            &["cache.enabled of step \"a\" must be true or false, got \"yes\""],
            6,
        ),
        (
            "    cache:\n      version: [1]\n",
            &[
                "cache.version of step \"a\" must be a plain value",
                "got a list",
            ],
            6,
        ),
        (
            "    cache:\n      paths: src\n",
            &[
                "cache.paths of step \"a\" must be a list of files or folders",
                "got \"src\"",
            ],
            6,
        ),
        (
            "    cache:\n      paths:\n        - src/\n        - ../shared\n",
            &["cache path \"../shared\" of step \"a\" leaves the code bundle"],
            8,
        ),
        (
            "    cache:\n      paths: [/etc]\n",
            &[
                "cache path \"/etc\" of step \"a\" is absolute; cache paths are paths relative to the code bundle",
            ],
            6,
        ),
        (
            "    cache:\n      paths: [a/../b]\n",
            &["cache path \"a/../b\"", "'..'"],
            6,
        ),
        (
            "    cache:\n      paths: [./]\n",
            &["cache path \"./\" of step \"a\" names the whole code bundle"],
            6,
        ),
        (
            "    cache:\n      paths: [\"\"]\n",
            &["cache path \"\" of step \"a\" is empty"],
            6,
        ),
        (
            "    cache:\n      paths: [[a]]\n",
            &["cache.paths of step \"a\" lists a list"],
            6,
        ),
    ];
    for (field, words, line) in cases {
        single(&format!("{base}{field}"), words, Some(*line));
    }
}

#[test]
fn unknown_listed_params() {
    let d = single(
        "name: p\nparams:\n  seed: 1\nsteps:\n  - name: a\n    command: [x]\n    params: [seed, sed]\n",
        &[],
        Some(7),
    );
    assert_eq!(
        d.message,
        "step \"a\" lists \"sed\" under `params`, but the pipeline has no parameter \"sed\" (did you mean \"seed\"?)"
    );
    assert_eq!(d.column, Some(20));
    single(
        "name: p\nsteps:\n  - name: a\n    command: [x]\n    params: [seed]\n",
        &["no parameter \"seed\" (it declares no parameters)"],
        Some(5),
    );
}

#[test]
fn secrets_are_checked() {
    let ok = ferry_spec_parse(
        "name: p\nsteps:\n  - name: a\n    shell: echo\n    cache: {secrets: true}\n    secrets:\n      - {name: hf_token, env: HF_TOKEN}\n      - {name: ssh-key, file: id_key}\n",
    )
    .unwrap();
    assert_eq!(
        ok.steps[0].secrets,
        vec![
            crate::SecretUse {
                name: "hf_token".into(),
                target: crate::SecretTarget::Env("HF_TOKEN".into())
            },
            crate::SecretUse {
                name: "ssh-key".into(),
                target: crate::SecretTarget::File("id_key".into())
            },
        ]
    );
    assert!(ok.steps[0].cache.secrets);
    for (bad, says) in [
        ("[{name: Bad, env: X}]", "secret name \"Bad\" is invalid"),
        ("[{name: a, env: FERRY_X}]", "reserved prefix FERRY_"),
        ("[{name: a, file: ../x}]", "plain file name"),
        ("[{name: a}]", "exactly one of `env`"),
        ("[{name: a, env: X, file: y}]", "exactly one of `env`"),
        ("[{name: a, env: X}, {name: b, env: X}]", "same"),
        ("[{name: a, env: E}]", "also sets"),
        ("[{name: a, value: x}]", "unknown field"),
    ] {
        let text = format!(
            "name: p\nsteps:\n  - name: a\n    shell: echo\n    env: {{E: x}}\n    secrets: {bad}\n"
        );
        let err = ferry_spec_parse(&text).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

fn ferry_spec_parse(text: &str) -> Result<crate::Pipeline, crate::SpecError> {
    crate::parse_pipeline("p.yaml", text, &Default::default())
}
