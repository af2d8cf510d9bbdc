//! The shell's revocation store (issue 14): the credentials revoked through
//! `POST /api/v1/revocations`, held in memory (lost on restart, kept across
//! a reload). Every change is turned into the core's
//! [`turnpike_proto::core::Revocations`] and pushed into every shard
//! (`io::control`), which ends the allocations it revokes at once. A
//! cluster backend would fill the same store from shared state and push it
//! the same way.
//!
//! A name is a full REST username (`1767225600:alice`: that one credential)
//! or a bare user (`alice`: every REST username whose user part is `alice`,
//! and the static user `alice`). A revocation may lapse at `until` (Unix
//! seconds); a full REST username's lapses at the credential's own expiry
//! at the latest, since after it the credential authenticates nowhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use turnpike_proto::core::Revocations;
use turnpike_proto::core::auth::{MAX_USERNAME, parse_rest_username};

/// The most revocations held at once (lapsed ones are pruned first).
pub const MAX_REVOCATIONS: usize = 100_000;

/// One stored revocation, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub username: String,
    /// Unix seconds it lapses at; `None`: until lifted.
    pub until: Option<u64>,
    /// Unix seconds it was first stored.
    pub created: u64,
}

/// Why a revocation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("username: must not be empty")]
    Empty,
    #[error("username: at most {MAX_USERNAME} bytes (the longest USERNAME a request may carry)")]
    TooLong,
    #[error("username: control characters are not allowed")]
    Control,
    #[error("until: {until} is not in the future (now {now})")]
    UntilPast { until: u64, now: u64 },
    #[error(
        "username: this REST credential expired at {expiry} (now {now}) and authenticates nowhere"
    )]
    CredentialExpired { expiry: u64, now: u64 },
    #[error(
        "at most {MAX_REVOCATIONS} revocations are held; lift some (DELETE /api/v1/revocations/NAME) or let them lapse"
    )]
    Full,
}

impl RevokeError {
    /// The request parameter at fault (`None`: the store is full).
    pub fn parameter(&self) -> Option<&'static str> {
        match self {
            RevokeError::Empty
            | RevokeError::TooLong
            | RevokeError::Control
            | RevokeError::CredentialExpired { .. } => Some("username"),
            RevokeError::UntilPast { .. } => Some("until"),
            RevokeError::Full => None,
        }
    }
}

