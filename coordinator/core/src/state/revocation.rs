//! The certificate deny list: serial numbers and holder names an administrator
//! revoked with `ferry certs revoke`, replicated like every other record so that
//! every member refuses the same certificates once it has applied the command.
//!
//! A serial revokes exactly one certificate. A name revokes every certificate
//! issued for that name (in any role) up to the revocation, by the time the
//! certificate says it was issued: one issued later for the same name (a
//! replacement) is accepted. Which certificate a caller presented, and when it
//! was issued, is read from the certificate outside the core
//! (`ferry_common::pki::CertificateFacts`); this module only decides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Outcome, State, StateError};

/// Most entries the deny list holds (serials and names together): it is checked
/// on every request and travels in every snapshot.
pub const MAX_REVOCATIONS: usize = 10_000;
/// Longest serial number, in hexadecimal digits (RFC 5280: at most 20 bytes).
pub const MAX_SERIAL_DIGITS: usize = 40;
/// Longest certificate holder name (the names `ferry certs issue` accepts).
pub const MAX_NAME_LEN: usize = 64;

/// What `ferry certs revoke` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationTarget {
    /// One certificate, by its serial number: lowercase hexadecimal without
    /// leading zeros or separators (`ferry_common::pki::parse_serial`).
    Serial(String),
    /// Every certificate issued for this holder name until the revocation.
    Name(String),
}

impl std::fmt::Display for RevocationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevocationTarget::Serial(serial) => write!(f, "serial {serial}"),
            RevocationTarget::Name(name) => write!(f, "name \"{name}\""),
        }
    }
}

/// Who revoked an entry, and when (the leader's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub by: String,
    pub at_ms: i64,
}

/// The deny list. Part of every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    /// Revoked certificates by serial number.
    #[serde(default)]
    pub serials: BTreeMap<String, Revoked>,
    /// Revoked holder names: a certificate for the name issued at or before
    /// `at_ms` is refused.
    #[serde(default)]
    pub names: BTreeMap<String, Revoked>,
}

/// The certificate a caller presented, as far as revocation is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedCertificate<'a> {
    /// Normalized like [`RevocationTarget::Serial`].
    pub serial: &'a str,
    /// The holder name bound into it.
    pub name: &'a str,
    /// When it was issued (milliseconds since the epoch, whole seconds).
    pub issued_ms: i64,
}

impl Revocations {
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty() && self.names.is_empty()
    }

    pub fn len(&self) -> usize {
        self.serials.len() + self.names.len()
    }

    /// Why `certificate` is refused, or `None` when it is not revoked. A
    /// certificate issued in the same second as its name's revocation counts as
    /// issued before it (certificate times have whole seconds).
    pub fn refusal(&self, certificate: PresentedCertificate<'_>) -> Option<String> {
        if let Some(revoked) = self.serials.get(certificate.serial) {
            return Some(format!(
                "certificate serial {} (\"{}\") was revoked by \"{}\"; ask an administrator \
                 for a new certificate ('ferry certs issue')",
                certificate.serial, certificate.name, revoked.by
            ));
        }
        match self.names.get(certificate.name) {
            Some(revoked) if certificate.issued_ms <= revoked.at_ms => Some(format!(
                "every certificate issued for \"{}\" until {} ms was revoked by \"{}\"; this one \
                 (serial {}) was issued before that: ask an administrator for a new certificate \
                 ('ferry certs issue')",
                certificate.name, revoked.at_ms, revoked.by, certificate.serial
            )),
            _ => None,
        }
    }
}

/// Checks a target's text the way `ferry_common::pki` writes it; the core does
/// not trust the caller to have normalized it.
pub fn check_target(target: &RevocationTarget) -> Result<(), StateError> {
    let invalid = |reason: String| Err(StateError::InvalidRevocation(reason));
    match target {
        RevocationTarget::Serial(serial) => {
            if serial.is_empty() || serial.len() > MAX_SERIAL_DIGITS {
                return invalid(format!(
                    "serial \"{serial}\" must have 1 to {MAX_SERIAL_DIGITS} hexadecimal digits"
                ));
            }
            if !serial
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return invalid(format!(
                    "serial \"{serial}\" must be lowercase hexadecimal digits only"
                ));
            }
            if serial.starts_with('0') {
                return invalid(format!(
                    "serial \"{serial}\" must not start with a zero digit"
                ));
            }
        }
        RevocationTarget::Name(name) => {
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return invalid(format!(
                    "name \"{name}\" must have 1 to {MAX_NAME_LEN} characters"
                ));
            }
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return invalid(format!(
                    "name \"{name}\" may hold only A-Z, a-z, 0-9, '_', '.' and '-'"
                ));
            }
        }
    }
    Ok(())
}

