//! Lockout and failed-login accounting (issue #17), protocol-blind.
//!
//! Two kinds of lock. `[access] lockout_after` consecutive failed logins of one configured user
//! from one address lock that user *at that address* for `lockout_for`: keyed by both so that a
//! stranger who fails five times under an approver's name locks them out of nowhere else. An
//! operator's `portcullis lock` locks a user everywhere until `unlock`. A success resets the
//! count; an automatic lock never cuts live sessions (an operator's lock revokes the user's
//! grants, which does).
//!
//! Every failure also counts against its source address in memory: after the first few in a
//! minute, an address's failures are answered later and later (so guessing across many names
//! is slow too), and audited as one `source.refused` event per address per minute instead of
//! one each, so a flood costs the store a bounded number of writes. Names that are not
//! configured users never get a row in the store.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::{Access, AccessError};
use crate::audit::{Actor, AuditEvent};
use crate::store::{StoreError, UserLock};

/// Login names kept per address and minute for the folded event.
pub const MAX_NAMES_KEPT: usize = 20;
/// Failures from one address audited one by one in a minute; the rest are folded.
const AUDITED_PER_WINDOW: u32 = 5;
/// The window failures from one address are folded over.
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past this the oldest window is flushed early.
const MAX_SOURCES: usize = 4096;
/// Failures from one address answered at once before the delay starts growing.
const FREE_FAILURES: u32 = 3;
/// The longest delay before a refusal.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Addresses one user fails from that raise the `user.targeted` alert.
const TARGETED_AFTER: u32 = 3;

/// How a login stands before its credential counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    /// Locked at this address after too many failures, until then.
    AtSource { until: OffsetDateTime },
    /// Locked everywhere by an operator.
    Everywhere { by: String, reason: String },
}

/// Why a connection was refused before any login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// Its address is not in `[access] ip_allow`.
    AddressNotAllowed,
    /// A PostgreSQL CancelRequest whose key no live session holds.
    UnknownCancelKey,
}

impl ConnectionRefusal {
    /// As audited (and in the names of a folded `source.refused`).
    pub fn label(self) -> &'static str {
        match self {
            ConnectionRefusal::AddressNotAllowed => "(address not in ip_allow)",
            ConnectionRefusal::UnknownCancelKey => "(cancel with an unknown key)",
        }
    }
}

/// What a failure counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A wrong or missing credential for a configured user: counts towards the lock.
    Credential,
    /// Anything else (unknown name, address not allowed, already locked): counts against the
    /// address only.
    Other,
}

/// Failures from one address in the current window.
#[derive(Debug)]
struct SourceWindow {
    started: OffsetDateTime,
    failures: u32,
    names: BTreeSet<String>,
    /// When the next refusal from this address may be answered (real time, not the clock:
    /// it paces connections).
    not_before: Instant,
}

/// Folded `source.refused` events written a minute; past it, addresses are counted into one
/// `sources.refused` (issue #17 review: an attacker rotating addresses cost an audit row and
/// a Slack alert per address).
const MAX_SOURCE_EVENTS: u32 = 20;

/// Failures by source address, in memory.
#[derive(Debug, Default)]
pub struct Sources {
    windows: HashMap<String, SourceWindow>,
    budget: Budget,
    /// When the store's stale failure counts were last pruned.
    pruned: Option<OffsetDateTime>,
}

/// The folded events of the current minute.
#[derive(Debug, Default)]
struct Budget {
    started: Option<OffsetDateTime>,
    written: u32,
    /// Addresses and their failures past the budget, for the summary.
    held_addresses: u32,
    held_failures: u32,
}

impl Budget {
    /// Passes a folded event on while the minute's budget lasts, and counts it otherwise.
    fn admit(&mut self, event: AuditEvent, now: OffsetDateTime, out: &mut Vec<AuditEvent>) {
        self.roll(now, out);
        if self.written < MAX_SOURCE_EVENTS {
            self.written += 1;
            out.push(event);
        } else if let AuditEvent::SourceRefused { failures, .. } = event {
            self.held_addresses += 1;
            self.held_failures = self.held_failures.saturating_add(failures);
        }
    }

    /// At a new minute (or with `all`), the summary of what the last one held back.
    fn roll(&mut self, now: OffsetDateTime, out: &mut Vec<AuditEvent>) {
        let started = *self.started.get_or_insert(now);
        if now - started < WINDOW {
            return;
        }
        self.flush(out);
        *self = Budget {
            started: Some(now),
            ..Budget::default()
        };
    }

