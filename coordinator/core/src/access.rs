//! Who may do what: the one authorization table of the cluster. Every command a
//! caller proposes and every read a client makes is one [`Action`]; its row in
//! [`TABLE`] says what the caller must be ([`Need`]) with respect to the thing
//! the action is on, and [`decide`] compares that with the caller's
//! [`Relation`] to it. The coordinator computes the relation from the replicated
//! policy (`state::policy`) and the configured administrators; this module is
//! pure and knows nothing of certificates' bytes, gRPC or the state.
//!
//! Architecture invariant: this table is the only place that says which role
//! may do what (`node::authorize` for commands, the control service's reads and
//! listings, the agent service's blob downloads all ask [`decide`]).

use serde::{Deserialize, Serialize};

/// The role bound into the caller's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertRole {
    Client,
    Worker,
    Coordinator,
}

/// A member's role in a project, weakest first: a viewer reads the project's
/// runs, logs, artifacts and metrics; an editor also submits, cancels, reruns,
/// pins and manages schedules in it; an owner also manages its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectRole {
    Viewer,
    Editor,
    Owner,
}

impl CertRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Client => "client",
            CertRole::Worker => "worker",
            CertRole::Coordinator => "coordinator",
        }
    }
}

impl ProjectRole {
    pub const ALL: [ProjectRole; 3] =
        [ProjectRole::Viewer, ProjectRole::Editor, ProjectRole::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            ProjectRole::Viewer => "viewer",
            ProjectRole::Editor => "editor",
            ProjectRole::Owner => "owner",
        }
    }

    /// Parses `viewer`, `editor` or `owner`.
    pub fn parse(text: &str) -> Option<ProjectRole> {
        ProjectRole::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

impl std::fmt::Display for ProjectRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller must be for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any client certificate.
    AnyClient,
    /// A viewer (or more) of the resource's project, the resource's owner, or an
    /// administrator.
    Viewer,
    /// An editor (or more) of the resource's project, the resource's owner, or
    /// an administrator. For an action that creates something in a project, an
    /// editor of that project (every client is one of the `default` project) or
    /// an administrator, and the thing is created under the caller's own name.
    Editor,
    /// An owner of the project, or an administrator.
    ProjectOwner,
    /// A cluster administrator.
    Admin,
    /// The worker certificate whose name the command carries.
    NamedWorker,
    /// A worker certificate with an attempt assigned to it that needs the blob.
    AssignedWorker,
    /// A coordinator certificate: the leader's own loops.
    Coordinator,
    /// Any worker certificate.
    AnyWorker,
}

/// Every kind of request that is authorized: the commands (by kind, without
/// their data) and the reads. The audit log names a request by its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    SubmitRun,
    RerunRun,
    CancelRun,
    CreateSchedule,
    PauseSchedule,
    DeleteSchedule,
    PinArtifact,
    UnpinArtifact,
    /// `ferry gc`.
    Collect,
    /// `ferry workers cordon|drain|uncordon`.
    SetWorkerMode,
    CreateProject,
    /// `ferry projects members add|remove`.
    SetProjectMember,
    /// `ferry admins add|remove`.
    SetAdmin,
    /// `ferry groups add|remove`.
    SetGroupMember,
    /// `ferry groups list`.
    ListGroups,
    /// A client uploads a code bundle (content-addressed; nothing refers to
    /// it until a submission it may make).
    UploadBundle,
    /// A client asks whether a blob is stored (before uploading a bundle).
    CheckBlob,
    /// A client asks for the limits a submission is checked against (before
    /// uploading a bundle).
    ReadLimits,
    /// `ferry certs revoked`.
    ListRevocations,
    /// A worker uploads an output or a whole log of an attempt (referred to
    /// only by the report of the worker the attempt is assigned to).
    UploadArtifact,
    /// `ferry cluster add-member|remove-member` (a Raft configuration change).
    ChangeMembership,
    /// `ferry certs revoke`.
    RevokeCertificate,
    /// `ferry secrets set` (a new secret, or a new version of one).
    SetSecret,
    /// `ferry secrets delete`.
    DeleteSecret,
    /// `ferry secrets rotate-key` (every secret sealed again).
    ResealSecret,
    /// A run's step asks for a secret.
    UseSecret,
    /// A secret (name, version, who set it; never its value) in `ferry secrets list`.
    ReadSecret,
    RegisterWorker,
    StepStarted,
    StepFinished,
    /// A worker downloads a bundle or an input.
    FetchBlob,
    /// A worker asks for presigned URLs to read, straight from the bucket,
    /// blobs an attempt assigned to it needs (the S3 blob backend).
    BlobUrls,
    /// A worker asks for presigned URLs to upload an output or the log of an
    /// attempt it holds straight to the bucket, and completes that upload.
    DirectUpload,
    FireSchedule,
    Assign,
    WorkerLost,
    TimeOutRun,
    /// A run's status, logs, artifacts (list and download), metrics, lineage,
    /// and its place in `ferry runs` and `ferry compare`.
    ReadRun,
    /// A schedule in `ferry schedules`.
    ReadSchedule,
    /// A pin in `ferry artifacts pins`.
    ReadPin,
    /// `ferry workers`.
    ListWorkers,
    /// `ferry cluster status`.
    ClusterStatus,
    /// `ferry projects list` (each caller sees the projects it is a member of).
    ListProjects,
    /// `ferry admins list`.
    ListAdmins,
    /// A record of the audit log in `ferry audit`: the owners of its project
    /// and administrators (a record of no project: administrators only).
    ReadAudit,
    /// A member writes what it refused, or a change outside the state machine
    /// (the cluster's membership), into the audit log.
    RecordAudit,
    /// The leader's retention drops old audit records.
    TrimAudit,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub action: Action,
    pub need: Need,
    /// The action creates something in a project (a run, a schedule): an
    /// editor of that project may, the resource's owner counts for nothing yet.
    pub creates: bool,
    /// The command names its owner, who must be the caller.
    pub own_name: bool,
    /// What it does, in words, for a refusal.
    pub what: &'static str,
}

