//! The lifecycle rules as tables of cases, against a real SQLite file and a manual clock.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;

use super::model::{GrantState, RequestState};
use super::{Access, AccessError, Approved, Viewer};
use crate::audit::{Actor, ChainVerifier};
use crate::clock::ManualClock;
use crate::config::Config;
use crate::store::{RequestFilter, Store};

const CONFIG: &str = r#"
[server]
state_dir = "state"
recordings_dir = "recordings"

[access]
default_duration = "1h"
max_duration = "8h"
pending_request_ttl = "30m"

[roles]
engineer = "requests"
leader = "approves"

[[users]]
name = "alice"
roles = ["engineer"]

[[users]]
name = "bob"
roles = ["leader"]

[[users]]
name = "carol"
roles = ["leader"]

[[users]]
name = "dave"
roles = ["engineer", "leader"]

[[users]]
name = "erin"

[[targets]]
name = "web-1"
kind = "ssh"
address = "10.0.1.5:22"
login = "deploy"
host_key = "accept-first"
requestable_by = ["engineer"]
approvers = ["leader"]
max_duration = "2h"

[[targets]]
name = "prod-db"
kind = "postgres"
address = "10.0.2.10:5432"
database = "app"
login = "app_rw"
tls = "disable"
requestable_by = ["engineer"]
approvers = ["leader"]
approvals_required = 2
"#;

const START: OffsetDateTime = datetime!(2026-11-22 12:00:00 UTC);

