//! The table, read back: every action has one row, and for each kind of caller
//! the table allows exactly what the README's table says.

use super::*;

const ALL_ACTIONS: [Action; 47] = [
    Action::SubmitRun,
    Action::RerunRun,
    Action::CancelRun,
    Action::CreateSchedule,
    Action::PauseSchedule,
    Action::DeleteSchedule,
    Action::PinArtifact,
    Action::UnpinArtifact,
    Action::Collect,
    Action::SetWorkerMode,
    Action::CreateProject,
    Action::SetProjectMember,
    Action::SetAdmin,
    Action::ChangeMembership,
    Action::RevokeCertificate,
    Action::SetSecret,
    Action::DeleteSecret,
    Action::ResealSecret,
    Action::UseSecret,
    Action::ReadSecret,
    Action::RegisterWorker,
    Action::StepStarted,
    Action::StepFinished,
    Action::FetchBlob,
    Action::BlobUrls,
    Action::DirectUpload,
    Action::FireSchedule,
    Action::Assign,
    Action::WorkerLost,
    Action::TimeOutRun,
    Action::ReadRun,
    Action::ReadSchedule,
    Action::ReadPin,
    Action::ListWorkers,
    Action::ClusterStatus,
    Action::ListProjects,
    Action::ListAdmins,
    Action::ReadAudit,
    Action::SetGroupMember,
    Action::ListGroups,
    Action::UploadBundle,
    Action::CheckBlob,
    Action::ListRevocations,
    Action::ReadLimits,
    Action::UploadArtifact,
    Action::RecordAudit,
    Action::TrimAudit,
];

#[test]
fn every_action_has_exactly_one_row() {
    assert_eq!(TABLE.len(), ALL_ACTIONS.len());
    for action in ALL_ACTIONS {
        assert_eq!(
            TABLE.iter().filter(|rule| rule.action == action).count(),
            1,
            "{action:?}"
        );
    }
}

/// The kinds of caller the issue names, each related to a thing (a run, a
/// schedule, a pin) in a named project that someone else owns, or to a
/// creation in that project under the caller's own name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    ProjectOwner,
    Editor,
    Viewer,
    /// A client owning the thing, no longer a member of its project.
    ResourceOwner,
    /// A member (owner) of another project only.
    Stranger,
    Worker,
    Coordinator,
}

const EVERYONE: [Who; 8] = [
    Who::Admin,
    Who::ProjectOwner,
    Who::Editor,
    Who::Viewer,
    Who::ResourceOwner,
    Who::Stranger,
    Who::Worker,
    Who::Coordinator,
];

fn relation(who: Who) -> Relation {
    let client = |project_role, owns| Relation {
        cert: CertRole::Client,
        admin: false,
        project_role,
        owns,
        as_self: true,
        open_project: false,
        named_worker: false,
    };
    match who {
        Who::Admin => Relation {
            admin: true,
            ..client(None, false)
        },
        Who::ProjectOwner => client(Some(ProjectRole::Owner), false),
        Who::Editor => client(Some(ProjectRole::Editor), false),
        Who::Viewer => client(Some(ProjectRole::Viewer), false),
        Who::ResourceOwner => client(None, true),
        Who::Stranger => client(None, false),
        Who::Worker => Relation {
            named_worker: true,
            ..Relation::stranger(CertRole::Worker)
        },
        Who::Coordinator => Relation::stranger(CertRole::Coordinator),
    }
}

