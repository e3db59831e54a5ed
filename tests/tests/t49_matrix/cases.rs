//! The rows and columns of the matrix and what the authorization table says of
//! each cell: every RPC of the control service, the agent service's calls that
//! are decided per caller, the six callers, and the expectation computed with
//! `access::decide` from each caller's relation to the fixtures of project `p`.

use ferry_coordinator_core::access::{self, Action, CertRole, ProjectRole, Relation};

/// The service an RPC belongs to; each admits one certificate role at its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Control,
    Agent,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Control => "Control",
            Service::Agent => "Agent",
        }
    }

    fn admits(self) -> CertRole {
        match self {
            Service::Control => CertRole::Client,
            Service::Agent => CertRole::Worker,
        }
    }

    /// The role gate's refusal of another certificate (`api::limits::role_gate`).
    pub fn gate_refusal(self) -> &'static str {
        match self {
            Service::Control => "this service accepts client certificates only",
            Service::Agent => "this service accepts worker certificates only",
        }
    }
}

/// One row: an RPC, called on a fixture of project `p` (or on the cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    UploadBundle,
    HasBlob,
    GetLimits,
    SubmitRun,
    /// One submission on a `SubmitRuns` stream: refused in its reply.
    SubmitRuns,
    /// A pipeline whose step asks for `p`'s secret.
    SubmitRunWithSecret,
    ListRuns,
    GetRun,
    CancelRun,
    ListWorkers,
    SetWorkerMode,
    StreamLogs,
    ListArtifacts,
    DownloadArtifact,
    ClusterStatus,
    AddMember,
    RemoveMember,
    RerunRun,
    Lineage,
    CreateSchedule,
    ListSchedules,
    PauseSchedule,
    DeleteSchedule,
    PinArtifact,
    UnpinArtifact,
    ListPins,
    CollectGarbage,
    CreateProject,
    ListProjects,
    SetProjectMember,
    ListAdmins,
    SetAdmin,
    SetGroupMember,
    ListGroups,
    DeleteGroup,
    ListAudit,
    RevokeCertificate,
    ListRevocations,
    /// A new version of `p`'s secret.
    SetSecretVersion,
    /// A secret `p` does not have yet.
    SetSecretNew,
    ListSecrets,
    DeleteSecret,
    RotateSecretsKey,
    /// Agent calls made as worker `w2` naming worker `w1`, or about the
    /// attempt `w1` runs.
    RegisterOther,
    HeartbeatOther,
    AssignmentsOther,
    StepStartedForeign,
    ImageResolvedForeign,
    PushLogsForeign,
    UploadArtifact,
    FetchBlobUnassigned,
    /// Presigned URLs for the bundle of `w1`'s attempt.
    BlobUrlsUnassigned,
    /// Upload URLs for, and completing an upload of, `w1`'s attempt.
    PrepareUploadForeign,
    CompleteUploadForeign,
    StepFinishedForeign,
    StepsFinishedForeign,
}

impl Case {
    pub const ALL: [Case; 56] = [
        Case::UploadBundle,
        Case::HasBlob,
        Case::GetLimits,
        Case::SubmitRun,
        Case::SubmitRuns,
        Case::SubmitRunWithSecret,
        Case::ListRuns,
        Case::GetRun,
        Case::CancelRun,
        Case::ListWorkers,
        Case::SetWorkerMode,
        Case::StreamLogs,
        Case::ListArtifacts,
        Case::DownloadArtifact,
        Case::ClusterStatus,
        Case::AddMember,
        Case::RemoveMember,
        Case::RerunRun,
        Case::Lineage,
        Case::CreateSchedule,
        Case::ListSchedules,
        Case::PauseSchedule,
        Case::DeleteSchedule,
        Case::PinArtifact,
        Case::UnpinArtifact,
        Case::ListPins,
        Case::CollectGarbage,
        Case::CreateProject,
        Case::ListProjects,
        Case::SetProjectMember,
        Case::ListAdmins,
        Case::SetAdmin,
        Case::SetGroupMember,
        Case::ListGroups,
        Case::DeleteGroup,
        Case::ListAudit,
        Case::RevokeCertificate,
        Case::ListRevocations,
        Case::SetSecretVersion,
        Case::SetSecretNew,
        Case::ListSecrets,
        Case::DeleteSecret,
        Case::RotateSecretsKey,
        Case::RegisterOther,
        Case::HeartbeatOther,
        Case::AssignmentsOther,
        Case::StepStartedForeign,
        Case::ImageResolvedForeign,
        Case::PushLogsForeign,
        Case::UploadArtifact,
        Case::FetchBlobUnassigned,
        Case::BlobUrlsUnassigned,
        Case::PrepareUploadForeign,
        Case::CompleteUploadForeign,
        Case::StepFinishedForeign,
        Case::StepsFinishedForeign,
    ];