struct Fixture {
    access: Access,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn config() -> Config {
    match Config::parse(CONFIG, Path::new("test.toml"), Path::new("/tmp")) {
        Ok(config) => config,
        Err(error) => panic!("test config is invalid: {error}"),
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
    let store = Store::open(&dir.path().join("state.db")).unwrap_or_else(|error| panic!("{error}"));
    let clock = Arc::new(ManualClock::new(START));
    let access = Access::new(Arc::new(config()), store, clock.clone());
    Fixture {
        access,
        clock,
        _dir: dir,
    }
}

fn hours(count: u64) -> Duration {
    Duration::from_secs(count * 3_600)
}

fn minutes(count: u64) -> Duration {
    Duration::from_secs(count * 60)
}

impl Fixture {
    fn request(&self, user: &str, target: &str) -> String {
        match self
            .access
            .request(user, target, Some(hours(1)), "INC-1 fix the thing")
        {
            Ok(request) => request.id,
            Err(error) => panic!("request by {user} for {target} refused: {error}"),
        }
    }

    fn grant(&self, user: &str, target: &str, approvers: &[&str]) -> String {
        let id = self.request(user, target);
        let mut grant_id = None;
        for approver in approvers {
            match self.access.approve(approver, &id) {
                Ok(Approved::Granted { grant, .. }) => grant_id = Some(grant.id),
                Ok(Approved::Waiting { .. }) => {}
                Err(error) => panic!("approval by {approver} refused: {error}"),
            }
        }
        grant_id.unwrap_or_else(|| panic!("no grant after approvals by {approvers:?}"))
    }

    fn event_types(&self) -> Vec<String> {
        self.access
            .store()
            .read(|tx| tx.audit_tail(1_000))
            .unwrap_or_else(|error| panic!("{error}"))
            .into_iter()
            .map(|record| record.event_type)
            .collect()
    }

    fn verify_chain(&self) -> i64 {
        let mut verifier = ChainVerifier::default();
        let result = self
            .access
            .store()
            .read(|tx| tx.audit_scan(|record| verifier.check(&record)))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(result, Ok(()));
        verifier.verified()
    }
}

#[test]
fn requests_are_refused_with_a_reason_and_an_audit_event() {
    type Check = fn(&AccessError) -> bool;
    let cases: &[(&str, &str, Option<Duration>, &str, Check)] = &[
        ("alice", "nowhere", None, "x", |e| {
            matches!(e, AccessError::UnknownTarget(_))
        }),
        ("mallory", "web-1", None, "x", |e| {
            matches!(e, AccessError::UnknownUser(_))
        }),
        ("bob", "web-1", None, "x", |e| {
            matches!(e, AccessError::NotRequestable { .. })
        }),
        ("erin", "web-1", None, "x", |e| {
            matches!(e, AccessError::NotRequestable { .. })
        }),
        ("alice", "web-1", None, "   ", |e| {
            matches!(e, AccessError::EmptyReason)
        }),
        ("alice", "web-1", None, "a\u{1b}[2J", |e| {
            matches!(e, AccessError::ReasonControlCharacters)
        }),
        // web-1 caps at 2h, prod-db at the global 8h; 1 minute is the floor.
        ("alice", "web-1", Some(hours(2) + minutes(1)), "x", |e| {
            matches!(e, AccessError::TooLong { .. })
        }),
        ("alice", "prod-db", Some(hours(9)), "x", |e| {
            matches!(e, AccessError::TooLong { .. })
        }),
        ("alice", "web-1", Some(Duration::from_secs(59)), "x", |e| {
            matches!(e, AccessError::TooShort(_))
        }),
    ];
    let fixture = fixture();
    for (user, target, duration, reason, check) in cases {
        let result = fixture.access.request(user, target, *duration, reason);
        match result {
            Err(error) => assert!(check(&error), "{user} {target}: unexpected refusal {error}"),
            Ok(request) => panic!(
                "{user} {target} {duration:?} was accepted as {}",
                request.id
            ),
        }
    }
    let events = fixture.event_types();
    assert_eq!(events.len(), cases.len());
    assert!(events.iter().all(|kind| kind == "request_refused"));
    let requests = fixture.access.requests(RequestFilter::default());
    assert!(requests.is_ok_and(|requests| requests.is_empty()));
}

#[test]
fn durations_at_the_caps_are_accepted() {
    let fixture = fixture();
    for (target, duration) in [
        ("web-1", hours(2)),
        ("web-1", minutes(1)),
        ("prod-db", hours(8)),
    ] {
        let result = fixture
            .access
            .request("alice", target, Some(duration), "INC-2");
        assert!(result.is_ok(), "{target} {duration:?}: {result:?}");
    }
    // No duration: the default, capped by the target.
    let request = fixture.access.request("alice", "web-1", None, "INC-2");
    assert_eq!(request.map(|request| request.duration).ok(), Some(hours(1)));
}

#[test]
fn decisions_by_the_wrong_people_are_refused_and_change_nothing() {
    type Check = fn(&AccessError) -> bool;
    let cases: &[(&str, &str, Check)] = &[
        // (requester, decider, expected refusal); web-1 needs one leader.
        ("dave", "dave", |e| {
            matches!(e, AccessError::SelfApproval(_))
        }),
        ("alice", "alice", |e| {
            matches!(e, AccessError::SelfApproval(_))
        }),
        ("alice", "erin", |e| {
            matches!(e, AccessError::NotApprover { .. })
        }),
        ("alice", "mallory", |e| {
            matches!(e, AccessError::UnknownUser(_))
        }),
    ];
    let fixture = fixture();
    for (requester, decider, check) in cases {
        let id = fixture.request(requester, "web-1");
        let approve = fixture.access.approve(decider, &id);
        assert!(approve.as_ref().is_err_and(check), "approve: {approve:?}");
        let deny = fixture.access.deny(decider, &id, "no");
        assert!(deny.as_ref().is_err_and(check), "deny: {deny:?}");
        let request = fixture.access.request_by_id(&id).ok().flatten();
        let request = request.unwrap_or_else(|| panic!("{id} vanished"));
        assert_eq!(request.state, RequestState::Pending);
        assert!(request.approvals.is_empty());
    }
    let refused = fixture
        .event_types()
        .iter()
        .filter(|kind| *kind == "decision_refused")
        .count();
    assert_eq!(refused, cases.len() * 2);
    // And a real approver still can.
    let id = fixture.request("dave", "web-1");
    assert!(matches!(
        fixture.access.approve("bob", &id),
        Ok(Approved::Granted { .. })
    ));
}

#[test]
fn two_approver_policy_needs_two_distinct_approvers() {
    let fixture = fixture();
    let id = fixture.request("alice", "prod-db");
    match fixture.access.approve("bob", &id) {
        Ok(Approved::Waiting {
            approvals,
            required,
            request,
        }) => {
            assert_eq!((approvals, required), (1, 2));
            assert_eq!(request.state, RequestState::Pending);
            assert_eq!(request.approvals.len(), 1);
        }
        other => panic!("first approval: {other:?}"),
    }
    assert!(matches!(
        fixture.access.approve("bob", &id),
        Err(AccessError::AlreadyApproved { .. })
    ));
    assert!(matches!(
        fixture.access.approve("alice", &id),
        Err(AccessError::SelfApproval(_))
    ));
    fixture.clock.advance(minutes(5));
    match fixture.access.approve("carol", &id) {
        Ok(Approved::Granted { request, grant }) => {
            assert_eq!(request.state, RequestState::Approved);
            assert_eq!(request.grant_id.as_deref(), Some(grant.id.as_str()));
            assert_eq!(grant.user, "alice");
            // Active from the final approval, for the requested hour.
            assert_eq!(grant.starts_at, START + minutes(5));
            assert_eq!(grant.ends_at, START + minutes(5) + hours(1));
        }
        other => panic!("second approval: {other:?}"),
    }
    assert!(
        fixture
            .access
            .active_grant("alice", "prod-db")
            .is_ok_and(|grant| grant.is_some())
    );
    assert!(
        fixture
            .access
            .active_grant("alice", "web-1")
            .is_ok_and(|grant| grant.is_none())
    );
    let events = fixture.event_types();
    let lifecycle: Vec<&str> = events
        .iter()
        .map(String::as_str)
        .filter(|kind| *kind != "decision_refused")
        .collect();
    assert_eq!(lifecycle, ["requested", "approved", "approved", "granted"]);
    fixture.verify_chain();
}

#[test]
fn a_deny_by_any_approver_ends_the_request() {
    let fixture = fixture();
    let id = fixture.request("alice", "prod-db");
    assert!(fixture.access.approve("bob", &id).is_ok());
    assert!(matches!(
        fixture.access.deny("carol", &id, ""),
        Err(AccessError::EmptyReason)
    ));
    let denied = fixture.access.deny("carol", &id, "not during the freeze");
    let denied = denied.unwrap_or_else(|error| panic!("deny refused: {error}"));
    assert_eq!(denied.state, RequestState::Denied);
    assert_eq!(denied.decided_by.as_deref(), Some("carol"));
    assert_eq!(
        denied.decision_reason.as_deref(),
        Some("not during the freeze")
    );
    assert!(denied.grant_id.is_none());
    assert!(
        fixture
            .access
            .active_grant("alice", "prod-db")
            .is_ok_and(|grant| grant.is_none())
    );
}

#[test]
fn decisions_on_requests_that_are_no_longer_pending_name_the_state() {
    let fixture = fixture();
    let approved = fixture.request("alice", "web-1");
    assert!(fixture.access.approve("bob", &approved).is_ok());
    let denied = fixture.request("alice", "web-1");
    assert!(fixture.access.deny("bob", &denied, "no").is_ok());
    let cancelled = fixture.request("alice", "web-1");
    assert!(fixture.access.cancel("alice", &cancelled).is_ok());

    for (id, state) in [
        (&approved, RequestState::Approved),
        (&denied, RequestState::Denied),
        (&cancelled, RequestState::Cancelled),
    ] {
        for result in [
            fixture.access.approve("carol", id).map(|_| ()),
            fixture.access.deny("carol", id, "late").map(|_| ()),
            fixture.access.cancel("alice", id).map(|_| ()),
        ] {
            match result {
                Err(error @ AccessError::NotPending { .. }) => {
                    assert!(
                        error.to_string().contains(&format!("is {state}")),
                        "{error}"
                    );
                }
                other => panic!("{id} ({state}): {other:?}"),
            }
        }
    }
    assert!(matches!(
        fixture.access.approve("bob", "r-nosuchid"),
        Err(AccessError::UnknownRequest(_))
    ));
}

#[test]
fn only_the_requester_cancels() {
    let fixture = fixture();
    let id = fixture.request("alice", "web-1");
    assert!(matches!(
        fixture.access.cancel("bob", &id),
        Err(AccessError::NotRequester { .. })
    ));
    let cancelled = fixture.access.cancel("alice", &id);
    assert_eq!(
        cancelled.map(|request| request.state).ok(),
        Some(RequestState::Cancelled)
    );
    assert!(fixture.event_types().contains(&"cancelled".to_string()));
}

#[test]
fn pending_requests_expire_at_their_ttl_to_the_second() {
    // (seconds after creation, approval succeeds)
    let cases = [(30 * 60 - 1, true), (30 * 60, false), (30 * 60 + 1, false)];
    for (after, accepted) in cases {
        let fixture = fixture();
        let id = fixture.request("alice", "web-1");
        fixture.clock.advance(Duration::from_secs(after));
        let result = fixture.access.approve("bob", &id);
        if accepted {
            assert!(result.is_ok(), "+{after}s: {result:?}");
        } else {
            assert!(
                matches!(
                    result,
                    Err(AccessError::NotPending {
                        state: RequestState::Expired,
                        ..
                    })
                ),
                "+{after}s: {result:?}"
            );
            assert!(fixture.event_types().contains(&"expired".to_string()));
        }
    }
}

#[test]
fn the_sweep_expires_pending_requests_and_grants_on_time() {
    let fixture = fixture();
    let waiting = fixture.request("alice", "prod-db");
    let grant = fixture.grant("alice", "web-1", &["bob"]);
    let mut ended = fixture.access.subscribe_ended();

    // One second before the grant's end (1h) and after the request's ttl (30m).
    fixture.clock.advance(hours(1) - Duration::from_secs(1));
    let sweep = fixture
        .access
        .sweep()
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(sweep.expired_requests.len(), 1);
    assert_eq!(sweep.expired_requests[0].id, waiting);
    assert!(sweep.expired_grants.is_empty());
    assert!(
        fixture
            .access
            .active_grant("alice", "web-1")
            .is_ok_and(|g| g.is_some())
    );

    // At the end: no longer active, even before the sweep marks it.
    fixture.clock.advance(Duration::from_secs(1));
    assert!(
        fixture
            .access
            .active_grant("alice", "web-1")
            .is_ok_and(|g| g.is_none())
    );
    let sweep = fixture
        .access
        .sweep()
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(sweep.expired_grants.len(), 1);
    assert_eq!(sweep.expired_grants[0].state, GrantState::Expired);
    let notice = ended
        .try_recv()
        .unwrap_or_else(|error| panic!("no grant-ended notice: {error}"));
    assert_eq!(notice.grant_id, grant);
    assert_eq!(notice.reason, GrantState::Expired);

    // A second sweep finds nothing and announces nothing twice.
    let sweep = fixture
        .access
        .sweep()
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(sweep, super::Sweep::default());
    assert!(fixture.access.announce_ended_since(START).is_ok());
    assert!(ended.try_recv().is_err());
    let events = fixture.event_types();
    assert!(events.contains(&"expired".to_string()));
    assert!(events.contains(&"grant_expired".to_string()));
    fixture.verify_chain();
}

#[test]
fn revoke_is_for_the_holder_an_approver_or_the_operator() {
    type Expect = Result<(), fn(&AccessError) -> bool>;
    let cases: &[(Actor, Expect)] = &[
        (Actor::User("alice".into()), Ok(())),
        (Actor::User("bob".into()), Ok(())),
        (Actor::Operator("root".into()), Ok(())),
        (
            Actor::User("dave".into()),
            Ok(()), // dave is a leader, hence an approver of web-1
        ),
        (
            Actor::User("erin".into()),
            Err(|e| matches!(e, AccessError::NotAllowedToRevoke { .. })),
        ),
    ];
    for (actor, expect) in cases {
        let fixture = fixture();
        let grant = fixture.grant("alice", "web-1", &["carol"]);
        let mut ended = fixture.access.subscribe_ended();
        let result = fixture.access.revoke(actor, &grant, "incident over");
        match (expect, result) {
            (Ok(()), Ok(revoked)) => {
                assert_eq!(revoked.state, GrantState::Revoked);
                assert_eq!(revoked.revoked_by, Some(actor.label()));
                assert!(
                    fixture
                        .access
                        .active_grant("alice", "web-1")
                        .is_ok_and(|g| g.is_none())
                );
                let notice = ended.try_recv().unwrap_or_else(|error| panic!("{error}"));
                assert_eq!(notice.reason, GrantState::Revoked);
                // Revoking again is refused with the state.
                let again = fixture.access.revoke(actor, &grant, "again");
                assert!(
                    matches!(again, Err(AccessError::GrantNotActive { .. })),
                    "{again:?}"
                );
            }
            (Err(check), Err(error)) => {
                assert!(check(&error), "{actor:?}: {error}");
                assert!(
                    fixture
                        .access
                        .active_grant("alice", "web-1")
                        .is_ok_and(|g| g.is_some())
                );
                assert!(
                    fixture
                        .event_types()
                        .contains(&"revoke_refused".to_string())
                );
            }
            (expect, result) => panic!("{actor:?}: expected {}, got {result:?}", expect.is_ok()),
        }
    }
}

#[test]
fn revoke_refuses_unknown_and_ended_grants() {
    let fixture = fixture();
    let operator = Actor::Operator("root".into());
    assert!(matches!(
        fixture.access.revoke(&operator, "g-nosuchid", "x"),
        Err(AccessError::UnknownGrant(_))
    ));
    let grant = fixture.grant("alice", "web-1", &["bob"]);
    fixture.clock.advance(hours(1));
    assert!(matches!(
        fixture.access.revoke(&operator, &grant, "x"),
        Err(AccessError::GrantNotActive {
            state: GrantState::Expired,
            ..
        })
    ));
}

#[test]
fn concurrent_approvals_produce_exactly_one_grant() {
    // Two handles on one database file, as two processes would have: SQLite's write lock, not an
    // in-process mutex, is what must serialize them.
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let path = dir.path().join("state.db");
        let open = || {
            let store = Store::open(&path).unwrap_or_else(|error| panic!("{error}"));
            Access::new(Arc::new(config()), store, Arc::new(ManualClock::new(START)))
        };
        let first = open();
        let second = open();
        let id = first
            .request("alice", "web-1", None, "INC-3")
            .unwrap_or_else(|error| panic!("{error}"))
            .id;
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [(first.clone(), "bob"), (second, "carol")]
            .into_iter()
            .map(|(access, approver)| {
                let barrier = barrier.clone();
                let id = id.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    access.approve(approver, &id)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| panic!("thread panicked")))
            .collect();
        let granted = results
            .iter()
            .filter(|result| matches!(result, Ok(Approved::Granted { .. })))
            .count();
        let refused = results
            .iter()
            .filter(|result| {
                matches!(
                    result,
                    Err(AccessError::NotPending {
                        state: RequestState::Approved,
                        ..
                    })
                )
            })
            .count();
        assert_eq!((granted, refused), (1, 1), "{results:?}");
        let grants = first
            .grants(false, None)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(grants.len(), 1);
    }
}

/// Issue #19: who sees which sessions. A reviewer role sees all, an approver the sessions on
/// the targets they approve, everyone their own, the operator all; every search is audited.
#[test]
fn issue_19_sessions_are_visible_by_role() {
    let text = CONFIG.replace(
        "leader = \"approves\"",
        "leader = \"approves\"\ndba = \"approves analytics\"\nreviewer = \"reviews sessions\"",
    ) + r#"
[[users]]
name = "dan"
roles = ["dba"]

[[users]]
name = "rita"
roles = ["reviewer"]

[[targets]]
name = "analytics-db"
kind = "ssh"
address = "10.0.3.5:22"
login = "deploy"
host_key = "accept-first"
requestable_by = ["engineer"]
approvers = ["dba"]
"#;
    let config = Config::parse(&text, Path::new("test.toml"), Path::new("/tmp"))
        .unwrap_or_else(|error| panic!("{error}"));
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let store = Store::open(&dir.path().join("state.db")).unwrap_or_else(|error| panic!("{error}"));
    let clock = Arc::new(ManualClock::new(START));
    let fixture = Fixture {
        access: Access::new(Arc::new(config), store, clock.clone()),
        clock,
        _dir: dir,
    };
    let open = |user: &str, target: &str| -> String {
        let session = crate::session::Session::open(
            &fixture.access,
            user,
            target,
            "ssh",
            "127.0.0.1",
            vec![],
        )
        .unwrap_or_else(|error| panic!("{user} on {target}: {error:?}"));
        session.end(crate::session::EndReason::Closed);
        session.id().to_string()
    };
    fixture.grant("alice", "web-1", &["bob"]);
    let alice_web = open("alice", "web-1");
    fixture.grant("dave", "analytics-db", &["dan"]);
    let dave_analytics = open("dave", "analytics-db");
    fixture.grant("alice", "analytics-db", &["dan"]);
    let alice_analytics = open("alice", "analytics-db");
    let all = vec![&alice_web, &dave_analytics, &alice_analytics];
    let cases: Vec<(Viewer, Vec<&String>)> = vec![
        (
            Viewer::User("alice".into()),
            vec![&alice_web, &alice_analytics],
        ),
        (Viewer::User("bob".into()), vec![&alice_web]),
        (
            Viewer::User("dan".into()),
            vec![&dave_analytics, &alice_analytics],
        ),
        (
            Viewer::User("dave".into()),
            vec![&alice_web, &dave_analytics],
        ),
        (Viewer::User("rita".into()), all.clone()),
        (Viewer::User("erin".into()), vec![]),
        (Viewer::Operator("root".into()), all.clone()),
    ];
    for (viewer, expected) in &cases {
        let filter = crate::store::SessionFilter {
            limit: 100,
            ..Default::default()
        };
        let mut found: Vec<String> = fixture
            .access
            .find_sessions(viewer, filter, None)
            .unwrap_or_else(|error| panic!("{viewer:?}: {error}"))
            .into_iter()
            .map(|summary| summary.session.id)
            .collect();
        found.sort();
        let mut expected: Vec<String> = expected.iter().map(|id| id.to_string()).collect();
        expected.sort();
        assert_eq!(found, expected, "{viewer:?}");
    }
    // A filter narrows what the role allows, never widens it.
    let filter = crate::store::SessionFilter {
        user: Some("dave".into()),
        limit: 100,
        ..Default::default()
    };
    let found = fixture
        .access
        .find_sessions(&Viewer::User("alice".into()), filter, None)
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(found.is_empty(), "alice asked for dave's sessions");
    let searches = fixture
        .event_types()
        .iter()
        .filter(|kind| *kind == "sessions.searched")
        .count();
    assert_eq!(searches, cases.len() + 1, "every search is audited");
    // A locked reviewer sees nothing.
    fixture
        .access
        .lock_user(&Actor::Operator("root".into()), "rita", "left the company")
        .unwrap_or_else(|error| panic!("{error}"));
    let refused = fixture.access.find_sessions(
        &Viewer::User("rita".into()),
        crate::store::SessionFilter {
            limit: 100,
            ..Default::default()
        },
        None,
    );
    assert!(
        matches!(refused, Err(AccessError::Locked(_))),
        "{refused:?}"
    );
    // A refused search is a control event too, with why and its scope.
    let last = fixture
        .access
        .store()
        .read(|tx| tx.audit_tail(1))
        .unwrap_or_else(|error| panic!("{error}"))
        .pop()
        .unwrap_or_else(|| panic!("no record"));
    assert_eq!(last.event_type, "sessions.searched");
    let detail: serde_json::Value =
        serde_json::from_str(&last.detail).unwrap_or_else(|error| panic!("{error}"));
    assert!(
        detail["refused"]
            .as_str()
            .is_some_and(|why| why.contains("locked")),
        "{detail}"
    );
    assert_eq!(detail["limit"], 100);
    assert_eq!(detail["scope"], "all", "rita is a reviewer");
}
