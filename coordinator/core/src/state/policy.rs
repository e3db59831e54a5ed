//! Who is who, as replicated state: projects with their members and roles, and
//! the administrators added by command (those configured in coordinator.toml
//! are not state: every coordinator reads its own). The commands that change
//! it (`CreateProject`, `SetProjectMember`, `SetAdmin`), and the relation of a
//! caller to a run, schedule, pin or blob that the authorization table
//! ([`crate::access`]) decides on.
//!
//! The `default` project exists without being created: every client may submit
//! into it and acts there on its own runs, schedules and pins only; members
//! added to it (`ferry projects members add default ...`) act on everyone's.

use std::collections::{BTreeMap, BTreeSet};

use ferry_spec::DEFAULT_PROJECT;
use serde::{Deserialize, Serialize};

use super::{Outcome, Run, State, StateError};
use crate::access::{CertRole, ProjectRole, Relation};

/// Projects and administrators. Part of every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Created projects (and `default`, once a member was added to it).
    #[serde(default)]
    pub projects: BTreeMap<String, Project>,
    /// Administrators added by `ferry admins add` (a user, or `@group`).
    #[serde(default)]
    pub admins: BTreeSet<String>,
    /// Groups of users (`ferry groups add`): a project member or an
    /// administrator named `@group` stands for every user in it.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeSet<String>>,
}

/// What marks a group where a user name could stand: `@ml-team`.
pub const GROUP_SIGIL: char = '@';

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// User name → role.
    pub members: BTreeMap<String, ProjectRole>,
    pub created_by: String,
    pub created_ms: i64,
}

/// Who asks, as the authorization needs it: the certificate's role and name,
/// and the administrators configured on this coordinator.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub cert: CertRole,
    pub name: &'a str,
    pub configured_admins: &'a BTreeSet<String>,
}

impl Policy {
    /// Whether `user` is an administrator (configured or added, by name or
    /// through a group).
    pub fn is_admin(&self, configured: &BTreeSet<String>, user: &str) -> bool {
        configured
            .iter()
            .chain(&self.admins)
            .any(|name| self.stands_for(name, user))
    }

    /// `user`'s role in `project`, if it is a member: its own, or the
    /// strongest of its groups'.
    pub fn role_in(&self, project: &str, user: &str) -> Option<ProjectRole> {
        self.projects
            .get(project)?
            .members
            .iter()
            .filter(|(name, _)| self.stands_for(name, user))
            .map(|(_, role)| *role)
            .max()
    }

    /// Whether a member or administrator entry `name` (a user, or `@group`)
    /// stands for `user`.
    pub fn stands_for(&self, name: &str, user: &str) -> bool {
        match name.strip_prefix(GROUP_SIGIL) {
            Some(group) => self
                .groups
                .get(group)
                .is_some_and(|users| users.contains(user)),
            None => name == user,
        }
    }

    /// Whether a member or administrator entry names an existing group, or a
    /// user (every name does).
    fn names_someone(&self, name: &str) -> bool {
        name.strip_prefix(GROUP_SIGIL)
            .is_none_or(|group| self.groups.contains_key(group))
    }

    /// Whether an owner entry stands for at least one user.
    fn has_someone(&self, name: &str) -> bool {
        match name.strip_prefix(GROUP_SIGIL) {
            Some(group) => self
                .groups
                .get(group)
                .is_some_and(|users| !users.is_empty()),
            None => true,
        }
    }

    /// Whether `project` exists (`default` always does).
    pub fn project_exists(&self, project: &str) -> bool {
        project == DEFAULT_PROJECT || self.projects.contains_key(project)
    }
}

impl Caller<'_> {
    fn is_client(&self) -> bool {
        self.cert == CertRole::Client
    }

    /// The caller's relation to a thing in `project` owned by `owner`.
    pub fn relation(&self, policy: &Policy, project: &str, owner: &str) -> Relation {
        let mut relation = Relation::stranger(self.cert);
        if !self.is_client() {
            return relation;
        }
        relation.admin = policy.is_admin(self.configured_admins, self.name);
        relation.project_role = policy.role_in(project, self.name);
        relation.owns = owner == self.name;
        relation.open_project = project == DEFAULT_PROJECT;
        relation
    }

    /// The caller's relation to a run.
    pub fn to_run(&self, policy: &Policy, run: &Run) -> Relation {
        self.relation(policy, &run.pipeline.project, &run.submitter)
    }

    /// The caller's relation to an artifact: the strongest it has to a run that
    /// produced it. `owner`: a pin's owner, if the artifact is asked about
    /// through a pin.
    pub fn to_artifact(&self, state: &State, digest: &str, owner: Option<&str>) -> Relation {
        let mut best = Relation::stranger(self.cert);
        if !self.is_client() {
            return best;
        }
        best.admin = state.policy.is_admin(self.configured_admins, self.name);
        best.owns = owner == Some(self.name);
        for run in state.runs.values() {
            let produced = run
                .steps
                .iter()
                .any(|step| step.outputs.iter().any(|output| output.digest == digest));
            if !produced {
                continue;
            }
            let to_run = self.to_run(&state.policy, run);
            best.project_role = best.project_role.max(to_run.project_role);
            // Pinning: owning a run that produced it is owning the artifact.
            if owner.is_none() {
                best.owns |= to_run.owns;
            }
        }
        best
    }
}