    /// The RPC's name in proto/ferry/v1/ferry.proto.
    pub fn rpc(self) -> String {
        let name = match self {
            Case::SubmitRunWithSecret => "SubmitRun",
            Case::SetSecretVersion | Case::SetSecretNew => "SetSecret",
            Case::RegisterOther => "Register",
            Case::HeartbeatOther => "Heartbeat",
            Case::AssignmentsOther => "Assignments",
            Case::StepStartedForeign => "StepStarted",
            Case::ImageResolvedForeign => "ImageResolved",
            Case::PushLogsForeign => "PushLogs",
            Case::FetchBlobUnassigned => "FetchBlob",
            Case::BlobUrlsUnassigned => "BlobUrls",
            Case::PrepareUploadForeign => "PrepareUpload",
            Case::CompleteUploadForeign => "CompleteUpload",
            Case::StepFinishedForeign => "StepFinished",
            Case::StepsFinishedForeign => "StepsFinished",
            // The other variants are named like their RPCs.
            other => return format!("{other:?}"),
        };
        name.to_string()
    }

    pub fn service(self) -> Service {
        match self {
            Case::RegisterOther
            | Case::HeartbeatOther
            | Case::AssignmentsOther
            | Case::StepStartedForeign
            | Case::ImageResolvedForeign
            | Case::PushLogsForeign
            | Case::UploadArtifact
            | Case::FetchBlobUnassigned
            | Case::BlobUrlsUnassigned
            | Case::PrepareUploadForeign
            | Case::CompleteUploadForeign
            | Case::StepFinishedForeign
            | Case::StepsFinishedForeign => Service::Agent,
            _ => Service::Control,
        }
    }

    /// The rows of the table the RPC asks, in the order it asks them; empty:
    /// only its service's role gate (the table has no row for it).
    pub fn actions(self) -> &'static [Action] {
        match self {
            Case::UploadBundle => &[Action::UploadBundle],
            Case::HasBlob => &[Action::CheckBlob],
            Case::GetLimits => &[Action::ReadLimits],
            Case::ListRevocations => &[Action::ListRevocations],
            Case::UploadArtifact => &[Action::UploadArtifact],
            // Listings answer every client and leave out what it may not read
            // (`listed`).
            Case::ListRuns | Case::ListSchedules | Case::ListPins | Case::ListSecrets => &[],
            Case::SubmitRun | Case::SubmitRuns => &[Action::SubmitRun],
            // The secrets a pipeline asks for are checked before it is proposed.
            Case::SubmitRunWithSecret => &[Action::UseSecret, Action::SubmitRun],
            Case::GetRun
            | Case::StreamLogs
            | Case::ListArtifacts
            | Case::DownloadArtifact
            | Case::Lineage => &[Action::ReadRun],
            Case::CancelRun => &[Action::CancelRun],
            Case::ListWorkers => &[Action::ListWorkers],
            Case::SetWorkerMode => &[Action::SetWorkerMode],
            Case::ClusterStatus => &[Action::ClusterStatus],
            Case::AddMember | Case::RemoveMember => &[Action::ChangeMembership],
            // A re-run reads its source first.
            Case::RerunRun => &[Action::ReadRun, Action::RerunRun],
            Case::CreateSchedule => &[Action::CreateSchedule],
            Case::PauseSchedule => &[Action::PauseSchedule],
            Case::DeleteSchedule => &[Action::DeleteSchedule],
            Case::PinArtifact => &[Action::PinArtifact],
            Case::UnpinArtifact => &[Action::UnpinArtifact],
            Case::CollectGarbage => &[Action::Collect],
            Case::CreateProject => &[Action::CreateProject],
            Case::ListProjects => &[Action::ListProjects],
            Case::SetProjectMember => &[Action::SetProjectMember],
            Case::ListAdmins => &[Action::ListAdmins],
            Case::SetAdmin => &[Action::SetAdmin],
            Case::SetGroupMember | Case::DeleteGroup => &[Action::SetGroupMember],
            Case::ListGroups => &[Action::ListGroups],
            Case::ListAudit => &[Action::ReadAudit],
            Case::RevokeCertificate => &[Action::RevokeCertificate],
            Case::SetSecretVersion | Case::SetSecretNew => &[Action::SetSecret],
            Case::DeleteSecret => &[Action::DeleteSecret],
            Case::RotateSecretsKey => &[Action::ResealSecret],
            // A worker's session is its registration's.
            Case::RegisterOther | Case::HeartbeatOther | Case::AssignmentsOther => {
                &[Action::RegisterWorker]
            }
            Case::StepStartedForeign | Case::ImageResolvedForeign | Case::PushLogsForeign => {
                &[Action::StepStarted]
            }
            Case::FetchBlobUnassigned => &[Action::FetchBlob],
            Case::BlobUrlsUnassigned => &[Action::BlobUrls],
            Case::PrepareUploadForeign | Case::CompleteUploadForeign => &[Action::DirectUpload],
            Case::StepFinishedForeign | Case::StepsFinishedForeign => &[Action::StepFinished],
        }
    }

    /// For a listing: the row that decides whether the fixture is listed.
    pub fn listed(self) -> Option<Action> {
        match self {
            Case::ListRuns => Some(Action::ReadRun),
            Case::ListSchedules => Some(Action::ReadSchedule),
            Case::ListPins => Some(Action::ReadPin),
            Case::ListSecrets => Some(Action::ReadSecret),
            _ => None,
        }
    }

    /// A worker's report names the worker itself (the handler puts the
    /// certificate's name in the command), about an attempt of another worker:
    /// the table lets it through and the state machine's fence ignores it.
    fn report_names_caller(self) -> bool {
        matches!(
            self,
            Case::StepStartedForeign
                | Case::ImageResolvedForeign
                | Case::StepFinishedForeign
                | Case::StepsFinishedForeign
        )
    }

    /// An answered call must still change nothing (a fenced report).
    pub fn must_change_nothing(self) -> bool {
        self.report_names_caller()
    }
}

