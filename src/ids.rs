//! Short, unique identifiers that are safe to type and read aloud: `r-7f3k2qmx` for requests,
//! `g-...` for grants, `s-...` for sessions, `e-...` for audit events.
//!
//! The alphabet leaves out `0 1 i l o` so an id read from a Slack message is typed right. Request,
//! grant and session ids are checked against the store for collisions when created (see
//! `store::Tx::fresh_id`), so eight characters (about 40 bits) are enough.
//!
//! Audit event ids are never typed and never checked: 9 characters of the creation time in
//! milliseconds, then 15 random ones (74 bits). The alphabet is in ASCII order, so they sort by
//! time, and a new one lands at the right edge of the `audit_events.id` index. Random ids landed
//! anywhere in it: under `pgbench -S` (20,000 `pg.query` events a second) each commit rewrote
//! a few thousand index pages, and SQLite's WAL writes and checkpoints were a fifth of the
//! bastion's time (issue #4).

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
            IdKind::AuditEvent => TIME_CHARACTERS + 15,
            _ => 8,
        }
    }
}

/// Characters of the time prefix of an audit id: 31^9 milliseconds is about 800 years.
const TIME_CHARACTERS: usize = 9;

/// A new id of `kind`: random, or for audit events time-ordered then random.
///
/// The random characters are base-31 digits of random `u64`s, up to 10 to a draw: two draws
/// for an audit id, not one a character, and no 128-bit division (a database session makes an
/// audit id a statement).
pub fn new_id(kind: IdKind) -> String {
    let mut id = String::with_capacity(2 + kind.length());
    id.push_str(kind.prefix());
    let mut random = kind.length();
    if kind == IdKind::AuditEvent {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        push_base31(&mut id, millis, TIME_CHARACTERS);
        random -= TIME_CHARACTERS;
    }
    let mut rng = rand::thread_rng();
    while random > 0 {
        let digits = random.min(DIGITS_PER_DRAW);
        push_base31(&mut id, rng.r#gen::<u64>(), digits);
        random -= digits;
    }
    id
}

/// Base-31 digits a random `u64` fills evenly (2^64 is 22,500 times 31^10: no digit's odds
/// move by more than one part in 20,000).
const DIGITS_PER_DRAW: usize = 10;

/// The last `width` base-31 digits of `value` in the alphabet, most significant first (so ids
/// sort by it).
fn push_base31(id: &mut String, value: u64, width: usize) {
    let base = ALPHABET.len() as u64;
    let mut digits = [ALPHABET[0]; 16];
    let digits = &mut digits[..width.min(16)];
    let mut rest = value;
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(rest % base) as usize];
        rest /= base;
    }
    id.extend(digits.iter().map(|digit| char::from(*digit)));
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
        // One random draw an id still fills every random character.
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| new_id(IdKind::Session)).collect();
        assert_eq!(ids.len(), 1000);
        let last = |id: &String| id.chars().last();
        assert!(
            ids.iter()
                .map(last)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 20
        );
    }

    #[test]
    fn audit_ids_sort_by_time() {
        let first = new_id(IdKind::AuditEvent);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id(IdKind::AuditEvent);
        assert!(first < second, "{first} {second}");
        assert_eq!(first.len(), 2 + 24);
        let mut encoded = String::new();
        push_base31(&mut encoded, 31 * 31 + 2, 4);
        assert_eq!(encoded, "2324");
    }
}
