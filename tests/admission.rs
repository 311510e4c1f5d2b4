//! One table of admission cases run through both front ends (issue #17): for each case, an SSH
//! login (OpenSSH `ssh` to a real `sshd` target) and a PostgreSQL login (tokio-postgres to a
//! real PostgreSQL target) must reach the same decision and write the same audit events, so the
//! two protocols cannot drift apart again.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use portcullis::access::model::Grant;
use portcullis::audit::Actor;
use support::bastion::Bastion;
use support::{Postgres, Sshd, free_port, wait_for};

/// A bastion with `web-1` on a real sshd, `prod-db` and `other-db` on a real PostgreSQL, and
/// `web-down` and `db-down` whose addresses answer nothing.
fn bastion() -> (Bastion, Sshd, Postgres) {
    let postgres = Postgres::start();
    let password_file = postgres.dir.path().join("bastion-password");
    std::fs::write(&password_file, &postgres.password).unwrap();
    let mut sshd = None;
    let bastion = Bastion::start_configured("postgres_allow_plaintext = true", |client_key| {
        let server = Sshd::start_with(&[client_key.to_string()]);
        let common = "requestable_by = [\"engineer\"]\napprovers = [\"leader\"]\n";
        let mut text = format!(
            "[[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"127.0.0.1:{}\"\n\
             login = \"{}\"\nhost_key = \"{}\"\n{common}\n\
             [[targets]]\nname = \"web-down\"\nkind = \"ssh\"\naddress = \"127.0.0.1:{}\"\n\
             login = \"nobody\"\nhost_key = \"accept-first\"\n{common}\n",
            server.port,
            server.user,
            server.host_key,
            free_port()
        );
        for (name, port) in [
            ("prod-db", postgres.port),
            ("other-db", postgres.port),
            ("db-down", free_port()),
        ] {
            text.push_str(&format!(
                "[[targets]]\nname = \"{name}\"\nkind = \"postgres\"\naddress = \"127.0.0.1:{port}\"\n\
                 database = \"postgres\"\nlogin = \"{}\"\npassword_file = \"{}\"\n\
                 tls = \"disable\"\n{common}\n",
                postgres.superuser,
                password_file.display()
            ));
        }
        sshd = Some(server);
        text
    });
    (bastion, sshd.unwrap(), postgres)
}

/// What a case must come to on both protocols.
struct Expected {
    admitted: bool,
    /// Audit event types the attempt must write.
    written: &'static [&'static str],
    /// And must not.
    absent: &'static [&'static str],
}

const LOGIN_REFUSED: Expected = Expected {
    admitted: false,
    written: &["auth_failed"],
    absent: &["logged_in", "session.started"],
};

const SESSION_REFUSED: Expected = Expected {
    admitted: false,
    written: &["logged_in", "session_refused"],
    absent: &["session.started", "auth_failed"],
};

const TARGET_DOWN: Expected = Expected {
    admitted: false,
    written: &[
        "logged_in",
        "session.started",
        "session_refused",
        "session.ended",
    ],
    absent: &["auth_failed"],
};

const ADMITTED: Expected = Expected {
    admitted: true,
    written: &["logged_in", "session.started", "session.ended"],
    absent: &["auth_failed", "session_refused"],
};

/// How one login is attempted on each protocol.
struct Attempt {
    /// Whose key, and the SSH login name.
    ssh_key: &'static str,
    ssh_login: &'static str,
    /// The PostgreSQL user, database and password.
    pg_user: &'static str,
    pg_database: &'static str,
    pg_password: String,
}

impl Attempt {
    fn ssh(&self, bastion: &Bastion) -> bool {
        let (code, _, _) = bastion.ssh_with(&bastion.key(self.ssh_key), self.ssh_login, &["true"]);
        code == 0
    }

    fn postgres(&self, bastion: &Bastion) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(bastion.postgres_port())
            .user(self.pg_user)
            .dbname(self.pg_database)
            .password(&self.pg_password);
        runtime.block_on(async {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    let connection = tokio::spawn(connection);
                    let ran = client.simple_query("select 1").await.is_ok();
                    drop(client);
                    let _ = connection.await;
                    ran
                }
                Err(_) => false,
            }
        })
    }
}

/// The audit event types written since `from` events.
fn written_since(bastion: &Bastion, from: usize) -> Vec<String> {
    bastion.audit_types().into_iter().skip(from).collect()
}

/// Runs one protocol's attempt and checks the decision and the events.
fn check(
    bastion: &Bastion,
    case: &str,
    protocol: &str,
    expected: &Expected,
    attempt: impl Fn() -> bool,
) {
    // A fresh minute for each attempt: refusals from one address are audited one by one only
    // for the first few of a minute.
    bastion.advance(Duration::from_secs(61));
    let from = bastion.audit_types().len();
    let admitted = attempt();
    assert_eq!(admitted, expected.admitted, "{case} over {protocol}");
    let written = wait_for(
        &format!("the audit of {case} over {protocol}"),
        Duration::from_secs(10),
        || {
            let written = written_since(bastion, from);
            expected
                .written
                .iter()
                .all(|kind| written.iter().any(|seen| seen == kind))
                .then_some(written)
        },
    );
    for kind in expected.absent {
        assert!(
            !written.iter().any(|seen| seen == kind),
            "{case} over {protocol} wrote {kind}: {written:?}"
        );
    }
}