    fn flush(&mut self, out: &mut Vec<AuditEvent>) {
        if self.held_addresses > 0 {
            out.push(AuditEvent::SourcesRefused {
                addresses: self.held_addresses,
                failures: self.held_failures,
            });
            self.held_addresses = 0;
            self.held_failures = 0;
        }
    }
}

impl Sources {
    /// Counts a failure from `source` and returns whether it is audited on its own, and how
    /// long to wait before answering it. `expired` receives windows that ended.
    fn count(
        &mut self,
        source: &str,
        user: &str,
        now: OffsetDateTime,
        expired: &mut Vec<AuditEvent>,
    ) -> (bool, Duration) {
        if let Some(window) = self.windows.get(source)
            && now - window.started >= WINDOW
            && let Some(window) = self.windows.remove(source)
            && let Some(event) = folded(source, window)
        {
            self.budget.admit(event, now, expired);
        }
        if !self.windows.contains_key(source) && self.windows.len() >= MAX_SOURCES {
            let oldest = self
                .windows
                .iter()
                .min_by_key(|(_, window)| window.started)
                .map(|(source, _)| source.clone());
            if let Some(oldest) = oldest
                && let Some(window) = self.windows.remove(&oldest)
                && let Some(event) = folded(&oldest, window)
            {
                self.budget.admit(event, now, expired);
            }
        }
        let window = self
            .windows
            .entry(source.to_string())
            .or_insert_with(|| SourceWindow {
                started: now,
                failures: 0,
                names: BTreeSet::new(),
                not_before: Instant::now(),
            });
        window.failures += 1;
        if window.names.len() < MAX_NAMES_KEPT {
            window.names.insert(user.to_string());
        }
        let delay = delay_after(window.failures);
        // Refusals from one address are answered one after another: parallel connections
        // queue behind each other rather than each getting the short delay.
        // Capped: one address (an office behind NAT) never waits more than `MAX_DELAY`.
        let now_instant = Instant::now();
        let start = window.not_before.max(now_instant);
        window.not_before = (start + delay).min(now_instant + MAX_DELAY);
        let wait = window.not_before.saturating_duration_since(now_instant);
        (window.failures <= AUDITED_PER_WINDOW, wait)
    }

    /// Takes the windows that ended by `now` (all of them with `all`).
    fn take_ended(&mut self, now: OffsetDateTime, all: bool) -> Vec<AuditEvent> {
        let ended: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, window)| all || now - window.started >= WINDOW)
            .map(|(source, _)| source.clone())
            .collect();
        let mut events = Vec::new();
        for source in ended {
            if let Some(window) = self.windows.remove(&source)
                && let Some(event) = folded(&source, window)
            {
                self.budget.admit(event, now, &mut events);
            }
        }
        self.budget.roll(now, &mut events);
        if all {
            self.budget.flush(&mut events);
        }
        events
    }

    /// Whether a minute has passed since the store's stale counts were last pruned.
    fn prune_due(&mut self, now: OffsetDateTime) -> bool {
        let due = self.pruned.is_none_or(|pruned| now - pruned >= WINDOW);
        if due {
            self.pruned = Some(now);
        }
        due
    }
}

/// The one event a window of failures becomes: every window with a failure is one alert.
fn folded(source: &str, window: SourceWindow) -> Option<AuditEvent> {
    (window.failures > 0).then(|| AuditEvent::SourceRefused {
        source: source.to_string(),
        failures: window.failures,
        names: window.names.into_iter().collect(),
    })
}

/// The delay before answering the `failures`-th failure of a window: none for the first few,
/// then doubling from a quarter second up to `MAX_DELAY`.
pub fn delay_after(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    (Duration::from_millis(250) * 2u32.pow(doublings)).min(MAX_DELAY)
}

impl Access {
    /// Whether `user` is locked, everywhere or at `source`, now.
    pub fn lock_of(&self, user: &str, source: &str) -> Result<Option<Lock>, AccessError> {
        let now = self.now();
        let lock = self.store.read(|tx| {
            if let Some(lock) = tx.user_lock(user)? {
                return Ok(Some(Lock::Everywhere {
                    by: lock.locked_by,
                    reason: lock.reason,
                }));
            }
            Ok(tx
                .locked_at_source(user, source, now)?
                .map(|until| Lock::AtSource { until }))
        })?;
        Ok(lock)
    }

