//! `image` and the container settings: the pipeline's are every step's
//! default, a step's own win, and a setting where no image applies is an
//! error at the place it was written.

use super::*;
use crate::{ContainerSpec, ImagePull, Network};

#[test]
fn a_pipeline_image_is_every_steps_default_and_a_step_may_differ() {
    let yaml = r#"
name: p
image: python:3.11-slim
shm_size: 2Gi
steps:
  - name: prep
    command: ["true"]
  - name: train
    image: registry.example.com/team/torch:2.5
    image_pull: always
    network: none
    read_only_root: true
    command: ["true"]
"#;
    let p = parse(yaml).unwrap();
    assert_eq!(
        step(&p, "prep").container,
        Some(ContainerSpec {
            image: "python:3.11-slim".into(),
            pull: ImagePull::IfNotPresent,
            shm_size_bytes: Some(2 << 30),
            network: Network::Bridge,
            read_only_root: false,
        })
    );
    assert_eq!(
        step(&p, "train").container,
        Some(ContainerSpec {
            image: "registry.example.com/team/torch:2.5".into(),
            pull: ImagePull::Always,
            shm_size_bytes: Some(2 << 30),
            network: Network::None,
            read_only_root: true,
        })
    );
    // No image anywhere: a process, as before.
    let plain = parse("name: p\nsteps:\n  - name: a\n    command: [\"true\"]\n").unwrap();
    assert_eq!(step(&plain, "a").container, None);
}

#[test]
fn the_trials_of_a_sweep_run_in_its_image() {
    let yaml = "name: p\nsteps:\n  - name: t\n    image: python:3.11\n    matrix: {lr: [0.1, 0.2]}\n    command: [\"true\"]\n";
    let p = parse(yaml).unwrap();
    for trial in ["t.0", "t.1"] {
        assert_eq!(
            step(&p, trial).container.as_ref().map(|c| c.image.as_str()),
            Some("python:3.11")
        );
    }
}

#[test]
fn container_settings_are_checked_where_they_are_written() {
    let step_level = |field: &str| {
        format!("name: p\nsteps:\n  - name: a\n    {field}\n    command: [\"true\"]\n")
    };
    single(
        &step_level("image: Python:3"),
        &["image \"Python:3\" of step \"a\"", "invalid name component"],
        Some(4),
    );
    single(
        &step_level("image: [a, b]"),
        &["image of step \"a\" must be an image reference", "a list"],
        Some(4),
    );
    single(
        "name: p\nimage: python\nimage_pull: sometimes\nsteps:\n  - name: a\n    command: [\"true\"]\n",
        &[
            "image_pull of the pipeline must be if-not-present, always or never",
            "\"sometimes\"",
        ],
        Some(3),
    );
    single(
        "name: p\nimage: python\nsteps:\n  - name: a\n    network: host\n    command: [\"true\"]\n",
        &["network of step \"a\" must be bridge or none", "\"host\""],
        Some(5),
    );
    single(
        "name: p\nimage: python\nsteps:\n  - name: a\n    read_only_root: yes please\n    command: [\"true\"]\n",
        &["read_only_root of step \"a\" must be true or false"],
        Some(5),
    );
    single(
        "name: p\nimage: python\nsteps:\n  - name: a\n    shm_size: lots\n    command: [\"true\"]\n",
        &["shm_size of step \"a\""],
        Some(5),
    );
    // A setting that applies to no container: at the place it was written.
    single(
        &step_level("shm_size: 1Gi"),
        &[
            "shm_size applies to a step that runs in a container",
            "step \"a\" has no `image`",
        ],
        Some(4),
    );
    let diags = errors(
        "name: p\nnetwork: none\nsteps:\n  - name: a\n    command: [\"true\"]\n  - name: b\n    command: [\"true\"]\n",
    );
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    assert!(
        diags.iter().all(|d| d.line == Some(2)),
        "{}",
        render(&diags)
    );
}

#[test]
fn the_sklearn_example_runs_every_step_in_its_image() {
    let p = parse(include_str!("../../../../examples/sklearn/pipeline.yaml")).unwrap();
    assert_eq!(p.steps.len(), 6, "split, four trials, report");
    for step in &p.steps {
        let container = step.container.as_ref().expect("an image");
        assert_eq!(container.image, "ferry/python-sklearn:bookworm");
        assert_eq!(container.pull, ImagePull::Never);
    }
}
