//! The derived lookups of `Steps` against those built afresh from the records,
//! over random changes.

use proptest::prelude::*;

use super::*;

fn record(name: &str) -> StepRecord {
    StepRecord {
        name: name.to_string(),
        state: StepState::Waiting,
        attempts: Vec::new(),
        outputs: Vec::new(),
        reason: None,
        not_before_ms: None,
        inputs: Vec::new(),
        cache_key: None,
        reused: None,
    }
}

fn steps(n: usize) -> Steps {
    (0..n).map(|i| record(&format!("s{i}"))).collect()
}

#[test]
fn positions_counts_and_movable_steps_follow_changes() {
    let mut steps = steps(5);
    assert_eq!(steps.position("s3"), Some(3));
    assert_eq!(steps.named("s4").map(|r| r.name.as_str()), Some("s4"));
    assert_eq!(steps.position("nope"), None);
    assert_eq!(steps.counts().of(StepState::Waiting), 5);
    assert_eq!(steps.movable().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        steps.take_touched(),
        Touched::All,
        "a new run is indexed whole"
    );

    steps[1].state = StepState::Queued;
    steps[3].cache_key = Some("k".into());
    steps[1].state = StepState::Running;
    assert!(steps.stale());
    steps.refresh();
    assert_eq!(steps.counts().of(StepState::Running), 1);
    assert_eq!(steps.counts().of(StepState::Waiting), 4);
    assert_eq!(steps.counts().unfinished(), 5);
    assert_eq!(steps.counts().active(), 1);
    assert_eq!(steps.movable().collect::<Vec<_>>(), vec![0, 2, 4]);
    assert_eq!(steps.take_touched(), Touched::Some(vec![1, 3]));
    assert!(!steps.has_touched());

    for record in steps.iter_mut() {
        record.state = StepState::Succeeded;
    }
    steps.refresh();
    assert_eq!(steps.counts().of(StepState::Succeeded), 5);
    assert_eq!(steps.counts().unfinished(), 0);
    assert_eq!(steps.take_touched(), Touched::All);
    assert!(steps.derived_matches_records());
}

#[test]
fn pages_list_the_steps_in_order_within_a_state() {
    let mut steps = steps(10);
    for i in [1, 4, 5, 8] {
        steps[i].state = StepState::Failed;
    }
    steps.refresh();
    assert_eq!(steps.page(None, 0, 3), (vec![0, 1, 2], 10));
    assert_eq!(steps.page(None, 8, 5), (vec![8, 9], 10));
    assert_eq!(steps.page(None, 12, 5), (vec![], 10));
    assert_eq!(steps.page(Some(StepState::Failed), 1, 2), (vec![4, 5], 4));
    assert_eq!(steps.page(Some(StepState::Failed), 3, 9), (vec![8], 4));
    assert_eq!(steps.page(Some(StepState::Running), 0, 9), (vec![], 0));
    assert_eq!(StepState::parse("timed_out"), Some(StepState::TimedOut));
    assert_eq!(StepState::parse("nope"), None);
}

#[test]
fn a_read_back_steps_derives_everything_again() {
    let mut steps = steps(3);
    steps[2].state = StepState::Failed;
    steps.refresh();
    let json = serde_json::to_string(&steps).unwrap();
    assert!(
        json.starts_with('['),
        "serialized as the plain list: {json}"
    );
    let back: Steps = serde_json::from_str(&json).unwrap();
    assert_eq!(back, steps);
    assert_eq!(back.counts(), steps.counts());
    assert!(back.derived_matches_records());
}

fn state_of(n: u8) -> StepState {
    STEP_STATES[usize::from(n) % STEP_STATES.len()]
}

proptest! {
    #[test]
    fn derived_lookups_equal_a_fresh_build(
        changes in proptest::collection::vec(
            (0usize..40, 0u8..9, any::<bool>(), any::<bool>()),
            0..200,
        )
    ) {
        let mut steps = steps(40);
        steps.refresh();
        for (i, state, keyed, refresh) in changes {
            steps[i].state = state_of(state);
            steps[i].cache_key = keyed.then(|| "k".to_string());
            if refresh {
                steps.refresh();
                prop_assert!(steps.derived_matches_records());
            }
        }
        steps.refresh();
        prop_assert!(steps.derived_matches_records());
        // A page of one state is what filtering every step finds.
        for state in STEP_STATES {
            let all: Vec<usize> = (0..steps.len()).filter(|i| steps[*i].state == state).collect();
            let (page, matched) = steps.page(Some(state), 2, 5);
            prop_assert_eq!(matched, all.len());
            prop_assert_eq!(page, all.iter().copied().skip(2).take(5).collect::<Vec<_>>());
        }
    }
}