impl State {
    /// Whether worker `worker` holds an attempt (assigned or running) that needs
    /// blob `digest`: its run's code bundle (or a step's code) or one of its
    /// step's inputs.
    pub fn worker_needs_blob(&self, worker: &str, digest: &str) -> bool {
        let Some(load) = self.loads.get(worker) else {
            return false;
        };
        load.attempts.keys().any(|key| {
            let Some(run) = self.runs.get(&key.run) else {
                return false;
            };
            run.bundle_digest == digest
                || run.code_digest(&key.step) == digest
                || run
                    .step(&key.step)
                    .is_some_and(|step| step.inputs.iter().any(|input| input.digest == digest))
        })
    }

    pub(super) fn create_project(
        &mut self,
        name: String,
        owner: String,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        if self.policy.project_exists(&name) {
            return Err(StateError::ProjectExists(name));
        }
        let project = Project {
            members: BTreeMap::from([(owner.clone(), ProjectRole::Owner)]),
            created_by: owner,
            created_ms: now_ms,
        };
        self.policy.projects.insert(name, project);
        Ok(Outcome::Done)
    }

    pub(super) fn set_project_member(
        &mut self,
        project: String,
        user: String,
        role: Option<ProjectRole>,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        if !self.policy.project_exists(&project) {
            return Err(StateError::ProjectNotFound(project));
        }
        let members = self
            .policy
            .projects
            .get(&project)
            .map(|record| &record.members);
        let current = members.and_then(|members| members.get(&user)).copied();
        // An owner that is a group counts only while someone is in it.
        let other_owners = members.map_or(0, |members| {
            members
                .iter()
                .filter(|(name, role)| {
                    **role == ProjectRole::Owner && **name != user && self.policy.has_someone(name)
                })
                .count()
        });
        if role.is_some() && !self.policy.names_someone(&user) {
            return Err(StateError::GroupNotFound(user));
        }
        // A created project keeps an owner (`default` needs none: every client
        // may use it, and administrators manage it).
        if current == Some(ProjectRole::Owner)
            && role != Some(ProjectRole::Owner)
            && project != DEFAULT_PROJECT
            && other_owners == 0
        {
            return Err(StateError::LastProjectOwner { project, user });
        }
        if role.is_none() && current.is_none() {
            return Err(StateError::NotAProjectMember { project, user });
        }
        let record = self
            .policy
            .projects
            .entry(project)
            .or_insert_with(|| Project {
                members: BTreeMap::new(),
                created_by: String::new(),
                created_ms: now_ms,
            });
        match role {
            Some(role) => {
                record.members.insert(user, role);
            }
            None => {
                record.members.remove(&user);
            }
        }
        Ok(Outcome::Done)
    }

    /// `ferry groups add|remove`: a group is made with its first user and
    /// stays, empty or not, until it is deleted.
    pub(super) fn set_group_member(
        &mut self,
        group: String,
        user: String,
        member: bool,
    ) -> Result<Outcome, StateError> {
        if member {
            self.policy.groups.entry(group).or_default().insert(user);
            return Ok(Outcome::Done);
        }
        let Some(users) = self.policy.groups.get_mut(&group) else {
            return Err(StateError::NotAGroupMember { group, user });
        };
        if !users.remove(&user) {
            return Err(StateError::NotAGroupMember { group, user });
        }
        Ok(Outcome::Done)
    }

