//! Crash safety of the embedded state: a `kill -9` at any moment leaves a database that opens,
//! passes SQLite's integrity check, verifies its audit chain, and holds no half-done transition
//! (issue #2).

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use portcullis::access::{Access, Approved};
use portcullis::audit::{Actor, ChainVerifier};
use portcullis::clock::SystemClock;
use portcullis::config::Config;
use support::{PEOPLE_AND_TARGETS, TestConfig, wait_for};

const HAMMER_CONFIG: &str = "PORTCULLIS_TEST_HAMMER_CONFIG";

/// Not a test on its own: when the crash test starts this binary with `HAMMER_CONFIG` set, this
/// drives the lifecycle in a loop until it is killed. Without the variable it returns at once.
#[test]
fn hammer_child_process_for_the_kill_test() {
    let Some(path) = std::env::var_os(HAMMER_CONFIG) else {
        return;
    };
    let config = Config::load(std::path::Path::new(&path)).expect("config");
    let store = portcullis::server::open_store(&config).expect("store");
    let access = Access::new(Arc::new(config), store, Arc::new(SystemClock));
    for round in 0u64.. {
        let request = access
            .request("alice", "web-1", None, "INC-crash")
            .expect("request");
        match round % 4 {
            0 => {
                access.deny("bob", &request.id, "no").expect("deny");
            }
            1 => {
                access.cancel("alice", &request.id).expect("cancel");
            }
            _ => {
                let Ok(Approved::Granted { grant, .. }) = access.approve("carol", &request.id)
                else {
                    panic!("approve");
                };
                if round % 4 == 3 {
                    access
                        .revoke(&Actor::User("bob".into()), &grant.id, "done")
                        .expect("revoke");
                }
            }
        }
    }
}

fn count(database: &rusqlite::Connection, sql: &str) -> i64 {
    database
        .query_row(sql, [], |row| row.get(0))
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

#[test]
fn kill_9_at_any_moment_leaves_a_consistent_database() {
    // Kill after different amounts of work, so the kill lands in different transactions.
    for events_before_kill in [3, 40, 150, 400] {
        let config = TestConfig::new(PEOPLE_AND_TARGETS);
        let database_path = config.state_dir().join("portcullis.db");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "hammer_child_process_for_the_kill_test",
                "--nocapture",
            ])
            .env(HAMMER_CONFIG, &config.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the hammer");
        wait_for(
            "the hammer to make progress",
            Duration::from_secs(60),
            || {
                let database = rusqlite::Connection::open(&database_path).ok()?;
                let events: i64 = database
                    .query_row("SELECT count(*) FROM audit_events", [], |row| row.get(0))
                    .ok()?;
                (events >= events_before_kill).then_some(())
            },
        );
        let status = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status()
            .expect("kill -9");
        assert!(status.success());
        let _ = child.wait();

        // It reopens (running migrations and WAL recovery) and is sound.
        let store = portcullis::server::open_store(&config.load()).expect("reopen after kill -9");
        let mut verifier = ChainVerifier::default();
        let chain = store
            .read(|tx| tx.audit_scan(|record| verifier.check(&record)))
            .expect("scan");
        assert_eq!(
            chain,
            Ok(()),
            "audit chain after kill at {events_before_kill}"
        );
        drop(store);

        let database = rusqlite::Connection::open(&database_path).expect("open");
        let integrity: String = database
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok");
        // Every transition landed whole: state rows and their audit events agree.
        let checks = [
            (
                "requests",
                "SELECT count(*) FROM requests",
                "SELECT count(*) FROM audit_events WHERE type = 'requested'",
            ),
            (
                "grants",
                "SELECT count(*) FROM grants",
                "SELECT count(*) FROM audit_events WHERE type = 'granted'",
            ),
            (
                "approved requests",
                "SELECT count(*) FROM requests WHERE state = 'approved'",
                "SELECT count(*) FROM grants",
            ),
            (
                "grant links",
                "SELECT count(*) FROM requests r JOIN grants g ON g.id = r.grant_id AND g.request_id = r.id",
                "SELECT count(*) FROM grants",
            ),
            (
                "denials",
                "SELECT count(*) FROM requests WHERE state = 'denied'",
                "SELECT count(*) FROM audit_events WHERE type = 'denied'",
            ),
            (
                "cancels",
                "SELECT count(*) FROM requests WHERE state = 'cancelled'",
                "SELECT count(*) FROM audit_events WHERE type = 'cancelled'",
            ),
            (
                "revokes",
                "SELECT count(*) FROM grants WHERE state = 'revoked'",
                "SELECT count(*) FROM audit_events WHERE type = 'revoked'",
            ),
            (
                "approvals",
                "SELECT count(*) FROM approvals",
                "SELECT count(*) FROM audit_events WHERE type = 'approved'",
            ),
        ];
        for (what, left, right) in checks {
            assert_eq!(
                count(&database, left),
                count(&database, right),
                "{what} disagree after kill at {events_before_kill} events"
            );
        }
    }
}