const fn rule(action: Action, need: Need, what: &'static str) -> Rule {
    Rule {
        action,
        need,
        creates: false,
        own_name: false,
        what,
    }
}

const fn creating(action: Action, what: &'static str) -> Rule {
    Rule {
        action,
        need: Need::Editor,
        creates: true,
        own_name: true,
        what,
    }
}

/// The whole table: every action has exactly one row (tested).
pub const TABLE: &[Rule] = &[
    creating(Action::SubmitRun, "submit runs"),
    creating(Action::RerunRun, "start runs"),
    creating(Action::CreateSchedule, "create schedules"),
    Rule {
        own_name: true,
        ..rule(Action::PinArtifact, Need::Editor, "pin artifacts")
    },
    rule(Action::CancelRun, Need::Editor, "cancel runs"),
    rule(
        Action::PauseSchedule,
        Need::Editor,
        "pause or resume schedules",
    ),
    rule(Action::DeleteSchedule, Need::Editor, "delete schedules"),
    rule(Action::UnpinArtifact, Need::Editor, "unpin artifacts"),
    rule(Action::Collect, Need::Admin, "collect garbage"),
    rule(
        Action::SetWorkerMode,
        Need::Admin,
        "cordon, drain or uncordon workers",
    ),
    rule(Action::CreateProject, Need::Admin, "create projects"),
    rule(
        Action::SetProjectMember,
        Need::ProjectOwner,
        "manage the project's members",
    ),
    rule(
        Action::SetAdmin,
        Need::Admin,
        "add or remove administrators",
    ),
    rule(
        Action::ChangeMembership,
        Need::Admin,
        "change the cluster's membership",
    ),
    rule(
        Action::RevokeCertificate,
        Need::Admin,
        "revoke certificates",
    ),
    rule(Action::SetSecret, Need::Editor, "set secrets"),
    rule(Action::DeleteSecret, Need::Editor, "delete secrets"),
    rule(
        Action::ResealSecret,
        Need::Admin,
        "seal secrets again with a new key",
    ),
    rule(Action::UseSecret, Need::Editor, "use secrets in runs"),
    rule(Action::ReadSecret, Need::Viewer, "see secrets"),
    rule(
        Action::RegisterWorker,
        Need::NamedWorker,
        "register workers",
    ),
    rule(Action::StepStarted, Need::NamedWorker, "report steps"),
    rule(Action::StepFinished, Need::NamedWorker, "report steps"),
    rule(
        Action::FetchBlob,
        Need::AssignedWorker,
        "fetch blobs for attempts",
    ),
    rule(
        Action::BlobUrls,
        Need::AssignedWorker,
        "get URLs to read blobs for attempts",
    ),
    rule(
        Action::DirectUpload,
        Need::NamedWorker,
        "upload an attempt's outputs to the bucket",
    ),
    rule(Action::FireSchedule, Need::Coordinator, "fire schedules"),
    rule(Action::Assign, Need::Coordinator, "assign work"),
    rule(
        Action::WorkerLost,
        Need::Coordinator,
        "declare workers lost",
    ),
    rule(Action::TimeOutRun, Need::Coordinator, "time out runs"),
    rule(
        Action::ReadRun,
        Need::Viewer,
        "read runs (status, logs, artifacts, metrics, lineage)",
    ),
    rule(Action::ReadSchedule, Need::Viewer, "see schedules"),
    rule(Action::ReadPin, Need::Viewer, "see pins"),
    rule(Action::ListWorkers, Need::AnyClient, "list workers"),
    rule(
        Action::ClusterStatus,
        Need::AnyClient,
        "see the cluster's status",
    ),
    rule(Action::ListProjects, Need::AnyClient, "list projects"),
    rule(Action::ListAdmins, Need::AnyClient, "list administrators"),
    rule(Action::SetGroupMember, Need::Admin, "manage groups"),
    rule(Action::ListGroups, Need::AnyClient, "list groups"),
    rule(Action::UploadBundle, Need::AnyClient, "upload code bundles"),
    rule(
        Action::CheckBlob,
        Need::AnyClient,
        "ask whether a blob is stored",
    ),
    rule(
        Action::ReadLimits,
        Need::AnyClient,
        "read the submission limits",
    ),
    rule(
        Action::ListRevocations,
        Need::AnyClient,
        "list revoked certificates",
    ),
    rule(Action::UploadArtifact, Need::AnyWorker, "upload artifacts"),
    rule(Action::ReadAudit, Need::ProjectOwner, "read the audit log"),
    rule(
        Action::RecordAudit,
        Need::Coordinator,
        "write the audit log",
    ),
    rule(Action::TrimAudit, Need::Coordinator, "trim the audit log"),
];

