//! Revoked credentials (issue 14): the set the shell pushes into every
//! core ([`super::Server::set_revocations`]). A name is either a full REST
//! username (`1767225600:alice`: that one credential) or a bare user
//! (`alice`: every REST username whose user part is `alice`, and the
//! static user `alice`). Each may lapse at a Unix time; whether one
//! applies is decided with the wall time the caller passes in.

use std::collections::HashMap;

use super::auth::parse_rest_username;

/// A set of revocations; replaced as a whole when the shell's store
/// changes. Lookup is one hash per name (two for a REST username).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Name → the Unix time it lapses at (`None`: until lifted).
    names: HashMap<String, Option<u64>>,
}

impl Revocations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Revoke `name` until `until` (Unix seconds; `None`: until lifted).
    pub fn insert(&mut self, name: impl Into<String>, until: Option<u64>) {
        self.names.insert(name.into(), until);
    }

    /// Entries held (lapsed ones included until the shell prunes them).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `username` is revoked at Unix time `wall`: its full name is,
    /// or (for a REST username) its user part is. A revocation stops
    /// applying once `wall` reaches its `until`.
    pub fn revokes(&self, username: &str, wall: u64) -> bool {
        if self.names.is_empty() {
            return false;
        }
        let active = |n: &str| {
            self.names
                .get(n)
                .is_some_and(|until| until.is_none_or(|t| wall < t))
        };
        active(username) || parse_rest_username(username).is_some_and(|(_, user)| active(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_name_revokes_that_credential_only() {
        let mut r = Revocations::new();
        r.insert("1767225600:alice", None);
        assert!(r.revokes("1767225600:alice", 100));
        assert!(!r.revokes("1767225601:alice", 100));
        assert!(!r.revokes("alice", 100));
    }

    #[test]
    fn a_bare_user_revokes_every_credential_and_the_static_user() {
        let mut r = Revocations::new();
        r.insert("alice", None);
        assert!(r.revokes("alice", 100));
        assert!(r.revokes("1767225600:alice", 100));
        assert!(r.revokes("99:alice", 100));
        assert!(!r.revokes("1767225600:alicex", 100));
        assert!(!r.revokes("bob", 100));
        assert!(!r.revokes("x:alice", 100), "not a REST username");
    }

    #[test]
    fn a_revocation_lapses_at_until() {
        let mut r = Revocations::new();
        r.insert("alice", Some(200));
        assert!(r.revokes("5000:alice", 199));
        assert!(!r.revokes("5000:alice", 200));
        assert!(!r.revokes("alice", 201));
    }
}