fn revoke_all(bastion: &Bastion) {
    for grant in bastion.access().grants(true, None).unwrap() {
        bastion
            .access()
            .revoke(&Actor::User("bob".into()), &grant.id, "next case")
            .unwrap();
    }
}

fn grant_of(bastion: &Bastion, id: &str) -> Grant {
    bastion.access().grant_by_id(id).unwrap().unwrap()
}

fn token(bastion: &Bastion, grant: &Grant) -> String {
    bastion
        .access()
        .token_key()
        .unwrap()
        .issue(grant, bastion.now())
        .unwrap()
}

#[test]
fn issue_17_every_admission_case_is_decided_and_audited_alike_on_ssh_and_postgres() {
    let (bastion, _sshd, _postgres) = bastion();
    let hour = Duration::from_secs(3_600);
    // Run every case once per protocol, in the same state.
    let run = |case: &str, expected: &Expected, setup: &dyn Fn() -> Attempt| {
        revoke_all(&bastion);
        let attempt = setup();
        check(&bastion, case, "ssh", expected, || attempt.ssh(&bastion));
        revoke_all(&bastion);
        let attempt = setup();
        check(&bastion, case, "postgres", expected, || {
            attempt.postgres(&bastion)
        });
    };
    let alice = |ssh_login: &'static str, pg_database: &'static str, pg_password: String| Attempt {
        ssh_key: "alice",
        ssh_login,
        pg_user: "alice",
        pg_database,
        pg_password,
    };

    run("admitted", &ADMITTED, &|| {
        let ssh = grant_of(&bastion, &bastion.grant("alice", "web-1", hour));
        let _ = ssh;
        let db = grant_of(&bastion, &bastion.grant("alice", "prod-db", hour));
        alice("alice+web-1", "prod-db", token(&bastion, &db))
    });
    run("unknown user", &LOGIN_REFUSED, &|| {
        let db = grant_of(&bastion, &bastion.grant("alice", "prod-db", hour));
        Attempt {
            ssh_key: "alice",
            ssh_login: "mallory+web-1",
            pg_user: "mallory",
            pg_database: "prod-db",
            pg_password: token(&bastion, &db),
        }
    });
    run("wrong key or token", &LOGIN_REFUSED, &|| {
        bastion.grant("alice", "web-1", hour);
        let db = grant_of(&bastion, &bastion.grant("alice", "prod-db", hour));
        Attempt {
            ssh_key: "bob",
            ..alice(
                "alice+web-1",
                "prod-db",
                format!("{}x", token(&bastion, &db)),
            )
        }
    });
    run("address not allowed", &LOGIN_REFUSED, &|| {
        bastion.grant("erin", "web-1", hour);
        let db = grant_of(&bastion, &bastion.grant("erin", "prod-db", hour));
        Attempt {
            ssh_key: "erin",
            ssh_login: "erin+web-1",
            pg_user: "erin",
            pg_database: "prod-db",
            pg_password: token(&bastion, &db),
        }
    });
    run("no grant", &SESSION_REFUSED, &|| {
        // A well-signed token for a grant that never existed.
        let mut db = grant_of(&bastion, &bastion.grant("alice", "prod-db", hour));
        revoke_all(&bastion);
        db.id = "g-nosuchgr".into();
        alice("alice+web-1", "prod-db", token(&bastion, &db))
    });
    run("grant for another target", &SESSION_REFUSED, &|| {
        bastion.grant("alice", "web-down", hour);
        let other = grant_of(&bastion, &bastion.grant("alice", "other-db", hour));
        alice("alice+web-1", "prod-db", token(&bastion, &other))
    });
    run("revoked", &SESSION_REFUSED, &|| {
        bastion.grant("alice", "web-1", hour);
        let db = grant_of(&bastion, &bastion.grant("alice", "prod-db", hour));
        let password = token(&bastion, &db);
        revoke_all(&bastion);
        alice("alice+web-1", "prod-db", password)
    });
    run("expired", &SESSION_REFUSED, &|| {
        bastion.grant("alice", "web-1", Duration::from_secs(120));
        let db = grant_of(
            &bastion,
            &bastion.grant("alice", "prod-db", Duration::from_secs(120)),
        );
        let password = token(&bastion, &db);
        // `check` moves the clock a minute more before the attempt.
        bastion.advance(Duration::from_secs(61));
        alice("alice+web-1", "prod-db", password)
    });
    run("target down", &TARGET_DOWN, &|| {
        bastion.grant("alice", "web-down", hour);
        let db = grant_of(&bastion, &bastion.grant("alice", "db-down", hour));
        alice("alice+web-down", "db-down", token(&bastion, &db))
    });
    // Last: a lock holds whatever else is true.
    run("locked", &LOGIN_REFUSED, &|| {
        let _ = bastion
            .access()
            .unlock_user(&Actor::Operator("test".into()), "alice");
        bastion.grant("alice", "web-1", hour);
        let db = grant_of(&bastion, &bastion.grant("alice", "prod-db", hour));
        let password = token(&bastion, &db);
        bastion
            .access()
            .lock_user(&Actor::Operator("test".into()), "alice", "case")
            .unwrap();
        alice("alice+web-1", "prod-db", password)
    });
}