/// Check a name to revoke: like a USERNAME (non-empty, at most
/// [`MAX_USERNAME`] bytes), without control characters.
pub fn check_name(name: &str) -> Result<(), RevokeError> {
    if name.is_empty() {
        return Err(RevokeError::Empty);
    }
    if name.len() > MAX_USERNAME {
        return Err(RevokeError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(RevokeError::Control);
    }
    Ok(())
}

/// The `until` stored for `name`: `until` if it is in the future (else
/// refused); for a full REST username (not a static user's name) capped at
/// the credential's expiry, which is also the default.
pub fn effective_until(
    name: &str,
    until: Option<u64>,
    now: u64,
    static_user: bool,
) -> Result<Option<u64>, RevokeError> {
    if let Some(u) = until {
        if u <= now {
            return Err(RevokeError::UntilPast { until: u, now });
        }
    }
    match parse_rest_username(name) {
        Some((expiry, _)) if !static_user => {
            if expiry <= now {
                return Err(RevokeError::CredentialExpired { expiry, now });
            }
            Ok(Some(until.map_or(expiry, |u| u.min(expiry))))
        }
        _ => Ok(until),
    }
}

/// The revocations, by name.
#[derive(Debug, Default)]
pub struct RevocationStore {
    entries: BTreeMap<String, Revocation>,
}

impl RevocationStore {
    /// Drop the revocations that lapsed by `now`; whether any did.
    pub fn prune(&mut self, now: u64) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|_, r| r.until.is_none_or(|until| now < until));
        self.entries.len() != before
    }

    /// Store (or replace) a revocation of a checked name with its
    /// effective `until`; whether it is new (none was in force). Replacing
    /// one in force keeps its `created`. Lapsed ones are pruned when the
    /// store is full, so a POST costs O(log n) until then.
    pub fn revoke(
        &mut self,
        username: &str,
        until: Option<u64>,
        now: u64,
    ) -> Result<(Revocation, bool), RevokeError> {
        if let Some(r) = self.entries.get_mut(username) {
            let in_force = r.until.is_none_or(|t| now < t);
            if !in_force {
                r.created = now;
            }
            r.until = until;
            return Ok((r.clone(), !in_force));
        }
        if self.entries.len() >= MAX_REVOCATIONS {
            self.prune(now);
            if self.entries.len() >= MAX_REVOCATIONS {
                return Err(RevokeError::Full);
            }
        }
        let r = Revocation {
            username: username.to_string(),
            until,
            created: now,
        };
        self.entries.insert(username.to_string(), r.clone());
        Ok((r, true))
    }

    /// Lift the revocation of `username`; whether there was one in force.
    pub fn lift(&mut self, username: &str, now: u64) -> bool {
        self.entries
            .remove(username)
            .is_some_and(|r| r.until.is_none_or(|t| now < t))
    }

    /// The revocations in force at `now`, by name.
    pub fn list(&mut self, now: u64) -> Vec<Revocation> {
        self.prune(now);
        self.entries.values().cloned().collect()
    }

    /// How many are in force at `now` (the `turnpike_revocations` gauge).
    pub fn active(&self, now: u64) -> usize {
        self.entries
            .values()
            .filter(|r| r.until.is_none_or(|until| now < until))
            .count()
    }

    /// Replace the whole store with `list` (the cluster's set, issue 14),
    /// at most [`MAX_REVOCATIONS`] of them; whether anything changed.
    pub fn replace(&mut self, list: Vec<Revocation>) -> bool {
        let new: BTreeMap<String, Revocation> = list
            .into_iter()
            .take(MAX_REVOCATIONS)
            .map(|r| (r.username.clone(), r))
            .collect();
        if new == self.entries {
            return false;
        }
        self.entries = new;
        true
    }

    /// The set the cores enforce.
    pub fn to_core(&self) -> Revocations {
        let mut set = Revocations::new();
        for r in self.entries.values() {
            set.insert(r.username.clone(), r.until);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_usernames() {
        assert_eq!(check_name(""), Err(RevokeError::Empty));
        assert_eq!(check_name(&"a".repeat(MAX_USERNAME)), Ok(()));
        assert_eq!(
            check_name(&"a".repeat(MAX_USERNAME + 1)),
            Err(RevokeError::TooLong)
        );
        assert_eq!(check_name("al\nice"), Err(RevokeError::Control));
        assert_eq!(check_name("1767225600:alice"), Ok(()));
    }

    #[test]
    fn a_full_rest_username_lapses_at_its_expiry_at_the_latest() {
        assert_eq!(
            effective_until("2000:alice", None, 1000, false),
            Ok(Some(2000))
        );
        assert_eq!(
            effective_until("2000:alice", Some(1500), 1000, false),
            Ok(Some(1500))
        );
        assert_eq!(
            effective_until("2000:alice", Some(9000), 1000, false),
            Ok(Some(2000))
        );
        assert_eq!(
            effective_until("900:alice", None, 1000, false),
            Err(RevokeError::CredentialExpired {
                expiry: 900,
                now: 1000
            })
        );
        // A static user whose name looks like a REST username: no cap.
        assert_eq!(effective_until("900:alice", None, 1000, true), Ok(None));
        assert_eq!(effective_until("alice", None, 1000, false), Ok(None));
        assert_eq!(
            effective_until("alice", Some(1000), 1000, false),
            Err(RevokeError::UntilPast {
                until: 1000,
                now: 1000
            })
        );
    }

    #[test]
    fn the_store_replaces_lifts_prunes_and_is_bounded() {
        let mut s = RevocationStore::default();
        let (r, new) = s.revoke("alice", Some(200), 100).unwrap();
        assert!(new);
        assert_eq!(r.created, 100);
        let (r, new) = s.revoke("alice", None, 150).unwrap();
        assert!(!new, "replaced");
        assert_eq!((r.created, r.until), (100, None));
        s.revoke("bob", Some(300), 150).unwrap();
        assert_eq!(s.active(299), 2);
        assert_eq!(s.active(300), 1, "bob lapsed at 300");
        assert!(s.to_core().revokes("5000:bob", 299));
        assert_eq!(
            s.list(300)
                .iter()
                .map(|r| r.username.as_str())
                .collect::<Vec<_>>(),
            ["alice"]
        );
        assert!(!s.lift("bob", 300), "lapsed: nothing to lift");
        assert!(s.lift("alice", 300));
        assert!(!s.lift("alice", 300));
        for i in 0..MAX_REVOCATIONS {
            s.revoke(&format!("u{i}"), None, 400).unwrap();
        }
        assert_eq!(s.revoke("one-more", None, 400), Err(RevokeError::Full));
        // Replacing one held is still allowed when full.
        assert!(s.revoke("u7", Some(500), 400).is_ok());
        // Once some lapse there is room again.
        assert!(s.revoke("one-more", None, 500).is_ok());
    }
}