/// Where each action of the table is exercised. An exhaustive match: a new
/// action does not compile until it is placed here.
pub enum Placement {
    /// By the cases whose `actions` or `listed` name it.
    Matrix,
    /// By no RPC: said why.
    Internal(&'static str),
}

pub fn placement(action: Action) -> Placement {
    match action {
        Action::SubmitRun
        | Action::RerunRun
        | Action::CancelRun
        | Action::CreateSchedule
        | Action::PauseSchedule
        | Action::DeleteSchedule
        | Action::PinArtifact
        | Action::UnpinArtifact
        | Action::Collect
        | Action::SetWorkerMode
        | Action::CreateProject
        | Action::SetProjectMember
        | Action::SetAdmin
        | Action::ChangeMembership
        | Action::RevokeCertificate
        | Action::SetSecret
        | Action::DeleteSecret
        | Action::ResealSecret
        | Action::UseSecret
        | Action::ReadSecret
        | Action::RegisterWorker
        | Action::StepStarted
        | Action::StepFinished
        | Action::FetchBlob
        | Action::BlobUrls
        | Action::DirectUpload
        | Action::ReadRun
        | Action::ReadSchedule
        | Action::ReadPin
        | Action::ListWorkers
        | Action::ClusterStatus
        | Action::ListProjects
        | Action::ListAdmins
        | Action::SetGroupMember
        | Action::ListGroups
        | Action::ReadAudit
        | Action::UploadBundle
        | Action::CheckBlob
        | Action::ReadLimits
        | Action::ListRevocations
        | Action::UploadArtifact => Placement::Matrix,
        Action::RecordAudit | Action::TrimAudit => {
            Placement::Internal("a member's own audit entries; no RPC carries them")
        }
        Action::FireSchedule | Action::Assign | Action::WorkerLost | Action::TimeOutRun => {
            Placement::Internal("proposed by the leader's own loops; no RPC carries it")
        }
    }
}

/// One column: who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Caller {
    Viewer,
    Editor,
    OtherOwner,
    Admin,
    Worker,
    Coordinator,
}

impl Caller {
    pub const ALL: [Caller; 6] = [
        Caller::Viewer,
        Caller::Editor,
        Caller::OtherOwner,
        Caller::Admin,
        Caller::Worker,
        Caller::Coordinator,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Caller::Viewer => "viewer",
            Caller::Editor => "editor",
            Caller::OtherOwner => "owner(q)",
            Caller::Admin => "admin",
            Caller::Worker => "worker",
            Caller::Coordinator => "coord",
        }
    }

    pub fn cert(self) -> CertRole {
        match self {
            Caller::Worker => CertRole::Worker,
            Caller::Coordinator => CertRole::Coordinator,
            _ => CertRole::Client,
        }
    }

    /// The caller's relation to `case`'s subject: a thing of project `p`,
    /// created and owned by `p`'s owner (never one of these callers), or the
    /// project itself, or something created in it under the caller's name.
    pub fn relation(self, case: Case) -> Relation {
        let mut relation = Relation::stranger(self.cert());
        match self {
            Caller::Worker => relation.named_worker = case.report_names_caller(),
            Caller::Coordinator => {}
            client => {
                relation.admin = client == Caller::Admin;
                relation.project_role = match client {
                    Caller::Viewer => Some(ProjectRole::Viewer),
                    Caller::Editor => Some(ProjectRole::Editor),
                    _ => None,
                };
            }
        }
        relation
    }
}

/// What the table says of one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Allowed,
    /// Refused by the table: the refusal names this.
    Refused(String),
    /// Refused by the service's role gate, before the table.
    Gate,
}

pub fn expected(case: Case, caller: Caller) -> Expected {
    let relation = caller.relation(case);
    let first_refusal = case
        .actions()
        .iter()
        .find_map(|action| access::decide(*action, &relation).err());
    if caller.cert() != case.service().admits() {
        // The gate stands in front of the table: the table refuses it too.
        assert!(
            case.actions().is_empty() || first_refusal.is_some(),
            "the table lets a {:?} certificate do {case:?}, which its service's gate refuses",
            caller.cert()
        );
        return Expected::Gate;
    }
    match first_refusal {
        Some(denied) => Expected::Refused(denied.needed),
        None => Expected::Allowed,
    }
}

/// Whether `caller` sees the listing's fixture, by the table.
pub fn expected_listed(case: Case, caller: Caller) -> Option<bool> {
    case.listed()
        .map(|action| access::decide(action, &caller.relation(case)).is_ok())
}
