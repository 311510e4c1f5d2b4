//! Short, unique identifiers that are safe to type and read aloud: `r-7f3k2qmx` for requests,
//! `g-...` for grants, `s-...` for sessions, `e-...` for audit events.
//!
//! The alphabet leaves out `0 1 i l o` so an id read from a Slack message is typed right. Request,
//! grant and session ids are checked against the store for collisions when created (see
//! `store::Tx::fresh_id`), so eight characters (about 40 bits) are enough.

use rand::Rng;

const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Request,
    Grant,
    Session,
    AuditEvent,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Request => "r-",
            IdKind::Grant => "g-",
            IdKind::Session => "s-",
            IdKind::AuditEvent => "e-",
        }
    }

    fn length(self) -> usize {
        match self {
            // Audit ids are never typed and not checked for collisions: longer.
            IdKind::AuditEvent => 16,
            _ => 8,
        }
    }
}

/// A new random id of `kind`.
pub fn new_id(kind: IdKind) -> String {
    let mut rng = rand::thread_rng();
    let mut id = String::with_capacity(2 + kind.length());
    id.push_str(kind.prefix());
    for _ in 0..kind.length() {
        id.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    id
}

/// True for strings shaped like an id of `kind`; input from users is checked before it reaches SQL.
pub fn is_id(kind: IdKind, text: &str) -> bool {
    text.strip_prefix(kind.prefix()).is_some_and(|rest| {
        rest.len() == kind.length() && rest.bytes().all(|byte| ALPHABET.contains(&byte))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_alphabet() {
        for kind in [
            IdKind::Request,
            IdKind::Grant,
            IdKind::Session,
            IdKind::AuditEvent,
        ] {
            let id = new_id(kind);
            assert!(is_id(kind, &id), "{id}");
        }
        assert!(!is_id(IdKind::Request, "g-23456789"));
        assert!(!is_id(IdKind::Request, "r-2345678"));
        assert!(!is_id(IdKind::Request, "r-2345678l"));
    }
}