    /// Audits and counts a failed login of `user` from `source`, and returns how long to wait
    /// before answering it. A configured user's credential failure counts towards the lock at
    /// that address and locks them there at `lockout_after`.
    pub fn login_failed(
        &self,
        user: &str,
        source: &str,
        protocol: &'static str,
        why: &str,
        failure: Failure,
    ) -> Result<Duration, AccessError> {
        let now = self.now();
        let mut events = Vec::new();
        let (individually, delay) =
            self.sources
                .lock()
                .map_err(|_| poisoned())?
                .count(source, user, now, &mut events);
        let counted = failure == Failure::Credential && self.config.user(user).is_some();
        if !counted && !individually && events.is_empty() {
            return Ok(delay);
        }
        let access = &self.config.access;
        self.store.write(|tx| {
            let mut failures = 0;
            if counted {
                failures = tx.record_failed_auth(user, source, now)?;
                // `>=`: a count kept from before `lockout_after` was lowered locks too.
                if failures >= access.lockout_after {
                    let until = now + access.lockout_for;
                    tx.lock_at_source(user, source, until)?;
                    events.push(AuditEvent::UserLocked {
                        user: user.to_string(),
                        by: Actor::System,
                        source: Some(source.to_string()),
                        until: Some(until),
                        reason: format!("{failures} failed logins in a row from {source}"),
                    });
                }
                if failures == 1 && tx.failing_sources(user)? == TARGETED_AFTER {
                    events.push(AuditEvent::UserTargeted {
                        user: user.to_string(),
                        sources: TARGETED_AFTER,
                    });
                }
            }
            if individually {
                events.push(AuditEvent::AuthFailed {
                    user: user.to_string(),
                    source: source.to_string(),
                    protocol,
                    why: why.to_string(),
                    failures,
                });
            }
            tx.append_audits(&events, now)?;
            Ok(())
        })?;
        Ok(delay)
    }

    /// A connection refused before any login (its address is not in `[access] ip_allow`, a
    /// cancel request with a key nobody holds): audited the way failed logins are, folded per
    /// address and minute. Returns how long to wait before answering it.
    pub fn connection_refused(
        &self,
        source: &str,
        protocol: &'static str,
        why: ConnectionRefusal,
    ) -> Result<Duration, AccessError> {
        let now = self.now();
        let mut events = Vec::new();
        let (individually, delay) = self.sources.lock().map_err(|_| poisoned())?.count(
            source,
            why.label(),
            now,
            &mut events,
        );
        if individually {
            events.push(AuditEvent::ConnectionRefused {
                source: source.to_string(),
                protocol,
                why: why.label(),
            });
        }
        if !events.is_empty() {
            self.store
                .write(|tx| tx.append_audits(&events, now).map(|_| ()))?;
        }
        Ok(delay)
    }

    /// Audits the folded failures of every address whose minute ended (of all, at shutdown).
    pub fn flush_failures(&self, all: bool) -> Result<(), AccessError> {
        let now = self.now();
        let (events, prune) = {
            let mut sources = self.sources.lock().map_err(|_| poisoned())?;
            (sources.take_ended(now, all), sources.prune_due(now))
        };
        if !events.is_empty() {
            self.store
                .write(|tx| tx.append_audits(&events, now).map(|_| ()))?;
        }
        if prune {
            // Failure counts with no failure for `lockout_for` and no lock in force are
            // forgotten: the table holds only what can still lock someone.
            let before = now - self.config.access.lockout_for;
            self.store.write(|tx| tx.prune_failed_auth(before, now))?;
        }
        Ok(())
    }