impl State {
    /// `ferry certs revoke`: adds `target` to the deny list. Revoking a serial
    /// again keeps its first record; revoking a name again moves its cut-off to
    /// now (certificates issued for it since are revoked too). Either way the
    /// answer says whether the entry existed, so a resent command is harmless.
    pub(crate) fn revoke(
        &mut self,
        target: RevocationTarget,
        by: String,
        now_ms: i64,
    ) -> Result<Outcome, StateError> {
        check_target(&target)?;
        let list = &mut self.revocations;
        let exists = match &target {
            RevocationTarget::Serial(serial) => list.serials.contains_key(serial),
            RevocationTarget::Name(name) => list.names.contains_key(name),
        };
        if !exists && list.len() >= MAX_REVOCATIONS {
            return Err(StateError::TooManyRevocations(MAX_REVOCATIONS));
        }
        let record = Revoked { by, at_ms: now_ms };
        match target.clone() {
            RevocationTarget::Serial(serial) => {
                list.serials.entry(serial).or_insert(record);
            }
            RevocationTarget::Name(name) => {
                let entry = list.names.entry(name).or_insert(record.clone());
                if record.at_ms > entry.at_ms {
                    *entry = record;
                }
            }
        }
        Ok(Outcome::Revoked {
            target,
            already: exists,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn revoke(state: &mut State, target: RevocationTarget, now_ms: i64) -> Outcome {
        state
            .apply(Command::RevokeCertificate {
                target,
                by: "admin".to_string(),
                now_ms,
            })
            .unwrap()
    }

    fn presented<'a>(serial: &'a str, name: &'a str, issued_ms: i64) -> PresentedCertificate<'a> {
        PresentedCertificate {
            serial,
            name,
            issued_ms,
        }
    }

    #[test]
    fn a_revoked_serial_refuses_that_certificate_only() {
        let mut state = State::default();
        assert!(
            state
                .revocations
                .refusal(presented("ab12", "bob", 5))
                .is_none()
        );
        let outcome = revoke(&mut state, RevocationTarget::Serial("ab12".into()), 1_000);
        assert_eq!(
            outcome,
            Outcome::Revoked {
                target: RevocationTarget::Serial("ab12".into()),
                already: false
            }
        );
        let refusal = state
            .revocations
            .refusal(presented("ab12", "bob", 5))
            .unwrap();
        assert!(
            refusal.contains("serial ab12") && refusal.contains("revoked"),
            "{refusal}"
        );
        // Another certificate of the same holder is not affected.
        assert!(
            state
                .revocations
                .refusal(presented("ab13", "bob", 5))
                .is_none()
        );
        // Again: same record, said to exist already.
        let again = revoke(&mut state, RevocationTarget::Serial("ab12".into()), 2_000);
        assert!(matches!(again, Outcome::Revoked { already: true, .. }));
        assert_eq!(state.revocations.serials["ab12"].at_ms, 1_000);
    }

    #[test]
    fn a_revoked_name_refuses_what_was_issued_until_then() {
        let mut state = State::default();
        revoke(&mut state, RevocationTarget::Name("bob".into()), 10_000);
        assert!(
            state
                .revocations
                .refusal(presented("1", "bob", 9_000))
                .is_some()
        );
        // The same second counts as before.
        assert!(
            state
                .revocations
                .refusal(presented("2", "bob", 10_000))
                .is_some()
        );
        // A replacement issued later is accepted; other names are not affected.
        assert!(
            state
                .revocations
                .refusal(presented("3", "bob", 11_000))
                .is_none()
        );
        assert!(
            state
                .revocations
                .refusal(presented("1", "carol", 1))
                .is_none()
        );
        // Revoking the name again moves the cut-off forward, never back.
        let again = revoke(&mut state, RevocationTarget::Name("bob".into()), 20_000);
        assert!(matches!(again, Outcome::Revoked { already: true, .. }));
        assert!(
            state
                .revocations
                .refusal(presented("3", "bob", 11_000))
                .is_some()
        );
        revoke(&mut state, RevocationTarget::Name("bob".into()), 15_000);
        assert_eq!(state.revocations.names["bob"].at_ms, 20_000);
    }

    #[test]
    fn bad_targets_are_refused_and_change_nothing() {
        let mut state = State::default();
        for target in [
            RevocationTarget::Serial(String::new()),
            RevocationTarget::Serial("AB".into()),
            RevocationTarget::Serial("0ab".into()),
            RevocationTarget::Serial("xyz".into()),
            RevocationTarget::Serial("a".repeat(41)),
            RevocationTarget::Name(String::new()),
            RevocationTarget::Name("bob smith".into()),
            RevocationTarget::Name("b".repeat(65)),
        ] {
            let error = state
                .apply(Command::RevokeCertificate {
                    target: target.clone(),
                    by: "admin".into(),
                    now_ms: 1,
                })
                .unwrap_err();
            assert!(
                matches!(error, StateError::InvalidRevocation(_)),
                "{target:?}: {error}"
            );
        }
        assert!(state.revocations.is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let mut state = State::default();
        for i in 0..MAX_REVOCATIONS {
            state.revocations.serials.insert(
                format!("{:x}", i + 1),
                Revoked {
                    by: "a".into(),
                    at_ms: 0,
                },
            );
        }
        let error = state
            .apply(Command::RevokeCertificate {
                target: RevocationTarget::Name("bob".into()),
                by: "admin".into(),
                now_ms: 1,
            })
            .unwrap_err();
        assert_eq!(error, StateError::TooManyRevocations(MAX_REVOCATIONS));
        // An entry that exists may still be revoked again.
        revoke(&mut state, RevocationTarget::Serial("1".into()), 2);
        assert_eq!(state.revocations.len(), MAX_REVOCATIONS);
    }

    #[test]
    fn the_list_survives_serialization() {
        let mut state = State::default();
        revoke(&mut state, RevocationTarget::Serial("ab".into()), 1);
        revoke(&mut state, RevocationTarget::Name("bob".into()), 2);
        let json = serde_json::to_vec(&state.revocations).unwrap();
        let back: Revocations = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, state.revocations);
        // An older snapshot without the list reads as an empty one.
        let empty: Revocations = serde_json::from_slice(b"{}").unwrap();
        assert!(empty.is_empty());
    }
}