/// The row of an action.
pub fn rule_of(action: Action) -> &'static Rule {
    TABLE
        .iter()
        .find(|rule| rule.action == action)
        .expect("every action has a row (tested)")
}

/// Who the caller is with respect to the thing an action is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relation {
    pub cert: CertRole,
    /// A client named among the administrators (configured or added).
    pub admin: bool,
    /// The caller's role in the project of the thing (or the project a creation
    /// goes into).
    pub project_role: Option<ProjectRole>,
    /// The caller owns the thing (submitted the run, owns the schedule or pin,
    /// submitted a run that produced the artifact).
    pub owns: bool,
    /// The command names no owner but the caller (true for one that names none).
    pub as_self: bool,
    /// The project is `default`, where every client may create its own things.
    pub open_project: bool,
    /// A worker: the command names it, or the blob belongs to one of its
    /// attempts.
    pub named_worker: bool,
}

impl Relation {
    /// A caller with no relation to the thing but its certificate's role.
    pub fn stranger(cert: CertRole) -> Relation {
        Relation {
            cert,
            admin: false,
            project_role: None,
            owns: false,
            as_self: true,
            open_project: false,
            named_worker: false,
        }
    }
}

/// A refusal: what the action is and who may do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub what: &'static str,
    /// Who may, in words: names the role needed.
    pub needed: String,
}

/// Decides whether a caller with `relation` may do `action`.
pub fn decide(action: Action, relation: &Relation) -> Result<(), Denied> {
    let rule = rule_of(action);
    let client = relation.cert == CertRole::Client;
    let allowed = match rule.need {
        Need::AnyClient => client,
        Need::Admin => client && relation.admin,
        Need::NamedWorker | Need::AssignedWorker => {
            relation.cert == CertRole::Worker && relation.named_worker
        }
        Need::Coordinator => relation.cert == CertRole::Coordinator,
        Need::AnyWorker => relation.cert == CertRole::Worker,
        Need::Viewer | Need::Editor | Need::ProjectOwner => {
            client
                && (!rule.own_name || relation.as_self)
                && (relation.admin || standing(rule, relation) >= floor(rule.need))
        }
    };
    if allowed {
        return Ok(());
    }
    Err(Denied {
        what: rule.what,
        needed: needed_text(rule, relation),
    })
}

/// The caller's standing in the thing's project: its membership, raised to
/// editor on its own things, or (for a creation) in the `default` project.
fn standing(rule: &Rule, relation: &Relation) -> Option<ProjectRole> {
    let implicit = if rule.creates {
        relation.open_project
    } else {
        relation.owns
    };
    let implicit = implicit.then_some(ProjectRole::Editor);
    relation.project_role.max(implicit)
}

fn floor(need: Need) -> Option<ProjectRole> {
    Some(match need {
        Need::Viewer => ProjectRole::Viewer,
        Need::ProjectOwner => ProjectRole::Owner,
        _ => ProjectRole::Editor,
    })
}

/// Who may do what `rule` says, in words.
fn needed_text(rule: &Rule, relation: &Relation) -> String {
    match rule.need {
        Need::AnyClient => "a client certificate".to_string(),
        Need::Admin => "the admin role (a cluster administrator: `admins` in \
                        coordinator.toml or `ferry admins add`)"
            .to_string(),
        Need::NamedWorker => "the worker certificate the report names".to_string(),
        Need::AssignedWorker => {
            "a worker certificate with an attempt assigned to it that needs this blob".to_string()
        }
        Need::Coordinator => "a coordinator certificate (the leader only)".to_string(),
        Need::AnyWorker => "a worker certificate".to_string(),
        Need::Viewer | Need::Editor | Need::ProjectOwner if relation.cert != CertRole::Client => {
            "a client certificate".to_string()
        }
        Need::Viewer | Need::Editor | Need::ProjectOwner if rule.own_name && !relation.as_self => {
            "a client acting under its own name".to_string()
        }
        Need::Viewer => "the viewer role in the project (or more), owning it, or the admin \
                         role"
            .to_string(),
        Need::Editor if rule.creates => {
            "the editor role in the project (or owner), or the admin role".to_string()
        }
        Need::Editor => "the editor role in the project (or owner), owning it, or the admin \
                         role"
            .to_string(),
        Need::ProjectOwner => "the owner role in the project, or the admin role".to_string(),
    }
}

#[cfg(test)]
mod tests;