    /// Locks `user` everywhere (an operator's `portcullis lock`): refused at every login and
    /// every decision, and their active grants revoked, which ends their live sessions.
    /// Returns the grants revoked.
    pub fn lock_user(
        &self,
        by: &Actor,
        user: &str,
        reason: &str,
    ) -> Result<Vec<String>, AccessError> {
        if self.config.user(user).is_none() {
            return Err(AccessError::UnknownUser(user.to_string()));
        }
        let reason = super::check_reason(reason)?;
        let now = self.now();
        let locked = self.store.write(|tx| {
            let fresh = tx.lock_user(&UserLock {
                user: user.to_string(),
                locked_at: now,
                locked_by: by.label(),
                reason: reason.clone(),
            })?;
            if fresh {
                tx.append_audit(
                    &AuditEvent::UserLocked {
                        user: user.to_string(),
                        by: by.clone(),
                        source: None,
                        until: None,
                        reason: reason.clone(),
                    },
                    now,
                )?;
            }
            Ok(fresh)
        })?;
        if !locked {
            return Err(AccessError::AlreadyLocked(user.to_string()));
        }
        let grants = self.grants(true, None)?;
        let mut revoked = Vec::new();
        for grant in grants.into_iter().filter(|grant| grant.user == user) {
            match self.revoke(by, &grant.id, &format!("user {user} locked: {reason}")) {
                Ok(grant) => revoked.push(grant.id),
                // Ended meanwhile: nothing left to cut.
                Err(AccessError::GrantNotActive { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(revoked)
    }

    /// Lifts every lock of `user` (the operator's and those at single addresses).
    pub fn unlock_user(&self, by: &Actor, user: &str) -> Result<(), AccessError> {
        let now = self.now();
        let unlocked = self.store.write(|tx| {
            let any = tx.unlock_user(user, now)?;
            if any {
                tx.append_audit(
                    &AuditEvent::UserUnlocked {
                        user: user.to_string(),
                        by: by.clone(),
                    },
                    now,
                )?;
            }
            Ok(any)
        })?;
        if unlocked {
            Ok(())
        } else {
            Err(AccessError::NotLocked(user.to_string()))
        }
    }

    /// Refuses a decision (request, approve, deny, cancel, revoke) by a user an operator
    /// locked, inside the decision's transaction.
    pub(super) fn ensure_unlocked(
        &self,
        tx: &crate::store::Tx<'_>,
        user: &str,
    ) -> Result<Result<(), AccessError>, StoreError> {
        Ok(match tx.user_lock(user)? {
            Some(_) => Err(AccessError::Locked(user.to_string())),
            None => Ok(()),
        })
    }
}

fn poisoned() -> AccessError {
    AccessError::Store(StoreError::Corrupt {
        column: "failed logins",
        value: "a lock was poisoned".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_after_the_free_failures_up_to_its_cap() {
        let delays: Vec<u128> = (1..=10).map(|n| delay_after(n).as_millis()).collect();
        assert_eq!(delays, [0, 0, 0, 250, 500, 1000, 2000, 4000, 8000, 8000]);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_flood_from_one_address_is_audited_a_few_times_and_folded() {
        let mut sources = Sources::default();
        let start = OffsetDateTime::UNIX_EPOCH;
        let mut expired = Vec::new();
        let mut individually = 0;
        for attempt in 0..1000 {
            let name = format!("name{attempt}");
            if sources.count("192.0.2.7", &name, start, &mut expired).0 {
                individually += 1;
            }
        }
        assert_eq!(individually, AUDITED_PER_WINDOW);
        assert!(expired.is_empty());
        assert!(
            sources
                .take_ended(start + Duration::from_secs(59), false)
                .is_empty()
        );
        let folded = sources.take_ended(start + WINDOW, false);
        match &folded[..] {
            [
                AuditEvent::SourceRefused {
                    failures, names, ..
                },
            ] => {
                assert_eq!(*failures, 1000);
                assert_eq!(names.len(), MAX_NAMES_KEPT);
            }
            other => panic!("{other:?}"),
        }
        // Folded events are budgeted per minute; the rest become one summary.
        let mut sources = Sources::default();
        let mut events = Vec::new();
        for index in 0..(MAX_SOURCE_EVENTS + 30) {
            sources.count(&format!("198.51.100.{index}"), "x", start, &mut events);
        }
        let ended = sources.take_ended(start + WINDOW, false);
        let folded = ended
            .iter()
            .filter(|event| matches!(event, AuditEvent::SourceRefused { .. }))
            .count();
        assert_eq!(folded as u32, MAX_SOURCE_EVENTS);
        let later = sources.take_ended(start + WINDOW * 2, false);
        assert!(
            matches!(
                later.as_slice(),
                [AuditEvent::SourcesRefused {
                    addresses: 30,
                    failures: 30
                }]
            ),
            "{later:?}"
        );
        // Addresses tracked at once are bounded.
        let mut expired = Vec::new();
        for index in 0..(MAX_SOURCES + 10) {
            sources.count(&format!("source{index}"), "x", start, &mut expired);
        }
        assert_eq!(sources.windows.len(), MAX_SOURCES);
        assert_eq!(expired.len(), 10);
    }
}
