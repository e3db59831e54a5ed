//! Commands sent again after an attempt whose outcome is unknown: a forward to a
//! leader that went silent or lost its leadership may still be committed, so the
//! proposer sends the command again to the leader as it is then. Applying a
//! command twice must leave the state as applying it once
//! ([`Command::safe_to_resend`] names those that do); here the refusal the second
//! application meets because the first took effect becomes the first's answer.

use super::{Command, Outcome, Schedule, State, StateError};

impl State {
    /// The answer to `command` sent again, given `answer`, what applying it this
    /// time gave, and this state, which includes that application.
    pub fn settle_resend(
        &self,
        command: &Command,
        answer: Result<Outcome, StateError>,
    ) -> Result<Outcome, StateError> {
        match (command, answer) {
            // The first attempt cancelled it.
            (
                Command::CancelRun { .. },
                Err(StateError::RunAlreadyFinished {
                    state: "cancelled", ..
                }),
            ) => Ok(Outcome::Cancelled { stop: Vec::new() }),
            // The first attempt created it, if what exists is what was asked for.
            (Command::CreateSchedule { schedule, .. }, Err(StateError::ScheduleExists(name))) => {
                match self.catalog.schedules.get(&name) {
                    Some(existing) if same_definition(existing, schedule) => Ok(Outcome::Done),
                    _ => Err(StateError::ScheduleExists(name)),
                }
            }
            // The first attempt removed it (or it was gone already: the end state
            // asked for holds either way).
            (Command::DeleteSchedule { .. }, Err(StateError::ScheduleNotFound(_)))
            | (Command::UnpinArtifact { .. }, Err(StateError::PinNotFound(_))) => Ok(Outcome::Done),
            // The first attempt created it, if the owner is the one asked for.
            (Command::CreateProject { name, owner, .. }, Err(StateError::ProjectExists(_)))
                if self.policy.role_in(name, owner) == Some(crate::access::ProjectRole::Owner) =>
            {
                Ok(Outcome::Done)
            }
            (Command::SetProjectMember { .. }, Err(StateError::NotAProjectMember { .. }))
            | (Command::SetAdmin { .. }, Err(StateError::NotAnAdmin(_)))
            | (Command::SetGroupMember { .. }, Err(StateError::NotAGroupMember { .. }))
            | (Command::DeleteGroup { .. }, Err(StateError::GroupNotFound(_))) => Ok(Outcome::Done),
            (_, answer) => answer,
        }
    }
}

/// Two schedules with the same name, cron, pipeline, code and owner: what a
/// `CreateSchedule` asks for (the rest is the schedule's own progress).
fn same_definition(existing: &Schedule, asked: &Schedule) -> bool {
    existing.name == asked.name
        && existing.cron == asked.cron
        && existing.pipeline == asked.pipeline
        && existing.bundle_digest == asked.bundle_digest
        && existing.code_digests == asked.code_digests
        && existing.owner == asked.owner
}