/// The table as the README states it, written out by hand.
fn expected(who: Who, action: Action) -> bool {
    use Action::*;
    let client = !matches!(who, Who::Worker | Who::Coordinator);
    match action {
        ListWorkers | ClusterStatus | ListProjects | ListAdmins | ListGroups | UploadBundle
        | CheckBlob | ReadLimits | ListRevocations => client,
        UploadArtifact => who == Who::Worker,
        Collect | SetWorkerMode | CreateProject | SetAdmin | SetGroupMember | ChangeMembership
        | RevokeCertificate | ResealSecret => who == Who::Admin,
        SetProjectMember | ReadAudit => matches!(who, Who::Admin | Who::ProjectOwner),
        SubmitRun | RerunRun | CreateSchedule => {
            matches!(who, Who::Admin | Who::ProjectOwner | Who::Editor)
        }
        CancelRun | PauseSchedule | DeleteSchedule | PinArtifact | UnpinArtifact | SetSecret
        | DeleteSecret | UseSecret => matches!(
            who,
            Who::Admin | Who::ProjectOwner | Who::Editor | Who::ResourceOwner
        ),
        ReadRun | ReadSchedule | ReadPin | ReadSecret => matches!(
            who,
            Who::Admin | Who::ProjectOwner | Who::Editor | Who::Viewer | Who::ResourceOwner
        ),
        RegisterWorker | StepStarted | StepFinished | FetchBlob | BlobUrls | DirectUpload => {
            who == Who::Worker
        }
        FireSchedule | Assign | WorkerLost | TimeOutRun | RecordAudit | TrimAudit => {
            who == Who::Coordinator
        }
    }
}

#[test]
fn the_matrix_of_every_action_and_every_kind_of_caller() {
    for action in ALL_ACTIONS {
        for who in EVERYONE {
            let answer = decide(action, &relation(who));
            assert_eq!(
                answer.is_ok(),
                expected(who, action),
                "{who:?} {action:?}: {answer:?}"
            );
            if let Err(denied) = answer {
                assert!(!denied.needed.is_empty());
                assert_eq!(denied.what, rule_of(action).what);
            }
        }
    }
}

#[test]
fn the_default_project_lets_every_client_create_its_own_things_only() {
    let open = |owns| Relation {
        owns,
        as_self: owns,
        open_project: true,
        ..Relation::stranger(CertRole::Client)
    };
    assert!(decide(Action::SubmitRun, &open(true)).is_ok());
    assert!(decide(Action::CreateSchedule, &open(true)).is_ok());
    // Not under another's name, even for an administrator.
    let for_another = decide(Action::SubmitRun, &open(false)).unwrap_err();
    assert!(
        for_another.needed.contains("its own name"),
        "{for_another:?}"
    );
    let admin_for_another = Relation {
        admin: true,
        ..open(false)
    };
    assert!(decide(Action::SubmitRun, &admin_for_another).is_err());
    // Another's run in `default`: neither read nor cancelled.
    let read = decide(Action::ReadRun, &open(false)).unwrap_err();
    assert!(read.needed.contains("viewer role"), "{read:?}");
    let cancel = decide(Action::CancelRun, &open(false)).unwrap_err();
    assert!(cancel.needed.contains("editor role"), "{cancel:?}");
    // Its own: both.
    assert!(decide(Action::ReadRun, &open(true)).is_ok());
    assert!(decide(Action::CancelRun, &open(true)).is_ok());
}

#[test]
fn refusals_name_the_role_needed() {
    let stranger = Relation::stranger(CertRole::Client);
    let gc = decide(Action::Collect, &stranger).unwrap_err();
    assert!(gc.needed.contains("admin role"), "{gc:?}");
    let members = decide(Action::SetProjectMember, &stranger).unwrap_err();
    assert!(members.needed.contains("owner role"), "{members:?}");
    let worker = decide(Action::ReadRun, &Relation::stranger(CertRole::Worker)).unwrap_err();
    assert!(worker.needed.contains("client certificate"), "{worker:?}");
    let lost = decide(Action::WorkerLost, &stranger).unwrap_err();
    assert!(lost.needed.contains("coordinator certificate"), "{lost:?}");
}

#[test]
fn roles_parse_and_order() {
    assert!(ProjectRole::Viewer < ProjectRole::Editor && ProjectRole::Editor < ProjectRole::Owner);
    for role in ProjectRole::ALL {
        assert_eq!(ProjectRole::parse(role.as_str()), Some(role));
    }
    assert_eq!(ProjectRole::parse("admin"), None);
}