    /// `ferry groups delete`: the group and every role given to it (as a
    /// project member or an administrator), so that a group of the same name
    /// made later inherits nothing. Refused where it is a project's last
    /// owner with users.
    pub(super) fn delete_group(&mut self, group: String) -> Result<Outcome, StateError> {
        if !self.policy.groups.contains_key(&group) {
            return Err(StateError::GroupNotFound(format!("{GROUP_SIGIL}{group}")));
        }
        let entry = format!("{GROUP_SIGIL}{group}");
        for (name, project) in &self.policy.projects {
            let owners = project
                .members
                .iter()
                .filter(|(member, role)| {
                    **role == ProjectRole::Owner && self.policy.has_someone(member)
                })
                .count();
            if project.members.get(&entry) == Some(&ProjectRole::Owner)
                && self.policy.has_someone(&entry)
                && owners == 1
                && name != DEFAULT_PROJECT
            {
                return Err(StateError::LastProjectOwner {
                    project: name.clone(),
                    user: entry,
                });
            }
        }
        self.policy.groups.remove(&group);
        for project in self.policy.projects.values_mut() {
            project.members.remove(&entry);
        }
        self.policy.admins.remove(&entry);
        Ok(Outcome::Done)
    }

    pub(super) fn set_admin(&mut self, user: String, admin: bool) -> Result<Outcome, StateError> {
        if admin && !self.policy.names_someone(&user) {
            return Err(StateError::GroupNotFound(user));
        }
        if admin {
            self.policy.admins.insert(user);
        } else if !self.policy.admins.remove(&user) {
            return Err(StateError::NotAnAdmin(user));
        }
        Ok(Outcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Action, decide};
    use crate::state::Command;

    fn caller<'a>(name: &'a str, admins: &'a BTreeSet<String>) -> Caller<'a> {
        Caller {
            cert: CertRole::Client,
            name,
            configured_admins: admins,
        }
    }

    #[test]
    fn projects_members_and_admins_change_by_command() {
        let mut state = State::default();
        let none = BTreeSet::new();
        state
            .create_project("vision".into(), "alice".into(), 5)
            .expect("created");
        assert_eq!(
            state.create_project("vision".into(), "bob".into(), 6),
            Err(StateError::ProjectExists("vision".into()))
        );
        assert_eq!(
            state.create_project("default".into(), "bob".into(), 6),
            Err(StateError::ProjectExists("default".into()))
        );
        assert_eq!(
            state.policy.role_in("vision", "alice"),
            Some(ProjectRole::Owner)
        );
        state
            .set_project_member("vision".into(), "bob".into(), Some(ProjectRole::Viewer), 7)
            .expect("added");
        // The last owner stays.
        assert!(matches!(
            state.set_project_member("vision".into(), "alice".into(), None, 8),
            Err(StateError::LastProjectOwner { .. })
        ));
        assert_eq!(
            state.set_project_member("nowhere".into(), "bob".into(), None, 8),
            Err(StateError::ProjectNotFound("nowhere".into()))
        );
        // `default` takes members without being created.
        state
            .set_project_member(
                "default".into(),
                "carol".into(),
                Some(ProjectRole::Owner),
                9,
            )
            .expect("default member");
        state
            .set_project_member("default".into(), "carol".into(), None, 9)
            .expect("default member removed");

        let bob = caller("bob", &none);
        let relation = bob.relation(&state.policy, "vision", "alice");
        assert!(decide(Action::ReadRun, &relation).is_ok());
        assert!(decide(Action::CancelRun, &relation).is_err());
        assert!(decide(Action::SetWorkerMode, &relation).is_err());
        state.set_admin("bob".into(), true).expect("admin");
        let relation = bob.relation(&state.policy, "vision", "alice");
        assert!(decide(Action::SetWorkerMode, &relation).is_ok());
        state.set_admin("bob".into(), false).expect("no longer");
        assert_eq!(
            state.set_admin("bob".into(), false),
            Err(StateError::NotAnAdmin("bob".into()))
        );
        let configured = BTreeSet::from(["bob".to_string()]);
        assert!(state.policy.is_admin(&configured, "bob"));
    }

    #[test]
    fn a_group_gives_its_users_the_role_it_has() {
        let mut state = State::default();
        let none = BTreeSet::new();
        state
            .create_project("vision".into(), "alice".into(), 1)
            .unwrap();
        state
            .set_group_member("ml".into(), "dave".into(), true)
            .unwrap();
        state
            .set_group_member("ml".into(), "erin".into(), true)
            .unwrap();
        state
            .set_project_member("vision".into(), "@ml".into(), Some(ProjectRole::Editor), 2)
            .unwrap();
        state
            .set_project_member("vision".into(), "erin".into(), Some(ProjectRole::Owner), 2)
            .unwrap();
        assert_eq!(
            state.policy.role_in("vision", "dave"),
            Some(ProjectRole::Editor)
        );
        // The strongest of its own and its groups' roles.
        assert_eq!(
            state.policy.role_in("vision", "erin"),
            Some(ProjectRole::Owner)
        );
        assert_eq!(state.policy.role_in("vision", "frank"), None);
        let relation = caller("dave", &none).relation(&state.policy, "vision", "alice");
        assert!(decide(Action::CancelRun, &relation).is_ok());

        // Administrators by group, configured or added.
        assert!(!state.policy.is_admin(&none, "dave"));
        state.set_admin("@ml".into(), true).unwrap();
        assert!(state.policy.is_admin(&none, "dave"));
        state.set_admin("@ml".into(), false).unwrap();
        let configured = BTreeSet::from(["@ml".to_string()]);
        assert!(state.policy.is_admin(&configured, "erin"));

        // Leaving the group takes the role away.
        state
            .set_group_member("ml".into(), "dave".into(), false)
            .unwrap();
        assert_eq!(state.policy.role_in("vision", "dave"), None);
        assert_eq!(
            state.set_group_member("ml".into(), "dave".into(), false),
            Err(StateError::NotAGroupMember {
                group: "ml".into(),
                user: "dave".into()
            })
        );
        // A role goes only to a group that exists.
        assert_eq!(
            state.set_project_member(
                "vision".into(),
                "@ghost".into(),
                Some(ProjectRole::Owner),
                3
            ),
            Err(StateError::GroupNotFound("@ghost".into()))
        );
        assert_eq!(
            state.set_admin("@ghost".into(), true),
            Err(StateError::GroupNotFound("@ghost".into()))
        );

        // An owner group counts as an owner only while someone is in it.
        state
            .set_group_member("leads".into(), "gail".into(), true)
            .unwrap();
        state
            .set_project_member(
                "vision".into(),
                "@leads".into(),
                Some(ProjectRole::Owner),
                4,
            )
            .unwrap();
        state
            .set_project_member("vision".into(), "alice".into(), None, 5)
            .unwrap();
        state
            .set_group_member("leads".into(), "gail".into(), false)
            .unwrap();
        assert!(matches!(
            state.set_project_member("vision".into(), "erin".into(), None, 6),
            Err(StateError::LastProjectOwner { .. })
        ));

        // Deleting a group takes every role it was given; a group of the same
        // name made later inherits none.
        state.set_admin("@ml".into(), true).unwrap();
        state.delete_group("ml".into()).unwrap();
        assert!(!state.policy.admins.contains("@ml"));
        assert!(!state.policy.projects["vision"].members.contains_key("@ml"));
        state
            .set_group_member("ml".into(), "dave".into(), true)
            .unwrap();
        assert_eq!(state.policy.role_in("vision", "dave"), None);
        assert!(!state.policy.is_admin(&none, "dave"));
        assert_eq!(
            state.delete_group("nowhere".into()),
            Err(StateError::GroupNotFound("@nowhere".into()))
        );
    }

    #[test]
    fn policy_commands_sent_twice_answer_as_once() {
        let mut state = State::default();
        let commands = [
            Command::CreateProject {
                name: "vision".into(),
                owner: "alice".into(),
                now_ms: 1,
            },
            Command::SetProjectMember {
                project: "vision".into(),
                user: "bob".into(),
                role: Some(ProjectRole::Editor),
                now_ms: 2,
            },
            Command::SetProjectMember {
                project: "vision".into(),
                user: "bob".into(),
                role: None,
                now_ms: 3,
            },
            Command::SetAdmin {
                user: "bob".into(),
                admin: true,
                now_ms: 4,
            },
            Command::SetAdmin {
                user: "bob".into(),
                admin: false,
                now_ms: 5,
            },
            Command::SetGroupMember {
                group: "ml".into(),
                user: "bob".into(),
                member: true,
                now_ms: 6,
            },
            Command::SetGroupMember {
                group: "ml".into(),
                user: "bob".into(),
                member: false,
                now_ms: 7,
            },
            Command::DeleteGroup {
                group: "ml".into(),
                now_ms: 8,
            },
        ];
        for command in commands {
            assert_eq!(
                state.apply(command.clone()),
                Ok(Outcome::Done),
                "{command:?}"
            );
            let policy = state.policy.clone();
            let again = state.apply(command.clone());
            assert_eq!(
                state.settle_resend(&command, again),
                Ok(Outcome::Done),
                "{command:?}"
            );
            assert_eq!(state.policy, policy, "{command:?}");
            let mut stamped = command.clone();
            stamped.stamp(42);
            assert_eq!(stamped.now_ms(), 42);
            assert!(command.safe_to_resend());
        }
    }
}
