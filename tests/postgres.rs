//! PostgreSQL through the bastion (issue #4), against a real PostgreSQL server: `psql` and
//! `pgbench` over TLS with a grant-bound token, a Rust client (tokio-postgres) for the extended
//! protocol, SQLSTATEs, cancel and revoke, and the query log.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::bastion::Bastion;
use support::{Postgres, wait_for};

/// A bastion with database target `prod-db` on a fresh PostgreSQL, its password from a file.
fn bastion_and_postgres(server: &str) -> (Bastion, Postgres) {
    bastion_and_postgres_with(server, "")
}

/// Like `bastion_and_postgres`, with `body` TOML (like a `[limits]` table) before the targets.
fn bastion_and_postgres_with(server: &str, body: &str) -> (Bastion, Postgres) {
    let postgres = Postgres::start();
    let password_file = postgres.dir.path().join("bastion-password");
    std::fs::write(&password_file, &postgres.password).unwrap();
    let bastion = Bastion::start_configured(server, |_| {
        let targets: String = ["prod-db", "other-db"]
            .iter()
            .map(|name| database_target(name, &postgres, &postgres.superuser, &password_file))
            .collect();
        format!("{body}\n{targets}")
    });
    (bastion, postgres)
}

/// A `[[targets]]` entry for a database on `postgres`, logging in as `login`.
fn database_target(
    name: &str,
    postgres: &Postgres,
    login: &str,
    password_file: &std::path::Path,
) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\nkind = \"postgres\"\naddress = \"127.0.0.1:{}\"\n\
         database = \"postgres\"\nlogin = \"{login}\"\npassword_file = \"{}\"\n\
         tls = \"disable\"\nrequestable_by = [\"engineer\"]\napprovers = [\"leader\"]\n\
         max_duration = \"2h\"\n\n",
        postgres.port,
        password_file.display()
    )
}

fn hour() -> Duration {
    Duration::from_secs(3_600)
}

fn token(bastion: &Bastion, user: &str) -> String {
    token_for(bastion, user, "prod-db")
}

fn token_for(bastion: &Bastion, user: &str, target: &str) -> String {
    let (code, stdout, stderr) = bastion.ssh(user, &["token", target]);
    assert_eq!(code, 0, "{stderr}");
    stdout.trim().to_string()
}

/// The bastion's CA, written for `sslrootcert`.
fn ca_file(bastion: &Bastion) -> PathBuf {
    let output = bastion.config.portcullis(&["tls-ca"]).output().unwrap();
    assert!(output.status.success());
    let path = bastion.config.dir.path().join("bastion-ca.pem");
    std::fs::write(&path, &output.stdout).unwrap();
    path
}

/// `psql -X` through the bastion as alice to `target`, with `tls` connection options
/// (`sslmode=require`, or verify-full with a CA) and the token as the password.
fn psql_to(
    bastion: &Bastion,
    postgres: &Postgres,
    token: &str,
    target: &str,
    tls: &str,
) -> Command {
    let mut command = Command::new(postgres.tool("psql"));
    command
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname={target} {tls}",
            bastion.postgres_port()
        ))
        .arg("-X")
        .env("PGPASSWORD", token);
    command
}

/// libpq options that verify the bastion against its CA.
fn verified_tls(bastion: &Bastion) -> String {
    format!(
        "sslmode=verify-full sslrootcert={}",
        ca_file(bastion).display()
    )
}

fn psql(bastion: &Bastion, postgres: &Postgres, token: &str, sql: &str) -> (bool, String, String) {
    let output = psql_to(bastion, postgres, token, "prod-db", &verified_tls(bastion))
        .args(["-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a script file through the bastion over verified TLS, one statement a Query message,
/// stopping at the first error.
fn psql_script(
    bastion: &Bastion,
    postgres: &Postgres,
    token: &str,
    script: &std::path::Path,
) -> std::process::Output {
    psql_to(bastion, postgres, token, "prod-db", &verified_tls(bastion))
        .args(["-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(script)
        .output()
        .unwrap()
}

/// psql through the bastion running `before` and then `select pg_sleep(30)`, returned once the
/// sleep runs on the target (seen there directly, not through the bastion).
fn sleeping_psql(
    bastion: &Bastion,
    postgres: &Postgres,
    token: &str,
    before: &[&str],
) -> std::process::Child {
    let child = psql_to(bastion, postgres, token, "prod-db", "sslmode=require")
        .args(before)
        .args(["-c", "select pg_sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("pg_sleep running upstream", Duration::from_secs(10), || {
        (running_sleeps(postgres) == "1").then_some(())
    });
    child
}

/// How many `select pg_sleep(30)` run on the target now.
fn running_sleeps(postgres: &Postgres) -> String {
    postgres.psql(
        "select count(*) from pg_stat_activity \
         where state = 'active' and query = 'select pg_sleep(30)'",
    )
}

/// The query log lines of the bastion's sessions, all files together.
fn query_logs(bastion: &Bastion) -> Vec<Value> {
    query_log_files(bastion).into_iter().flatten().collect()
}

/// The statements that ran, in the query logs of the bastion's sessions, one list a session
/// (without each log's startup record, the `prepare` and `bind` records of named statements and
/// portals, and `sync` records of failed commits).
fn query_log_files(bastion: &Bastion) -> Vec<Vec<Value>> {
    query_log_records(bastion)
        .into_iter()
        .map(|records| {
            records
                .into_iter()
                .filter(|record| {
                    !matches!(
                        record["protocol"].as_str(),
                        Some("startup" | "prepare" | "bind" | "sync")
                    )
                })
                .collect()
        })
        .collect()
}

/// Every record of the query logs of the bastion's sessions, one list a session.
fn query_log_records(bastion: &Bastion) -> Vec<Vec<Value>> {
    let recordings = bastion.config.dir.path().join("recordings");
    support::files_under(&recordings, ".pg.jsonl")
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            text.lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn psql_over_verified_tls_with_a_token_runs_and_every_statement_is_recorded() {
    let (bastion, postgres) = bastion_and_postgres("");
    let (code, _, stderr) = bastion.ssh("alice", &["token", "prod-db"]);
    assert_eq!(code, 1, "no token without a grant");
    assert!(stderr.contains("no active grant for prod-db"), "{stderr}");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let (ok, stdout, stderr) = psql(
        &bastion,
        &postgres,
        &token,
        "select 40 + 2; select application_name from pg_stat_activity where pid = pg_backend_pid()",
    );
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("42\n"), "{stdout}");
    assert!(
        stdout.contains("(portcullis s-"),
        "the session id reaches pg_stat_activity: {stdout}"
    );

    bastion.wait_for_event("recording.finalized");
    let logged = query_logs(&bastion);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["protocol"], "simple");
    assert!(
        logged[0]["sql"]
            .as_str()
            .unwrap()
            .starts_with("select 40 + 2")
    );
    assert_eq!(
        logged[0]["tags"],
        serde_json::json!(["SELECT 1", "SELECT 1"])
    );
    assert_eq!(logged[0]["rows"], 2);
    assert!(logged[0]["params"].is_null(), "{}", logged[0]);
    assert!(logged[0]["error"].is_null(), "{}", logged[0]);
    assert!(logged[0]["t"].as_f64().is_some(), "{}", logged[0]);
    assert!(logged[0]["duration_ms"].as_f64().is_some(), "{}", logged[0]);
    let audit = bastion.audit();
    // Issue #18: statements are not audit rows; the query log's chain is anchored instead.
    assert!(!audit.iter().any(|event| event["type"] == "pg.query"));
    assert!(
        logged[0]["h"].as_str().is_some_and(|h| h.len() == 64),
        "{}",
        logged[0]
    );
    let checkpoint = audit
        .iter()
        .find(|event| event["type"] == "pg.checkpoint")
        .expect("a pg.checkpoint");
    assert_eq!(checkpoint["detail"]["h"], logged[0]["h"], "{checkpoint}");
    let verified = bastion
        .config
        .portcullis(&["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "the chain and the query log hold: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // The session's end is written once the client has gone: wait for it, do not race it.
    bastion.wait_for_event("session.ended");

    // --pgpass prints a ~/.pgpass line for the same grant.
    let (code, stdout, _) = bastion.ssh("alice", &["token", "prod-db", "--pgpass"]);
    assert_eq!(code, 0);
    // The host and port clients use: `[server] postgres_public_address`, by default the
    // listen address.
    let prefix = format!(
        "127.0.0.1:{}:prod-db:alice:",
        bastion.config.load().server.postgres_listen.port()
    );
    let token = stdout
        .trim()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(token.split('.').count(), 3, "a JWT ends the line: {stdout}");
}

/// Connects with tokio-postgres without TLS (the bastion must allow plaintext).
fn connect(
    runtime: &tokio::runtime::Runtime,
    bastion: &Bastion,
    user: &str,
    database: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(bastion.postgres_port())
        .user(user)
        .dbname(database)
        .password(password)
        .application_name("test-client");
    runtime.block_on(async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    })
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn sqlstate(result: Result<tokio_postgres::Client, tokio_postgres::Error>) -> String {
    match result {
        Ok(_) => "connected".to_string(),
        Err(error) => error
            .code()
            .map(|code| code.code().to_string())
            .unwrap_or_else(|| format!("no SQLSTATE: {error}")),
    }
}

#[test]
fn refusals_answer_with_the_sqlstates_clients_rely_on() {
    let (bastion, _postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    let runtime = client_runtime();
    let grant = bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    // A well-signed token whose subject is another user.
    let mut other = bastion.access().grants(true, None).unwrap().remove(0);
    other.user = "bob".into();
    let bob = bastion
        .access()
        .token_key()
        .unwrap()
        .issue(&other, bastion.now())
        .unwrap();
    bastion.grant("alice", "other-db", hour());
    let other_target = token_for(&bastion, "alice", "other-db");
    // The same claims with `alg: none` and no signature.
    let claims = alice.split('.').nth(1).unwrap();
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    let cases = [
        ("alice", "prod-db", "not-a-token".to_string(), "28P01"),
        ("alice", "prod-db", format!("{alice}x"), "28P01"),
        ("alice", "prod-db", unsigned, "28P01"),
        ("alice", "prod-db", bob.clone(), "28P01"),
        ("alice", "prod-db", other_target, "28000"),
        ("alice", "no-such-db", alice.clone(), "3D000"),
        ("alice", "prod-db", alice.clone(), "connected"),
    ];
    for (user, database, password, expected) in cases {
        let got = sqlstate(connect(&runtime, &bastion, user, database, &password));
        assert_eq!(got, expected, "{user} {database}");
    }
    // A revoked grant's token is dead at once.
    bastion
        .access()
        .revoke(
            &portcullis::audit::Actor::User("bob".into()),
            &grant,
            "done",
        )
        .unwrap();
    assert_eq!(
        sqlstate(connect(&runtime, &bastion, "alice", "prod-db", &alice)),
        "28000"
    );
    let failures = bastion
        .audit()
        .iter()
        .filter(|event| event["type"] == "auth_failed")
        .count();
    assert!(
        failures >= 4,
        "refusals are audited as failed authentications: {failures}"
    );
}

#[test]
fn plaintext_is_refused_unless_allowed_and_names_sslmode() {
    let (bastion, _postgres) = bastion_and_postgres("");
    let runtime = client_runtime();
    bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    let error = connect(&runtime, &bastion, "alice", "prod-db", &alice)
        .err()
        .unwrap();
    let database_error = error.as_db_error().unwrap();
    assert_eq!(database_error.code().code(), "28000");
    assert!(
        database_error.message().contains("sslmode=require"),
        "{error}"
    );
}

#[test]
fn extended_protocol_cancel_and_revoke_work_through_the_bastion() {
    let (bastion, _postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    let runtime = client_runtime();
    let grant = bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    let client = connect(&runtime, &bastion, "alice", "prod-db", &alice).unwrap();

    // Extended protocol with parameters, and the backend pid is the target's.
    let row = runtime
        .block_on(client.query_one(
            "select $1::int + $2::int, pg_backend_pid()",
            &[&40i32, &2i32],
        ))
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);

    // COPY both ways through the Rust client.
    runtime.block_on(async {
        use futures_util::SinkExt;
        client
            .batch_execute("create table copied (n int)")
            .await
            .unwrap();
        let sink = client.copy_in("copy copied from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 3);
        let stream = client.copy_out("copy copied to stdout").await.unwrap();
        futures_util::pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            out.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(out, b"1\n2\n3\n");
    });

    // Cancel: a long statement is cancelled through the bastion's key mapping.
    let cancel = client.cancel_token();
    let running = runtime.spawn({
        let sleeper = connect(&runtime, &bastion, "alice", "prod-db", &alice).unwrap();
        let cancel = sleeper.cancel_token();
        async move {
            let started = tokio::time::Instant::now();
            let sleeping =
                tokio::spawn(async move { sleeper.simple_query("select pg_sleep(30)").await });
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
            let result = sleeping.await.unwrap();
            (
                result
                    .err()
                    .and_then(|error| error.code().map(|code| code.code().to_string())),
                started.elapsed(),
            )
        }
    });
    let (code, took) = runtime.block_on(running).unwrap();
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled");
    assert!(took < Duration::from_secs(2), "cancelled in {took:?}");
    drop(cancel);

    // Revoke: a running statement ends with 57P01 within a second or so.
    let running = runtime.spawn(async move { client.simple_query("select pg_sleep(30)").await });
    std::thread::sleep(Duration::from_millis(300));
    bastion
        .access()
        .revoke(
            &portcullis::audit::Actor::User("bob".into()),
            &grant,
            "incident over",
        )
        .unwrap();
    let result = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), running).await })
        .expect("cut within 10 s")
        .unwrap();
    let error = result.expect_err("the statement was cut");
    let message = format!("{error:?}");
    assert!(
        error.code().map(|code| code.code()) == Some("57P01")
            || message.contains("57P01")
            || message.contains("grant revoked"),
        "{message}"
    );

    wait_for("the session to end", Duration::from_secs(10), || {
        bastion
            .audit()
            .iter()
            .any(|event| {
                event["type"] == "session.ended" && event["detail"]["reason"] == "grant_revoked"
            })
            .then_some(())
    });
    let logged = query_log_files(&bastion)
        .into_iter()
        .find(|lines| lines.iter().any(|line| line["protocol"] == "extended"))
        .expect("the main session's log");
    let extended = logged
        .iter()
        .find(|line| line["protocol"] == "extended")
        .expect("an extended statement");
    // Exactly the statements run, in order, with their tags.
    let statements: Vec<(String, String)> = logged
        .iter()
        .map(|line| {
            (
                line["sql"].as_str().unwrap_or_default().to_string(),
                line["tags"]
                    .as_array()
                    .map(|tags| {
                        let tags: Vec<&str> = tags.iter().filter_map(|tag| tag.as_str()).collect();
                        tags.join("; ")
                    })
                    .unwrap_or_default(),
            )
        })
        .collect();
    let expected = [
        ("select $1::int + $2::int, pg_backend_pid()", "SELECT 1"),
        ("create table copied (n int)", "CREATE TABLE"),
        ("copy copied from stdin", "COPY 3"),
        ("copy copied to stdout", "COPY 3"),
    ];
    for (index, (sql, tag)) in expected.iter().enumerate() {
        assert_eq!(statements[index].0, *sql, "{statements:?}");
        assert_eq!(statements[index].1, *tag, "{statements:?}");
    }
    // tokio-postgres binds integers in binary: recorded as hex.
    assert_eq!(extended["params"][0], "\\x00000028", "{extended}");
    assert_eq!(extended["rows"], 1, "{extended}");
}

#[test]
fn pgbench_initializes_with_copy_and_runs_through_the_bastion() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let pgbench = |args: &[&str]| {
        let output = Command::new(postgres.tool("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &bastion.postgres_port().to_string(),
                "-U",
                "alice",
            ])
            .args(args)
            .arg("prod-db")
            .env("PGPASSWORD", &token)
            .env("PGSSLMODE", "require")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    pgbench(&["-i", "-s", "1", "-q"]);
    // The TPC-B-like default in each of pgbench's protocols: 2 clients x 10 transactions.
    for mode in ["simple", "extended", "prepared"] {
        let run = pgbench(&["-c", "2", "-t", "10", "-M", mode]);
        assert!(
            run.contains("number of transactions actually processed: 20/20"),
            "{mode}: {run}"
        );
    }
    // Each transaction updates one account: 20 a mode, each logged with its SQL (a prepared
    // statement's text, not a placeholder) and its one row.
    let updates = wait_for("the query logs", Duration::from_secs(10), || {
        let logged = query_logs(&bastion);
        let updates: Vec<Value> = logged
            .into_iter()
            .filter(|line| {
                line["sql"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("UPDATE pgbench_accounts")
            })
            .collect();
        (updates.len() >= 60).then_some(updates)
    });
    assert_eq!(updates.len(), 60);
    let simple = updates
        .iter()
        .filter(|line| line["protocol"] == "simple")
        .count();
    assert_eq!(simple, 20, "one mode of three is the simple protocol");
    for line in &updates {
        assert_eq!(line["rows"], 1, "{line}");
        assert_eq!(line["tags"], serde_json::json!(["UPDATE 1"]), "{line}");
        if line["protocol"] == "extended" {
            assert!(
                line["sql"].as_str().unwrap_or_default().contains("$1"),
                "{line}"
            );
            assert_eq!(line["params"].as_array().map(Vec::len), Some(2), "{line}");
        }
    }
    assert!(
        query_logs(&bastion).iter().all(|line| !line["sql"]
            .as_str()
            .unwrap_or_default()
            .starts_with("<unknown")),
        "every prepared statement and portal was tracked"
    );
    assert!(
        query_logs(&bastion)
            .iter()
            .any(|line| line["copy_bytes"].as_u64().unwrap_or(0) > 0),
        "pgbench -i loads with COPY"
    );
}

/// Ctrl-C in psql (SIGINT) cancels the running statement through the bastion: libpq sends the
/// CancelRequest in plaintext on a new connection even when the session uses TLS.
#[test]
fn psql_ctrl_c_cancels_a_running_statement_through_the_bastion() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let child = sleeping_psql(&bastion, &postgres, &token, &[]);
    let started = std::time::Instant::now();
    let signalled = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let output = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(2), "cancelled in {took:?}");
    // The cancelled statement is logged with its SQLSTATE.
    let logged = wait_for("the query log", Duration::from_secs(10), || {
        query_logs(&bastion)
            .into_iter()
            .find(|line| line["sql"] == "select pg_sleep(30)")
    });
    assert_eq!(logged["error"]["sqlstate"], "57014", "{logged}");
}

/// Sends `bytes` on a fresh connection and returns everything the bastion answers before it
/// closes (waiting at most 10 s).
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The bastion may close before it has read everything (that is the point of some inputs):
    // a reset on the write is an answer too, and what it sent first is still read below.
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn bad_startup_input_gets_a_clear_error_or_a_close_and_stalls_time_out() {
    let (bastion, postgres) =
        bastion_and_postgres_with("", "[limits]\nhandshake_timeout = \"1s\"\n");
    let port = bastion.postgres_port();
    // A readable length with an unknown protocol version: 08P01, then the close.
    let answer = raw_exchange(port, &[0, 0, 0, 8, 0, 9, 0, 0]);
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("08P01"));
    // An impossible length: closed without an answer.
    assert!(raw_exchange(port, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).is_empty());
    assert!(raw_exchange(port, &[0, 0, 0, 2]).is_empty());
    assert!(raw_exchange(port, &[0, 0, 0, 0]).is_empty(), "length 0");
    assert!(
        raw_exchange(port, &[0x40, 0, 0, 0, 0, 3, 0, 0]).is_empty(),
        "1 GiB"
    );
    assert!(
        raw_exchange(port, &vec![b'A'; 1 << 20]).is_empty(),
        "an endless stream"
    );
    // A cancel for a key the bastion never issued does nothing.
    assert!(raw_exchange(port, &[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2]).is_empty());
    // A client that stalls mid-startup is dropped at the handshake timeout.
    let started = std::time::Instant::now();
    assert!(raw_exchange(port, &[0, 0, 0, 40]).is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed by the 1 s timeout"
    );
    // The bastion still serves: a plaintext startup gets its TLS refusal, a real session works.
    let mut startup = vec![0, 3, 0, 0];
    startup.extend_from_slice(b"user\0alice\0database\0prod-db\0\0");
    let mut packet = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    let answer = raw_exchange(port, &packet);
    assert!(
        String::from_utf8_lossy(&answer).contains("28000"),
        "{answer:?}"
    );
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let (ok, stdout, stderr) = psql(&bastion, &postgres, &token, "select 7 * 6");
    assert!(ok && stdout == "42", "{stdout} {stderr}");
}

#[test]
fn expiry_warns_with_a_notice_then_ends_the_session_with_57p01() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", Duration::from_secs(600));
    let token = token(&bastion, "alice");
    let child = psql_to(&bastion, &postgres, &token, "prod-db", "sslmode=require")
        .args(["-c", "select pg_sleep(2)", "-c", "select pg_sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    bastion.wait_for_event("session.started");
    // Into the 5-minute warning window, then past the end.
    bastion.advance(Duration::from_secs(6 * 60));
    std::thread::sleep(Duration::from_millis(3_000));
    bastion.advance(Duration::from_secs(4 * 60));
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    // psql prints a NoticeResponse as `WARNING:  <message>`; issue #4 fixes the message as
    // `access to prod-db ends at HH:MM:SS UTC (in N minutes)`.
    let warning = stderr
        .lines()
        .find_map(|line| line.strip_prefix("WARNING:  access to prod-db ends at "))
        .unwrap_or_else(|| panic!("no expiry warning: {stderr}"));
    let (clock, left) = warning.split_once(" UTC (in ").expect(warning);
    let fields: Vec<&str> = clock.split(':').collect();
    assert_eq!(fields.len(), 3, "HH:MM:SS: {warning}");
    assert!(
        fields
            .iter()
            .all(|field| field.len() == 2 && field.parse::<u8>().is_ok()),
        "{warning}"
    );
    assert!(
        left.ends_with(" minutes)") || left.ends_with(" minute)"),
        "{warning}"
    );
    assert!(
        stderr.contains("access to prod-db ended: grant expired"),
        "{stderr}"
    );
    wait_for("session.ended", Duration::from_secs(10), || {
        bastion
            .audit()
            .iter()
            .any(|event| {
                event["type"] == "session.ended" && event["detail"]["reason"] == "grant_expired"
            })
            .then_some(())
    });
}

#[test]
fn copy_notify_large_results_and_errors_pass_through() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let script = "\
        create table items (id int, name text);\n\
        copy items from stdin;\n1\tone\n2\ttwo\n\\.\n\
        copy (select * from items order by id) to stdout;\n\
        \\copy items to 'ITEMS_FILE'\n\
        select count(*) from generate_series(1, 200000);\n\
        select length(string_agg(md5(i::text), '')) from generate_series(1, 50000) i;\n\
        begin;\n\
        select 1/0;\n\
        rollback;\n\
        listen channel_a;\n\
        notify channel_a, 'hello';\n\
        select 'done';\n";
    let items_file = bastion.config.dir.path().join("items.tsv");
    let script = script.replace("ITEMS_FILE", &items_file.display().to_string());
    let mut child = psql_to(&bastion, &postgres, &token, "prod-db", "sslmode=require")
        .args(["-A", "-t"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("1\tone\n2\ttwo"),
        "COPY TO STDOUT: {stdout}"
    );
    assert!(stdout.contains("200000"), "{stdout}");
    assert!(stdout.contains("1600000"), "a 1.6 MB value: {stdout}");
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(
        stdout.contains("Asynchronous notification \"channel_a\" with payload \"hello\""),
        "{stdout}"
    );
    assert!(stdout.contains("done"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&items_file).unwrap(),
        "1\tone\n2\ttwo\n",
        "\\copy"
    );
    bastion.wait_for_event("recording.finalized");
    let logged = query_logs(&bastion);
    let copy = logged
        .iter()
        .find(|line| {
            line["sql"]
                .as_str()
                .unwrap_or_default()
                .starts_with("copy items from")
        })
        .unwrap();
    // The two rows (12 bytes) and the `\.` end marker psql sends as data (3 bytes).
    assert_eq!(copy["copy_bytes"], 15, "{copy}");
    assert_eq!(copy["tags"], serde_json::json!(["COPY 2"]));
    assert_eq!(copy["rows"], 2);
    let failed = logged
        .iter()
        .find(|line| line["sql"] == "select 1/0;")
        .unwrap();
    assert_eq!(failed["error"]["sqlstate"], "22012", "{failed}");
    assert_eq!(failed["error"]["message"], "division by zero", "{failed}");
    assert!(failed["rows"].is_null(), "{failed}");
}

#[test]
fn the_sessions_row_counts_statements_and_bytes() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let (ok, _, stderr) = psql(&bastion, &postgres, &token, "select 1; select 2");
    assert!(ok, "{stderr}");
    let ended = wait_for("the session to end", Duration::from_secs(10), || {
        bastion
            .audit()
            .into_iter()
            .find(|event| event["type"] == "session.ended")
    });
    let id = ended["session_id"].as_str().unwrap().to_string();
    let row = bastion
        .access()
        .store()
        .read(|tx| tx.session(&id))
        .unwrap()
        .unwrap();
    assert_eq!(row.protocol, "postgres");
    assert_eq!(row.user, "alice");
    assert_eq!(row.end_reason.as_deref(), Some("closed"));
    assert_eq!(row.statements, 1, "one simple query message");
    assert!(row.bytes_in > 0 && row.bytes_out > 0);
    assert_eq!(row.client_address, "127.0.0.1");
}

/// Statements go to the query writer in batches (every second, or every 4,096): each one is in
/// the log and audited once, in the order it ran, all before the session's end (issue #4).
#[test]
fn thousands_of_statements_are_logged_and_audited_in_order_before_the_session_ends() {
    const COUNT: usize = 10_000;
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let script = bastion.config.dir.path().join("many.sql");
    let statements: String = (0..COUNT).map(|n| format!("select {n};\n")).collect();
    std::fs::write(&script, statements).unwrap();
    let output = psql_script(&bastion, &postgres, &token, &script);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for_session_end(&bastion);
    let expected: Vec<String> = (0..COUNT).map(|n| format!("select {n};")).collect();
    let logged: Vec<String> = query_logs(&bastion)
        .iter()
        .map(|line| line["sql"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logged, expected, "the query log, in order");
    // Straight from the store: `audit tail` shows the last 500. Issue #18: the log is anchored
    // by checkpoints (about one a second, not one a statement), the last covering every line
    // and committed before session.ended.
    let audit = bastion
        .access()
        .store()
        .read(|tx| tx.audit_tail(50_000))
        .unwrap();
    let checkpoints: Vec<Value> = audit
        .iter()
        .filter(|record| record.event_type == "pg.checkpoint")
        .map(|record| serde_json::from_str(&record.detail).unwrap())
        .collect();
    assert!(
        !checkpoints.is_empty() && checkpoints.len() < COUNT / 10,
        "{} checkpoints for {COUNT} statements",
        checkpoints.len()
    );
    let lines = query_log_records(&bastion).into_iter().flatten().count() as u64;
    assert_eq!(checkpoints.last().unwrap()["lines"], lines);
    let last_checkpoint = audit
        .iter()
        .rposition(|record| record.event_type == "pg.checkpoint")
        .unwrap();
    let ended = audit
        .iter()
        .position(|record| record.event_type == "session.ended")
        .unwrap();
    assert!(
        last_checkpoint < ended,
        "the last checkpoint before session.ended"
    );
}

/// Fail closed (issue #4): when the statements cannot be audited, the query writer marks the
/// session and the relay ends it with 58030 and cancels what runs upstream; what the script
/// would have run next never runs. The failure is made real with a trigger that refuses
/// `pg.checkpoint` rows in the bastion's own database.
#[test]
fn a_session_whose_statements_cannot_be_audited_is_ended() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    state_database(&bastion)
        .execute_batch(
            "CREATE TRIGGER refuse_queries BEFORE INSERT ON audit_events
             WHEN NEW.type = 'pg.checkpoint' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
        )
        .unwrap();
    let script = bastion.config.dir.path().join("script.sql");
    std::fs::write(
        &script,
        "select 1;\nselect pg_sleep(20);\ncreate table ran_unaudited (x int);\n",
    )
    .unwrap();
    let output = psql_script(&bastion, &postgres, &token, &script);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("recording failed"), "{stderr}");
    let ended = wait_for("the session to end", Duration::from_secs(20), || {
        bastion
            .audit()
            .into_iter()
            .find(|event| event["type"] == "session.ended")
    });
    assert_eq!(ended["detail"]["reason"], "recording_failed", "{ended}");
    let exists = postgres.psql("select count(*) from pg_tables where tablename = 'ran_unaudited'");
    assert_eq!(exists, "0", "a statement ran after auditing failed");
}

/// A bastion that shuts down ends its live database sessions first, as a revoke would: the
/// client gets FATAL 57P01 naming the shutdown, the statement running upstream is cancelled, and
/// the session's statements, query log hash and `session.ended` are all stored before it stops.
#[test]
fn shutdown_ends_live_sessions_and_finalizes_their_logs() {
    let (mut bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let child = sleeping_psql(&bastion, &postgres, &token, &["-c", "select 1"]);
    let server = bastion.server.take().unwrap();
    bastion.runtime.block_on(server.shutdown()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("the bastion is shutting down"), "{stderr}");
    assert_eq!(
        running_sleeps(&postgres),
        "0",
        "the statement was cancelled upstream"
    );
    let audit = bastion.audit();
    let of = |kind: &str| audit.iter().find(|event| event["type"] == kind).cloned();
    let ended = of("session.ended").expect("session.ended");
    assert_eq!(ended["detail"]["reason"], "shutdown", "{ended}");
    assert!(
        of("recording.finalized").is_some(),
        "the query log was finalized"
    );
    let logged: Vec<Value> = query_logs(&bastion);
    assert_eq!(logged[0]["sql"], "select 1", "{logged:?}");
}

#[test]
fn a_million_row_result_arrives_intact() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let (ok, stdout, stderr) = psql(
        &bastion,
        &postgres,
        &token,
        "select g, md5(g::text) from generate_series(1, 1000000) g",
    );
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1_000_000);
    assert_eq!(lines[0], "1|c4ca4238a0b923820dcc509a6f75849b");
    assert_eq!(lines[999_999], "1000000|8155bc545f84d9652f1012ef2bdfb6eb");
    let logged = query_logs(&bastion);
    assert_eq!(logged[0]["tags"], serde_json::json!(["SELECT 1000000"]));
    assert_eq!(logged[0]["rows"], 1_000_000);
}

#[test]
fn scram_md5_and_cleartext_upstream_logins_all_work() {
    let postgres = Postgres::start();
    let roles = "set password_encryption = 'md5'; \
                 create role md5_login login superuser password 'md5-secret'; \
                 create role plain_login login superuser password 'plain-secret'";
    postgres.psql(roles);
    // md5 and cleartext password for those two roles; everything else stays SCRAM.
    let hba = postgres.dir.path().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all md5_login 127.0.0.1/32 md5\nhost all plain_login 127.0.0.1/32 password\n{rules}"
        ),
    )
    .unwrap();
    postgres.psql("select pg_reload_conf()");
    let secrets = tempfile::tempdir().unwrap();
    let file = |name: &str, secret: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, secret).unwrap();
        path
    };
    let (scram, md5, plain) = (
        file("scram", &postgres.password),
        file("md5", "md5-secret"),
        file("plain", "plain-secret"),
    );
    let bastion = Bastion::start_with(|_| {
        [
            database_target("prod-db", &postgres, &postgres.superuser, &scram),
            database_target("md5-db", &postgres, "md5_login", &md5),
            database_target("plain-db", &postgres, "plain_login", &plain),
        ]
        .concat()
    });
    let ca = ca_file(&bastion);
    for (target, login) in [
        ("prod-db", "postgres"),
        ("md5-db", "md5_login"),
        ("plain-db", "plain_login"),
    ] {
        bastion.grant("alice", target, hour());
        let token = token_for(&bastion, "alice", target);
        let tls = format!("sslmode=verify-full sslrootcert={}", ca.display());
        let output = psql_to(&bastion, &postgres, &token, target, &tls)
            .args(["-A", "-t", "-c", "select current_user"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            stdout.trim(),
            login,
            "{target}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A wrong injected password is a target problem, named as such.
    std::fs::write(&md5, "wrong").unwrap();
    let token = token_for(&bastion, "alice", "md5-db");
    let output = psql_to(&bastion, &postgres, &token, "md5-db", "sslmode=require")
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("target md5-db refused the bastion"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("md5-secret") && !stderr.contains("wrong"),
        "{stderr}"
    );
}

#[test]
fn a_session_that_cannot_be_recorded_does_not_run() {
    let (bastion, postgres) = bastion_and_postgres("");
    // Today's folder cannot be made: the year is a file.
    let recordings = bastion.config.dir.path().join("recordings");
    std::fs::create_dir_all(&recordings).unwrap();
    std::fs::write(
        recordings.join(bastion.now().year().to_string()),
        "not a folder",
    )
    .unwrap();
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let (ok, _, stderr) = psql(&bastion, &postgres, &token, "select 1");
    assert!(!ok);
    assert!(stderr.contains("cannot be recorded"), "{stderr}");
    let types = bastion.audit_types();
    assert!(
        types.iter().any(|kind| kind == "recording.failed"),
        "{types:?}"
    );
    assert!(!types.iter().any(|kind| kind == "pg.checkpoint"));
}

#[test]
fn gssenc_is_declined_and_tls_follows() {
    let (bastion, _postgres) = bastion_and_postgres("");
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", bastion.postgres_port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&[0, 0, 0, 8, 4, 210, 22, 48]).unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N", "GSSENCRequest declined");
    stream.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"S", "then SSLRequest accepted");
}

/// A private CA and a certificate for 127.0.0.1 signed by it, as PEM: (ca, cert, key).
fn certificate_for_localhost(common_name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn upstream_tls_require_and_verify_full_reach_a_tls_database() {
    let postgres = Postgres::start();
    let (ca, cert, key) = certificate_for_localhost("database CA");
    let data = postgres.dir.path().join("data");
    std::fs::write(data.join("server.crt"), cert).unwrap();
    std::fs::write(data.join("server.key"), key).unwrap();
    let owner = std::fs::metadata(&data).unwrap();
    for file in ["server.crt", "server.key"] {
        let path = data.join(file);
        std::os::unix::fs::chown(
            &path,
            Some(std::os::unix::fs::MetadataExt::uid(&owner)),
            Some(std::os::unix::fs::MetadataExt::gid(&owner)),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    postgres.psql("alter system set ssl = on");
    postgres.psql("select pg_reload_conf()");
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("password");
    std::fs::write(&password_file, &postgres.password).unwrap();
    let ca_file = secrets.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let (other_ca, _, _) = certificate_for_localhost("another CA");
    let other_ca_file = secrets.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca).unwrap();
    let target = |name: &str, tls: &str| {
        database_target(name, &postgres, &postgres.superuser, &password_file)
            .replace("tls = \"disable\"", tls)
    };
    let bastion = Bastion::start_with(|_| {
        [
            target("tls-require", "tls = \"require\""),
            target(
                "tls-verified",
                &format!("tls = \"verify-full\"\nca_file = \"{}\"", ca_file.display()),
            ),
            target(
                "tls-wrong-ca",
                &format!(
                    "tls = \"verify-full\"\nca_file = \"{}\"",
                    other_ca_file.display()
                ),
            ),
        ]
        .concat()
    });
    for (name, expected) in [
        ("tls-require", Ok("t")),
        ("tls-verified", Ok("t")),
        (
            "tls-wrong-ca",
            Err("target tls-wrong-ca refused the bastion"),
        ),
    ] {
        bastion.grant("alice", name, hour());
        let token = token_for(&bastion, "alice", name);
        let output = psql_to(&bastion, &postgres, &token, name, "sslmode=require")
            .args(["-A", "-t", "-c"])
            .arg("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        match expected {
            Ok(ssl) => assert_eq!(stdout.trim(), ssl, "{name}: {stderr}"),
            Err(message) => assert!(stderr.contains(message), "{name}: {stderr}"),
        }
    }
}

#[test]
fn a_configured_certificate_replaces_the_generated_one() {
    let (ca, cert, key) = certificate_for_localhost("operator CA");
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file, ca_file) = (
        files.path().join("server.pem"),
        files.path().join("server.key"),
        files.path().join("ca.pem"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&ca_file, ca).unwrap();
    let server = format!(
        "postgres_tls_cert_file = \"{}\"\npostgres_tls_key_file = \"{}\"",
        cert_file.display(),
        key_file.display()
    );
    let (bastion, postgres) = bastion_and_postgres(&server);
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let tls = format!("sslmode=verify-full sslrootcert={}", ca_file.display());
    let output = psql_to(&bastion, &postgres, &token, "prod-db", &tls)
        .args(["-A", "-t", "-c", "select 1"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !bastion.config.state_dir().join("tls").exists(),
        "nothing generated"
    );
}

/// Waits for the statement that deleted the three victims and checks the log shows its SQL.
fn the_delete_is_logged_as_run(bastion: &Bastion) {
    let logged = wait_for(
        "the delete in the query log",
        Duration::from_secs(10),
        || {
            query_logs(bastion)
                .into_iter()
                .find(|line| line["tags"] == serde_json::json!(["DELETE 3"]))
        },
    );
    assert_eq!(logged["sql"], "delete from victims", "{logged}");
}

/// A client that speaks the wire protocol message by message, for what no client library sends
/// (issue #17), logged in through the bastion over plaintext.
struct RawClient {
    stream: std::net::TcpStream,
}

impl RawClient {
    /// Sends the startup packet with `parameters` and the token; returns the client once the
    /// session is ready, or the error fields (SQLSTATE, message) the bastion answered.
    fn login(
        bastion: &Bastion,
        token: &str,
        parameters: &[(&str, &str)],
    ) -> Result<RawClient, (String, String)> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", bastion.postgres_port())).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut client = RawClient { stream };
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (name, value) in [("user", "alice"), ("database", "prod-db")]
            .iter()
            .chain(parameters)
        {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        client.write(&packet);
        let (tag, _) = client.read();
        assert_eq!(tag, b'R', "the bastion asks for the token");
        let mut password = token.as_bytes().to_vec();
        password.push(0);
        client.send(b'p', &password);
        for (tag, body) in client.until_ready() {
            if tag == b'E' {
                return Err(error_fields(&body));
            }
        }
        Ok(client)
    }

    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut message = vec![tag];
        message.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        message.extend_from_slice(body);
        self.write(&message);
    }

    /// One message; `(0, [])` once the bastion closed.
    fn read(&mut self) -> (u8, Vec<u8>) {
        use std::io::Read;
        let mut header = [0u8; 5];
        if self.stream.read_exact(&mut header).is_err() {
            return (0, Vec::new());
        }
        let length = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0; length - 4];
        self.stream.read_exact(&mut body).unwrap();
        (header[0], body)
    }

    /// Messages up to and including ReadyForQuery (or until the bastion closes).
    fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut messages = Vec::new();
        loop {
            let (tag, body) = self.read();
            if tag == 0 {
                return messages;
            }
            messages.push((tag, body));
            if tag == b'Z' {
                return messages;
            }
        }
    }

    /// Parse (named `name`), then Sync.
    fn parse(&mut self, name: &str, sql: &str) {
        self.send(b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
    }

    /// Bind the unnamed portal to statement `name` without parameters, Execute it.
    fn bind_execute(&mut self, name: &str) {
        self.send(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes());
        self.send(b'E', b"\0\0\0\0\0");
    }

    fn sync(&mut self) {
        self.send(b'S', b"");
    }
}

/// The SQLSTATE and message of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|byte| *byte == 0) {
        match field.split_first() {
            Some((b'C', text)) => code = String::from_utf8_lossy(text).into_owned(),
            Some((b'M', text)) => message = String::from_utf8_lossy(text).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

/// The SQLSTATEs of the ErrorResponses among `messages`.
fn errors_in(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
    messages
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| error_fields(body).0)
        .collect()
}

#[test]
fn issue_17_a_rejected_parse_cannot_change_the_sql_the_log_shows() {
    let (bastion, postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    postgres.psql("create table victims (id int); insert into victims values (1), (2), (3)");
    bastion.grant("alice", "prod-db", hour());
    let mut client = RawClient::login(&bastion, &token(&bastion, "alice"), &[]).unwrap();
    client.parse("s1", "delete from victims");
    client.sync();
    assert!(errors_in(&client.until_ready()).is_empty());
    // The same name again: the server refuses it and skips the rest up to Sync.
    client.parse("s1", "select 1");
    client.sync();
    assert_eq!(errors_in(&client.until_ready()), ["42P05"]);
    client.bind_execute("s1");
    client.sync();
    let ran = client.until_ready();
    assert!(errors_in(&ran).is_empty());
    client.send(b'X', b"");
    assert_eq!(postgres.psql("select count(*) from victims"), "0");
    the_delete_is_logged_as_run(&bastion);
    assert!(
        query_logs(&bastion)
            .iter()
            .all(|line| line["sql"] != "select 1" || line["tags"] == serde_json::json!([])),
        "the rejected statement never shows as run"
    );
}

#[test]
fn issue_17_large_object_fastpath_calls_are_recorded() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    let source = postgres.dir.path().join("secret.txt");
    std::fs::write(&source, "exfiltrated through a large object\n").unwrap();
    std::fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // psql's \lo_import and \lo_export use libpq's large-object calls: FunctionCall messages.
    let output = psql_to(&bastion, &postgres, &alice, "prod-db", "sslmode=require")
        .args(["-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("\\lo_import {}", source.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let oid = stdout.split_whitespace().nth(1).unwrap().to_string();
    let calls = wait_for(
        "function calls in the query log",
        Duration::from_secs(10),
        || {
            let calls: Vec<Value> = query_logs(&bastion)
                .into_iter()
                .filter(|line| line["protocol"] == "function")
                .collect();
            (calls.len() >= 3).then_some(calls)
        },
    );
    for call in &calls {
        assert!(call["function_oid"].as_u64().unwrap() > 0, "{call}");
        assert!(call["params"].is_array(), "{call}");
        assert!(call.get("result").is_some(), "{call}");
    }
    // The bytes written are in the log as the write call's argument.
    assert!(
        calls.iter().any(|call| call["params"]
            .to_string()
            .contains(&hex_of(b"exfiltrated through a large object"))),
        "{calls:?}"
    );
    // The log is anchored past the calls (a checkpoint follows each batch of lines).
    wait_for(
        "a checkpoint past the calls",
        Duration::from_secs(10),
        || {
            bastion
                .audit()
                .into_iter()
                .filter(|event| event["type"] == "pg.checkpoint")
                .any(|event| event["detail"]["lines"].as_u64() >= Some(calls.len() as u64))
                .then_some(())
        },
    );
    assert!(oid.chars().all(|c| c.is_ascii_digit()), "{stdout}");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn issue_17_startup_parameters_are_recorded_and_guarded_ones_refused() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    let output = psql_to(&bastion, &postgres, &alice, "prod-db", "sslmode=require")
        .env("PGOPTIONS", "-c search_path=public -c statement_timeout=5s")
        .args(["-A", "-t", "-c", "show statement_timeout"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "5s");
    let first = wait_for("the startup record", Duration::from_secs(10), || {
        query_log_records(&bastion)
            .into_iter()
            .find_map(|records| records.into_iter().next())
    });
    assert_eq!(first["protocol"], "startup");
    assert_eq!(
        first["params"]["options"],
        "-c search_path=public -c statement_timeout=5s"
    );
    let started = bastion.wait_for_event("session.started");
    assert_eq!(
        started["detail"]["parameters"]["options"],
        "-c search_path=public -c statement_timeout=5s"
    );
    for options in [
        "-c session_replication_role=replica",
        "-c role=postgres",
        "--log-statement=none",
        "-c pgaudit.log=none",
        "-d 5",
    ] {
        let output = psql_to(&bastion, &postgres, &alice, "prod-db", "sslmode=require")
            .env("PGOPTIONS", options)
            .args(["-c", "select 1"])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{options}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("through the bastion"),
            "{options}: {stderr}"
        );
    }
    let refused = bastion
        .audit()
        .into_iter()
        .filter(|event| event["type"] == "session_refused")
        .count();
    assert_eq!(refused, 5);
}

#[test]
fn issue_17_a_target_may_allow_a_guarded_startup_parameter() {
    let postgres = Postgres::start();
    let password_file = postgres.dir.path().join("bastion-password");
    std::fs::write(&password_file, &postgres.password).unwrap();
    let bastion = Bastion::start_configured("", |_| {
        let target = database_target("prod-db", &postgres, &postgres.superuser, &password_file);
        format!(
            "{}\nallowed_startup_parameters = [\"session_replication_role\"]\n",
            target.trim_end()
        )
    });
    bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    let output = psql_to(&bastion, &postgres, &alice, "prod-db", "sslmode=require")
        .env("PGOPTIONS", "-c session_replication_role=replica")
        .args(["-A", "-t", "-c", "show session_replication_role"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "replica");
}

#[test]
fn issue_17_past_the_tracking_limit_the_session_ends_with_an_error() {
    let (bastion, _postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    bastion.grant("alice", "prod-db", hour());
    let mut client = RawClient::login(&bastion, &token(&bastion, "alice"), &[]).unwrap();
    for batch in 0..10 {
        for index in 0..1000 {
            client.parse(&format!("s{batch}_{index}"), "select 1");
        }
        client.sync();
        assert!(errors_in(&client.until_ready()).is_empty());
    }
    client.parse("one-too-many", "delete from pg_class");
    client.sync();
    let answer = client.until_ready();
    let (code, message) = answer
        .iter()
        .find(|(tag, _)| *tag == b'E')
        .map(|(_, body)| error_fields(body))
        .unwrap();
    assert_eq!(code, "54000", "{message}");
    assert!(message.contains("prepared statements"), "{message}");
    let ended = bastion.wait_for_event("session.ended");
    assert_eq!(ended["detail"]["reason"], "tracking_limit", "{ended}");
    assert!(
        query_logs(&bastion)
            .iter()
            .all(|line| !line["sql"].as_str().unwrap_or("").contains("pg_class")),
        "the refused statement never reached the target"
    );
}

#[test]
fn issue_17_ip_allow_applies_to_postgres_logins_and_connections() {
    // erin may log in only from 10.0.0.0/8; the test connects from 127.0.0.1.
    let (bastion, _postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    let runtime = client_runtime();
    bastion.grant("erin", "prod-db", hour());
    let erin = bastion
        .access()
        .token_key()
        .unwrap()
        .issue(
            &bastion.access().grants(true, None).unwrap().remove(0),
            bastion.now(),
        )
        .unwrap();
    assert_eq!(
        sqlstate(connect(&runtime, &bastion, "erin", "prod-db", &erin)),
        "28000"
    );
    let failed = bastion.wait_for_event("auth_failed");
    assert!(
        failed["detail"].to_string().contains("may not log in from"),
        "{failed}"
    );
    assert!(
        !bastion
            .audit_types()
            .contains(&"session.started".to_string())
    );
}

#[test]
fn issue_17_the_global_allow_list_closes_other_addresses_at_accept() {
    let postgres = Postgres::start();
    let password_file = postgres.dir.path().join("bastion-password");
    std::fs::write(&password_file, &postgres.password).unwrap();
    let bastion = Bastion::start_full("", "ip_allow = [\"10.0.0.0/8\"]", |_| {
        database_target("prod-db", &postgres, &postgres.superuser, &password_file)
    });
    let answer = raw_exchange(bastion.postgres_port(), &[0, 0, 0, 8, 4, 210, 22, 47]);
    assert!(answer.is_empty(), "closed before anything is answered");
    let refused = bastion.wait_for_event("connection.refused");
    assert_eq!(refused["detail"]["protocol"], "postgres", "{refused}");
}

#[test]
fn issue_17_five_bad_tokens_lock_the_user_at_that_address_until_unlocked() {
    let (bastion, _postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    let runtime = client_runtime();
    bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    for attempt in 0..5 {
        let bad = format!("{alice}{attempt}");
        assert_eq!(
            sqlstate(connect(&runtime, &bastion, "alice", "prod-db", &bad)),
            "28P01"
        );
    }
    let error = connect(&runtime, &bastion, "alice", "prod-db", &alice)
        .err()
        .unwrap();
    let database_error = error.as_db_error().unwrap();
    assert_eq!(database_error.code().code(), "28000");
    assert!(
        database_error
            .message()
            .contains("is locked at 127.0.0.1 until"),
        "{error}"
    );
    let locked = bastion.wait_for_event("user.locked");
    assert_eq!(locked["detail"]["scope"], "source", "{locked}");
    // The lock runs out by itself.
    bastion.advance(Duration::from_secs(31 * 60));
    let alice = token(&bastion, "alice");
    assert_eq!(
        sqlstate(connect(&runtime, &bastion, "alice", "prod-db", &alice)),
        "connected"
    );
}

#[test]
fn issue_17_a_slow_target_is_not_cut_by_the_handshake_deadline_and_its_session_ends() {
    // A "database" that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().take(4) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "unused").unwrap();
    let bastion = Bastion::start_configured("postgres_allow_plaintext = true", |_| {
        format!(
            "[limits]\nhandshake_timeout = \"1s\"\nupstream_connect_timeout = \"3s\"\n\n\
             [[targets]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"{address}\"\n\
             database = \"postgres\"\nlogin = \"x\"\npassword_file = \"{}\"\ntls = \"disable\"\n\
             requestable_by = [\"engineer\"]\napprovers = [\"leader\"]\n",
            password_file.display()
        )
    });
    let runtime = client_runtime();
    bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    let error = connect(&runtime, &bastion, "alice", "prod-db", &alice)
        .err()
        .unwrap();
    let database_error = error.as_db_error().unwrap();
    assert_eq!(database_error.code().code(), "08001", "{error}");
    assert!(database_error.message().contains("within 3s"), "{error}");
    let ended = bastion.wait_for_event("session.ended");
    assert_eq!(ended["detail"]["reason"], "target_unreachable", "{ended}");
}

#[test]
fn issue_17_cancel_requests_with_unknown_keys_are_audited_folded_and_slowed() {
    let (bastion, _postgres) = bastion_and_postgres("");
    let mut cancel = vec![0, 0, 0, 16];
    cancel.extend_from_slice(&80_877_102i32.to_be_bytes());
    cancel.extend_from_slice(&1234i32.to_be_bytes());
    cancel.extend_from_slice(&5678i32.to_be_bytes());
    let started = std::time::Instant::now();
    for _ in 0..6 {
        assert!(raw_exchange(bastion.postgres_port(), &cancel).is_empty());
    }
    // The 4th, 5th and 6th wait 0.25, 0.5 and 1 s before the bastion closes them.
    assert!(started.elapsed() >= Duration::from_millis(1_700));
    let audited = |kind: &str| {
        bastion
            .audit()
            .into_iter()
            .filter(|event| event["type"] == kind)
            .collect::<Vec<_>>()
    };
    let one_by_one = wait_for("the first refusals", Duration::from_secs(10), || {
        let events = audited("connection.refused");
        (events.len() == 5).then_some(events)
    });
    assert!(
        one_by_one[0]["detail"]["why"]
            .as_str()
            .unwrap()
            .contains("cancel")
    );
    bastion.advance(Duration::from_secs(61));
    let folded = wait_for("the folded refusals", Duration::from_secs(10), || {
        audited("source.refused").into_iter().next()
    });
    assert_eq!(folded["detail"]["failures"], 6, "{folded}");
}

#[test]
fn issue_17_review_a_stray_copy_done_cannot_hide_a_statement() {
    let (bastion, postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    postgres.psql("create table victims (id int); insert into victims values (1), (2), (3)");
    bastion.grant("alice", "prod-db", hour());
    let mut client = RawClient::login(&bastion, &token(&bastion, "alice"), &[]).unwrap();
    client.parse("", "select 1");
    client.bind_execute("");
    client.sync();
    assert!(errors_in(&client.until_ready()).is_empty());
    // A Sync, a CopyDone outside any COPY, then a new statement: the tracker once dropped the
    // Sync and logged the delete as the old `select 1`.
    client.sync();
    client.send(b'c', b"");
    client.parse("", "delete from victims");
    client.bind_execute("");
    client.sync();
    client.until_ready();
    let ran = client.until_ready();
    assert!(errors_in(&ran).is_empty(), "{ran:?}");
    client.send(b'X', b"");
    assert_eq!(postgres.psql("select count(*) from victims"), "0");
    the_delete_is_logged_as_run(&bastion);
}

#[test]
fn issue_17_review_a_named_statement_run_by_sql_execute_is_in_the_log() {
    let (bastion, postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    postgres.psql("create table victims (id int); insert into victims values (1), (2), (3)");
    bastion.grant("alice", "prod-db", hour());
    let mut client = RawClient::login(&bastion, &token(&bastion, "alice"), &[]).unwrap();
    // Prepared over the protocol, run by SQL: the Execute record would show only `execute s1`.
    client.parse("s1", "delete from victims");
    client.sync();
    assert!(errors_in(&client.until_ready()).is_empty());
    client.send(b'Q', b"execute s1\0");
    assert!(errors_in(&client.until_ready()).is_empty());
    client.send(b'X', b"");
    assert_eq!(postgres.psql("select count(*) from victims"), "0");
    let prepared = wait_for("the prepare record", Duration::from_secs(10), || {
        query_log_records(&bastion)
            .into_iter()
            .flatten()
            .find(|record| record["protocol"] == "prepare")
    });
    assert_eq!(prepared["statement"], "s1", "{prepared}");
    assert_eq!(prepared["sql"], "delete from victims", "{prepared}");
}

#[test]
fn issue_17_review_a_client_encoding_that_can_hide_quotes_ends_the_session() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let alice = token(&bastion, "alice");
    // Asked at startup: refused.
    let output = psql_to(&bastion, &postgres, &alice, "prod-db", "sslmode=require")
        .env("PGCLIENTENCODING", "SJIS")
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("UTF8"),
        "{output:?}"
    );
    // Set later in SQL: the server reports it, and the session ends before anything else runs.
    let (ok, _, stderr) = psql(
        &bastion,
        &postgres,
        &alice,
        "set client_encoding to 'SJIS'; select 'after'",
    );
    assert!(!ok);
    assert!(stderr.contains("lost track"), "{stderr}");
    let ended = wait_for("the session's end", Duration::from_secs(10), || {
        bastion.audit().into_iter().find(|event| {
            event["type"] == "session.ended" && event["detail"]["reason"] == "untracked"
        })
    });
    assert_eq!(ended["detail"]["cause"], "client");
}

#[test]
fn issue_17_review_a_commit_failing_at_sync_is_in_the_log() {
    let (bastion, postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    postgres.psql(
        "create table parent (id int primary key); \
         create table child (parent int references parent deferrable initially deferred)",
    );
    bastion.grant("alice", "prod-db", hour());
    let mut client = RawClient::login(&bastion, &token(&bastion, "alice"), &[]).unwrap();
    client.parse("", "insert into child values (7)");
    client.bind_execute("");
    client.sync();
    // The insert completes; the implicit commit at Sync fails the deferred constraint.
    assert_eq!(errors_in(&client.until_ready()), ["23503"]);
    client.send(b'X', b"");
    let failed = wait_for("the sync record", Duration::from_secs(10), || {
        query_log_records(&bastion)
            .into_iter()
            .flatten()
            .find(|record| record["protocol"] == "sync")
    });
    assert_eq!(failed["error"]["sqlstate"], "23503", "{failed}");
}

/// Issue #18: statements are no longer audit rows, so the query log must be tamper-evident on
/// its own. `audit verify` walks each log against its `pg.checkpoint`s and names the first bad
/// line: a changed line, a removed one, a moved pair, lines removed at the end, and a rewrite
/// with every `h` recomputed (found at the checkpoint it no longer reaches).
#[test]
fn issue_18_audit_verify_names_the_first_tampered_query_log_line() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let script = bastion.config.dir.path().join("five.sql");
    let sql = "select 1;\nselect 2;\nselect 3;\ndelete from pg_class where false;\nselect 5;\n";
    std::fs::write(&script, sql).unwrap();
    let output = psql_script(&bastion, &postgres, &token, &script);
    assert!(output.status.success(), "{output:?}");
    wait_for_session_end(&bastion);
    let path = support::files_under(&bastion.config.dir.path().join("recordings"), ".pg.jsonl")
        .pop()
        .expect("a query log");
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 6, "startup and five statements: {original}");
    let verify = || bastion.audit_verify();
    assert_eq!(verify(), (true, String::new()));
    let joined = |lines: &[String]| {
        lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>()
    };
    let owned: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
    // The `h` a line would need to follow `previous`, for the rewrite that recomputes them all.
    let rehash = |lines: &[String]| {
        let mut previous = hex::encode(Sha256::digest(session_id_of(&bastion).as_bytes()));
        lines
            .iter()
            .map(|line| {
                let body = &line[..line.len() - 72];
                let unsigned = format!("{body}}}");
                let h = hex::encode(Sha256::digest(format!("{previous}{unsigned}").as_bytes()));
                previous = h.clone();
                format!("{body},\"h\":\"{h}\"}}")
            })
            .collect::<Vec<String>>()
    };
    let mut changed = owned.clone();
    changed[3] = changed[3].replace("select 3", "select 4");
    let mut moved = owned.clone();
    moved.swap(2, 3);
    let mut removed = owned.clone();
    removed.remove(4);
    let mut rewritten = owned.clone();
    rewritten[4] = rewritten[4].replace("where false", "where true ");
    let rewritten = rehash(&rewritten);
    let cases: Vec<(&str, String, &str)> = vec![
        ("a changed line", joined(&changed), "line 4 "),
        ("a moved pair", joined(&moved), "line 3 "),
        ("a removed line", joined(&removed), "line 5 "),
        (
            "lines removed at the end",
            joined(&owned[..4]),
            "ends after line 4",
        ),
        (
            "a rewrite with its hashes recomputed",
            joined(&rewritten),
            "to 6 no longer lead",
        ),
    ];
    bastion.assert_tampering_named(&path, &original, &cases);
}

/// The id of the bastion's only session.
fn session_id_of(bastion: &Bastion) -> String {
    bastion
        .audit()
        .into_iter()
        .find(|event| event["type"] == "session.started")
        .and_then(|event| event["session_id"].as_str().map(str::to_string))
        .expect("a session")
}

/// Waits (20 s at most) until a session has ended.
fn wait_for_session_end(bastion: &Bastion) {
    wait_for("the session to end", Duration::from_secs(20), || {
        bastion
            .audit_types()
            .iter()
            .any(|kind| kind == "session.ended")
            .then_some(())
    });
}

/// The file sink's lines: every file's, in file-name order, parsed.
fn sink_lines(dir: &std::path::Path) -> Vec<Value> {
    let mut files = support::files_under(dir, ".jsonl");
    files.sort();
    files
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits until every sink holds the chain up to its head.
fn wait_for_sinks(bastion: &Bastion) {
    wait_for("the sinks to catch up", Duration::from_secs(30), || {
        let (code, stdout, _) =
            support::run(&mut bastion.config.portcullis(&["audit", "sinks", "--json"]));
        assert_eq!(code, 0);
        let sinks: Value = serde_json::from_str(&stdout).unwrap();
        sinks["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|sink| sink["lag_events"] == 0)
            .then_some(())
    });
}

/// Issue #18: a file sink gets every control event of the chain in order, and every statement
/// of a database session as its own event (from the query log, anchored by its checkpoints),
/// each once with a stable id, the chain head with them; across a restart it goes on from its
/// cursor.
#[test]
fn issue_18_a_file_sink_gets_every_event_and_statement_once_in_order() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "[[audit.sinks]]\nname = \"siem\"\nkind = \"file\"\ndir = \"{}\"\n",
        sink_dir.path().display()
    );
    let (mut bastion, postgres) = bastion_and_postgres_with("", &sink);
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    const COUNT: usize = 2_000;
    let script = bastion.config.dir.path().join("many.sql");
    let statements: String = (0..COUNT).map(|n| format!("select {n};\n")).collect();
    std::fs::write(&script, statements).unwrap();
    let output = psql_script(&bastion, &postgres, &token, &script);
    assert!(output.status.success(), "{output:?}");
    wait_for_session_end(&bastion);
    // Across a restart, and events after it.
    bastion.restart();
    bastion.grant("alice", "other-db", hour());
    wait_for_sinks(&bastion);

    let lines = sink_lines(sink_dir.path());
    let audit = bastion
        .access()
        .store()
        .read(|tx| tx.audit_tail(100_000))
        .unwrap();
    let control: Vec<&str> = lines
        .iter()
        .filter(|line| line["type"] != "pg.statement" && line["type"] != "chain.head")
        .map(|line| line["id"].as_str().unwrap())
        .collect();
    let chain: Vec<&str> = audit.iter().map(|record| record.id.as_str()).collect();
    assert_eq!(control, chain, "every control event once, in chain order");
    let statements: Vec<&Value> = lines
        .iter()
        .filter(|line| line["type"] == "pg.statement")
        .collect();
    let sql: Vec<&str> = statements
        .iter()
        .filter(|line| line["statement"]["protocol"] == "simple")
        .map(|line| line["statement"]["sql"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..COUNT).map(|n| format!("select {n};")).collect();
    assert_eq!(sql, expected, "every statement once, in order");
    let ids: std::collections::BTreeSet<&str> = statements
        .iter()
        .map(|line| line["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), statements.len(), "statement ids are unique");
    let first = statements[0];
    assert_eq!(first["line"], 1);
    assert_eq!(first["actor"], "alice");
    assert_eq!(first["target"], "prod-db");
    assert!(first["statement"]["h"].as_str().is_some(), "{first}");
    let head = lines
        .iter()
        .find(|line| line["type"] == "chain.head")
        .expect("the chain head");
    assert!(head["seq"].as_i64().unwrap() > 0 && head["hash"].as_str().unwrap().len() == 64);
}

/// Issue #18: the file sink's files rotate at UTC midnight, by the events' time.
#[test]
fn issue_18_the_file_sink_rotates_at_utc_midnight() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "[[audit.sinks]]\nname = \"daily\"\nkind = \"file\"\ndir = \"{}\"\nevents = [\"control\"]\n",
        sink_dir.path().display()
    );
    let (bastion, _postgres) = bastion_and_postgres_with("", &sink);
    let now = bastion.now();
    let midnight = (now.date() + time::Duration::days(1))
        .midnight()
        .assume_utc();
    bastion.advance((midnight - now - time::Duration::seconds(5)).unsigned_abs());
    bastion.grant("alice", "prod-db", hour());
    bastion.advance(Duration::from_secs(10));
    bastion.grant("alice", "other-db", hour());
    wait_for_sinks(&bastion);
    let mut files: Vec<String> = support::files_under(sink_dir.path(), ".jsonl")
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let day = |date: time::Date| {
        format!(
            "audit-{:04}-{:02}-{:02}.jsonl",
            date.year(),
            u8::from(date.month()),
            date.day()
        )
    };
    assert!(files.contains(&day(now.date())), "{files:?}");
    assert!(files.contains(&day(midnight.date())), "{files:?}");
    let after = std::fs::read_to_string(sink_dir.path().join(day(midnight.date()))).unwrap();
    assert!(
        after.contains("other-db"),
        "the second grant is in the new day's file"
    );
    let before = std::fs::read_to_string(sink_dir.path().join(day(now.date()))).unwrap();
    assert!(!before.contains("other-db"));
}

/// The sink database's tables, counted.
fn sink_counts(sink: &Postgres) -> (u64, u64, u64) {
    let counts = sink.psql(
        "select (select count(*) from portcullis_events), \
                (select count(distinct seq) from portcullis_events), \
                (select count(*) from portcullis_statements)",
    );
    let numbers: Vec<u64> = counts.split('|').map(|n| n.parse().unwrap()).collect();
    (numbers[0], numbers[1], numbers[2])
}

/// Appends `count` control events straight to the store, in batches (as fast as a busy bastion
/// makes them, without a session each).
fn append_events(bastion: &Bastion, count: usize) {
    let events: Vec<portcullis::audit::AuditEvent> = (0..1000)
        .map(|index| portcullis::audit::AuditEvent::Cancelled {
            request_id: format!("r-{index}"),
            requester: "alice".to_string(),
            target: "prod-db".to_string(),
        })
        .collect();
    for _ in 0..count / 1000 {
        let now = bastion.now();
        bastion
            .access()
            .store()
            .write(|tx| tx.append_audits(&events, now).map(|_| ()))
            .unwrap();
    }
}

/// Moves every sink's cursor back `by` events, as a crash between a sink's commit and the
/// cursor's move would leave it.
fn rewind_sink(bastion: &Bastion, by: i64) {
    state_database(bastion)
        .execute("UPDATE sink_cursors SET seq = seq - ?1", [by])
        .unwrap();
}

/// The bastion's own SQLite database, opened beside it (to break or rewind it).
fn state_database(bastion: &Bastion) -> rusqlite::Connection {
    rusqlite::Connection::open(
        bastion
            .config
            .state_dir()
            .join(portcullis::server::DATABASE_FILE),
    )
    .unwrap()
}

/// Issue #18: a PostgreSQL sink holds every control event and every statement exactly once.
/// 10,000 events and 50,000 statements; then the sink's server stops while 5,000 more events
/// and more statements are made (the bastion goes on; `audit sinks` shows the lag and the
/// error); a crash between the sink's commit and the cursor's move is made by moving the cursor
/// back (a real `kill -9` of the process is not run here); the server starts again, and in the
/// end each event and statement is there once and `audit verify --sink` passes.
#[test]
fn issue_18_a_postgres_sink_holds_every_event_and_statement_exactly_once() {
    let mut sink = Postgres::start();
    let url_file = sink.dir.path().join("sink-url");
    std::fs::write(
        &url_file,
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
            sink.password, sink.port
        ),
    )
    .unwrap();
    let config = format!(
        "[[audit.sinks]]\nname = \"warehouse\"\nkind = \"postgres\"\nurl_file = \"{}\"\n\
         tls = \"disable\"\n",
        url_file.display()
    );
    let (bastion, postgres) = bastion_and_postgres_with("", &config);
    // A login name with a NUL (russh sends what OpenSSH will not): its auth_failed event must
    // not stop the sink, whose `text` columns refuse NUL (issue #18 review).
    let refused = bastion
        .runtime
        .block_on(bastion.russh_client("alice", "mallory\0x"));
    assert!(refused.is_none());
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    append_events(&bastion, 10_000);
    let script = bastion.config.dir.path().join("many.sql");
    let statements: String = (0..50_000).map(|n| format!("select {n};\n")).collect();
    std::fs::write(&script, statements).unwrap();
    let output = psql_script(&bastion, &postgres, &token, &script);
    assert!(output.status.success(), "{output:?}");
    let lines = || query_log_records(&bastion).into_iter().flatten().count() as u64;
    let chain = || {
        bastion
            .access()
            .store()
            .read(|tx| tx.audit_head())
            .unwrap()
            .map_or(0, |(seq, _)| seq as u64)
    };
    let (events, distinct) = wait_for("the sink to catch up", Duration::from_secs(120), || {
        let (events, distinct, statements) = sink_counts(&sink);
        (events == chain() && statements == lines()).then_some((events, distinct))
    });
    assert_eq!(events, distinct, "no event twice");
    assert!(lines() > 50_000);

    // The sink's server goes away; the bastion goes on.
    sink.stop();
    append_events(&bastion, 5_000);
    let output = psql_script(&bastion, &postgres, &token, &script);
    assert!(
        output.status.success(),
        "sessions do not wait for a sink: {output:?}"
    );
    wait_for("the sink's error to show", Duration::from_secs(30), || {
        let status = bastion.sink_status();
        (status["last_error"].is_string() && status["lag_events"].as_u64() > Some(5_000))
            .then_some(())
    });
    // A crash after the sink committed a batch but before the cursor moved: the batch again.
    rewind_sink(&bastion, 500);
    sink.start_again();
    wait_for(
        "the sink to catch up again",
        Duration::from_secs(120),
        || {
            let (events, _, statements) = sink_counts(&sink);
            (events == chain() && statements == lines()).then_some(())
        },
    );
    let (events, distinct, statements) = sink_counts(&sink);
    assert_eq!(events, distinct, "no event twice");
    assert_eq!(events, chain());
    assert_eq!(statements, lines(), "each statement once");
    let status = bastion.sink_status();
    assert!(status["last_error"].is_null(), "{status}");
    let (code, stdout, stderr) =
        support::run(
            &mut bastion
                .config
                .portcullis(&["audit", "verify", "--sink", "warehouse"]),
        );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let verify_sink = || {
        support::run(
            &mut bastion
                .config
                .portcullis(&["audit", "verify", "--sink", "warehouse"]),
        )
    };

    // A statement changed in the sink, then one removed, is named by its line.
    let first_session = "(SELECT min(session_id) FROM portcullis_statements)".to_string();
    sink.psql(&format!(
        "UPDATE portcullis_statements SET record = record || ' ' \
         WHERE line = 7 AND session_id = {first_session}"
    ));
    let (code, _, stderr) = verify_sink();
    assert_eq!(code, 1);
    assert!(stderr.contains("statement line 7"), "{stderr}");
    sink.psql(&format!(
        "UPDATE portcullis_statements SET record = rtrim(record, ' ') \
         WHERE line = 7 AND session_id = {first_session}"
    ));
    assert_eq!(verify_sink().0, 0, "restored");
    // A queryable column changed, its hashed text left alone, is named too.
    sink.psql("UPDATE portcullis_events SET actor = 'someone-else' WHERE seq = 40");
    let (code, _, stderr) = verify_sink();
    assert_eq!(code, 1);
    assert!(stderr.contains("seq 40: its columns differ"), "{stderr}");
    sink.psql("UPDATE portcullis_events SET actor = canonical::jsonb ->> 4 WHERE seq = 40");
    sink.psql(&format!(
        "UPDATE portcullis_statements SET sql = 'select 0' \
         WHERE line = 5 AND session_id = {first_session}"
    ));
    let (code, _, stderr) = verify_sink();
    assert_eq!(code, 1);
    assert!(
        stderr.contains("statement line 5: its columns differ"),
        "{stderr}"
    );
    sink.psql(&format!(
        "UPDATE portcullis_statements SET sql = record::jsonb ->> 'sql' \
         WHERE line = 5 AND session_id = {first_session}"
    ));
    assert_eq!(verify_sink().0, 0, "restored");
    sink.psql(&format!(
        "DELETE FROM portcullis_statements WHERE line = 3 AND session_id = {first_session}"
    ));
    let (code, _, stderr) = verify_sink();
    assert_eq!(code, 1);
    assert!(stderr.contains("statement line 3 is missing"), "{stderr}");

    // Tampering with an event in the sink is named.
    sink.psql(
        "UPDATE portcullis_events SET detail = '{}' , canonical = canonical || ' ' WHERE seq = 42",
    );
    let (code, _, stderr) =
        support::run(
            &mut bastion
                .config
                .portcullis(&["audit", "verify", "--sink", "warehouse"]),
        );
    assert_eq!(code, 1);
    assert!(stderr.contains("seq 42"), "{stderr}");

    // Another history under the same seqs (a reset store, a changed sink) is refused, not
    // skipped in silence by ON CONFLICT DO NOTHING.
    let last = chain();
    sink.psql(&format!(
        "UPDATE portcullis_events SET hash = 'rewritten' WHERE seq = {last}"
    ));
    rewind_sink(&bastion, 1);
    let refused = bastion.wait_for_event("sink.refused");
    assert!(
        refused["detail"]["why"]
            .as_str()
            .unwrap()
            .contains(&format!("seq {last} with another hash")),
        "{refused}"
    );
}

/// Issue #18: `kill -9` of a bastion process in the middle of delivering to a postgres sink
/// loses nothing and duplicates nothing: started again, it goes on from its cursor, and the
/// sink ends with every event exactly once.
#[test]
fn issue_18_kill_9_in_the_middle_of_delivery_loses_and_duplicates_nothing() {
    let sink = Postgres::start();
    let url_file = sink.dir.path().join("sink-url");
    std::fs::write(
        &url_file,
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
            sink.password, sink.port
        ),
    )
    .unwrap();
    let config = support::TestConfig::new(&format!(
        "[[audit.sinks]]\nname = \"warehouse\"\nkind = \"postgres\"\nurl_file = \"{}\"\n\
         tls = \"disable\"\n",
        url_file.display()
    ));
    std::fs::create_dir_all(config.state_dir()).unwrap();
    // 30,000 events waiting before the bastion starts.
    let store =
        portcullis::store::Store::open(&config.state_dir().join(portcullis::server::DATABASE_FILE))
            .unwrap();
    let events: Vec<portcullis::audit::AuditEvent> = (0..1000)
        .map(|index| portcullis::audit::AuditEvent::Cancelled {
            request_id: format!("r-{index}"),
            requester: "alice".to_string(),
            target: "prod-db".to_string(),
        })
        .collect();
    for _ in 0..30 {
        let now = time::OffsetDateTime::now_utc();
        store
            .write(|tx| tx.append_audits(&events, now).map(|_| ()))
            .unwrap();
    }
    let chain = || {
        store
            .read(|tx| tx.audit_head())
            .unwrap()
            .map_or(0, |(seq, _)| seq as u64)
    };
    // The tables made by an operator from `audit sink-schema`, as the README says.
    let (code, ddl, _) = support::run(&mut config.portcullis(&["audit", "sink-schema"]));
    assert_eq!(code, 0);
    sink.psql(&ddl);
    let held = || {
        let counts =
            sink.psql("select count(*) || '|' || count(distinct seq) from portcullis_events");
        let numbers: Vec<u64> = counts.split('|').map(|n| n.parse().unwrap()).collect();
        (numbers[0], numbers[1])
    };
    let serve = || {
        config
            .portcullis(&["serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut bastion = serve();
    wait_for("the sink to be part way", Duration::from_secs(60), || {
        let (events, _) = held();
        (events > 0).then_some(())
    });
    bastion.kill().unwrap(); // SIGKILL
    bastion.wait().unwrap();
    let (at_kill, _) = held();
    assert!(
        at_kill < chain(),
        "killed before the end: {at_kill} of {}",
        chain()
    );
    let mut bastion = serve();
    let (events, distinct) = wait_for("the sink to catch up", Duration::from_secs(120), || {
        let (events, distinct) = held();
        (events >= chain()).then_some((events, distinct))
    });
    assert_eq!(events, chain(), "every event");
    assert_eq!(events, distinct, "none twice");
    let (code, stdout, stderr) =
        support::run(&mut config.portcullis(&["audit", "verify", "--sink", "warehouse"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let _ = std::process::Command::new("kill")
        .args(["-INT", &bastion.id().to_string()])
        .status();
    bastion.wait().unwrap();
}

/// `moto_server` (PyPI's moto, the S3-compatible test server): on the PATH or where
/// scripts/test installs it.
fn moto_server() -> PathBuf {
    let installed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/moto/bin/moto_server");
    if installed.exists() {
        return installed;
    }
    support::require_binary(
        "moto_server",
        &[],
        "moto[server] (pip; scripts/test installs it)",
    )
}

/// A moto S3 server on `port` with the bucket `archive`.
fn start_s3(port: u16) -> std::process::Child {
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the S3 server", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let (status, _) = http(port, "PUT", "/archive");
    assert_eq!(status, 200, "bucket created");
    child
}

/// A plain HTTP/1.0 request to 127.0.0.1:`port`: (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, response[split + 4..].to_vec())
}

/// Issue #18: finished query logs go to an S3-compatible bucket (and a folder), are read back
/// and checked against their `recording.finalized` hash, and only then marked archived. With
/// the bucket's server down, the sink waits and says why; once it is up, the copy is made.
#[test]
fn issue_18_finished_logs_are_archived_to_s3_and_a_folder_and_verified() {
    let port = support::free_port();
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("id"), "test-key").unwrap();
    std::fs::write(keys.path().join("secret"), "test-secret").unwrap();
    let folder = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[[audit.sinks]]\nname = \"bucket\"\nkind = \"s3\"\nbucket = \"archive\"\n\
         endpoint = \"http://127.0.0.1:{port}\"\nprefix = \"portcullis/\"\n\
         access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n\n\
         [[audit.sinks]]\nname = \"volume\"\nkind = \"folder\"\ndir = \"{}\"\n",
        keys.path().join("id").display(),
        keys.path().join("secret").display(),
        folder.path().display()
    );
    let (bastion, postgres) = bastion_and_postgres_with("", &sinks);
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let (ok, _, stderr) = psql(&bastion, &postgres, &token, "select 42");
    assert!(ok, "{stderr}");
    let finalized = bastion.wait_for_event("recording.finalized");
    let path = PathBuf::from(finalized["detail"]["path"].as_str().unwrap());
    let sha256 = finalized["detail"]["sha256"].as_str().unwrap().to_string();
    let relative = path
        .strip_prefix(bastion.config.dir.path().join("recordings"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // The bucket's server is down: the sink says so and holds.
    let status = |name: &str| {
        let (_, stdout, _) =
            support::run(&mut bastion.config.portcullis(&["audit", "sinks", "--json"]));
        let sinks: Value = serde_json::from_str(&stdout).unwrap();
        sinks["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|sink| sink["name"] == name)
            .cloned()
            .unwrap()
    };
    wait_for("the archive's error", Duration::from_secs(30), || {
        status("bucket")["last_error"].is_string().then_some(())
    });
    let mut s3 = start_s3(port);
    wait_for("the archive to catch up", Duration::from_secs(60), || {
        (status("bucket")["lag_events"] == 0 && status("volume")["lag_events"] == 0).then_some(())
    });
    // Read back as any S3 client would, signed with the same keys.
    let object = bastion.runtime.block_on(async {
        use object_store::ObjectStore;
        let bucket = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("archive")
            .with_region("us-east-1")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_access_key_id("test-key")
            .with_secret_access_key("test-secret")
            .build()
            .unwrap();
        let key = object_store::path::Path::parse(format!("portcullis/{relative}")).unwrap();
        bucket.get(&key).await.unwrap().bytes().await.unwrap()
    });
    assert_eq!(
        hex::encode(Sha256::digest(&object)),
        sha256,
        "the bucket's copy"
    );
    let copied = std::fs::read(folder.path().join(&relative)).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&copied)),
        sha256,
        "the folder's copy"
    );
    let session = finalized["session_id"].as_str().unwrap().to_string();
    let archived = bastion
        .access()
        .store()
        .read(|tx| tx.archived_at(&session, 0))
        .unwrap();
    assert!(archived.is_some(), "marked archived once verified");
    let _ = s3.kill();
    let _ = s3.wait();
}

/// Issue #18: the daily retention job removes local events and recordings older than
/// `retention_days` only once every sink holds them and they are archived. A sink that holds
/// back keeps everything; once it catches up the next run removes the old session's events and
/// its query log (the archive keeps its copy), keeps what is newer, and `audit verify` passes
/// from the anchor the run leaves. A chain cut further than retention cut it fails.
#[test]
fn issue_18_retention_removes_only_what_every_sink_holds_and_the_archive_has() {
    let files = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    // The third sink's folder is a file for now, so it fails and holds at its cursor.
    let blocker = tempfile::tempdir().unwrap();
    let stuck = blocker.path().join("archive");
    std::fs::write(&stuck, "not a folder").unwrap();
    let sinks = format!(
        "[[audit.sinks]]\nname = \"files\"\nkind = \"file\"\ndir = \"{}\"\n\n\
         [[audit.sinks]]\nname = \"volume\"\nkind = \"folder\"\ndir = \"{}\"\n\n\
         [[audit.sinks]]\nname = \"stuck\"\nkind = \"folder\"\ndir = \"{}\"\n",
        files.path().display(),
        folder.path().display(),
        stuck.display()
    );
    let (bastion, postgres) = bastion_and_postgres_with("", &sinks);
    bastion.grant("alice", "prod-db", hour());
    let (ok, _, stderr) = psql(&bastion, &postgres, &token(&bastion, "alice"), "select 42");
    assert!(ok, "{stderr}");
    let finalized = bastion.wait_for_event("recording.finalized");
    let old_log = PathBuf::from(finalized["detail"]["path"].as_str().unwrap());
    let lag = |name: &str| {
        let (_, stdout, _) =
            support::run(&mut bastion.config.portcullis(&["audit", "sinks", "--json"]));
        let sinks: Value = serde_json::from_str(&stdout).unwrap();
        sinks["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|sink| sink["name"] == name)
            .map(|sink| sink["lag_events"].as_i64().unwrap())
            .unwrap()
    };
    wait_for("two sinks to catch up", Duration::from_secs(30), || {
        (lag("files") == 0 && lag("volume") == 0).then_some(())
    });
    let runs = || -> Vec<Value> {
        bastion
            .audit()
            .into_iter()
            .filter(|event| event["type"] == "retention.ran")
            .collect()
    };

    // A year and a day on: the stuck sink holds everything back.
    bastion.advance(Duration::from_secs(366 * 86_400));
    let first = wait_for("the daily run", Duration::from_secs(20), || {
        runs().first().cloned()
    });
    assert_eq!(first["actor"], "portcullis");
    assert_eq!(first["detail"]["removed_events"], 0, "{first}");
    assert_eq!(first["detail"]["removed_recordings"], 0, "{first}");
    assert_eq!(first["detail"]["held_by"], json!(["stuck"]));
    assert!(old_log.exists(), "an unarchived-everywhere query log stays");
    let (verified, stderr) = bastion.audit_verify();
    assert!(verified, "{stderr}");

    // The stuck sink's folder appears; it catches up. A new session, within retention.
    std::fs::remove_file(&stuck).unwrap();
    bastion.grant("alice", "prod-db", hour());
    let (ok, _, stderr) = psql(&bastion, &postgres, &token(&bastion, "alice"), "select 43");
    assert!(ok, "{stderr}");
    let new_log = wait_for("the new query log", Duration::from_secs(10), || {
        bastion
            .audit()
            .into_iter()
            .filter(|event| event["type"] == "recording.finalized")
            .map(|event| PathBuf::from(event["detail"]["path"].as_str().unwrap()))
            .find(|path| *path != old_log)
    });
    wait_for("every sink to catch up", Duration::from_secs(90), || {
        (lag("stuck") == 0 && lag("files") == 0).then_some(())
    });

    // Both sessions' statements are searchable (issue #19) until retention removes one.
    let index = bastion.access().search_index().unwrap().clone();
    let searched = |text: &str| index.search(text, 10, None).unwrap().len();
    wait_for("both statements indexed", Duration::from_secs(15), || {
        (searched("select 42") == 1 && searched("select 43") == 1).then_some(())
    });

    // The next day's run removes the old session, and only it.
    bastion.advance(Duration::from_secs(86_400 + 1));
    let second = wait_for("the next daily run", Duration::from_secs(20), || {
        runs().get(1).cloned()
    });
    let detail = &second["detail"];
    assert!(detail["removed_events"].as_u64().unwrap() > 5, "{second}");
    assert_eq!(detail["removed_recordings"], 1, "{second}");
    assert_eq!(detail["held_by"], json!([]));
    assert!(!old_log.exists(), "the old query log is removed");
    let relative = old_log
        .strip_prefix(bastion.config.dir.path().join("recordings"))
        .unwrap();
    assert!(
        folder.path().join(relative).exists(),
        "the archive keeps it"
    );
    assert!(new_log.exists(), "a query log within retention stays");
    wait_for(
        "the old session out of the index",
        Duration::from_secs(10),
        || (searched("select 42") == 0).then_some(()),
    );
    assert_eq!(
        searched("select 43"),
        1,
        "the kept session stays searchable"
    );
    let anchor = detail["chain_starts_after"]["seq"].as_i64().unwrap();
    let kept = bastion
        .access()
        .store()
        .read(|tx| tx.audit_first())
        .unwrap()
        .unwrap();
    assert_eq!(kept.0, anchor + 1, "the chain starts after the anchor");
    assert_eq!(
        kept.1,
        detail["chain_starts_after"]["hash"].as_str().unwrap()
    );
    let (verified, stderr) = bastion.audit_verify();
    assert!(verified, "verifies from the anchor: {stderr}");
    // The file sink still has every event from seq 1.
    let delivered: Vec<i64> = sink_lines(files.path())
        .iter()
        .filter_map(|line| line["seq"].as_i64())
        .collect();
    assert_eq!(delivered.first(), Some(&1));

    // Removing one more record at the start is not retention's doing: named.
    state_database(&bastion)
        .execute("DELETE FROM audit_events WHERE seq = ?1", [anchor + 1])
        .unwrap();
    let (verified, stderr) = bastion.audit_verify();
    assert!(!verified);
    assert!(stderr.contains("removed outside retention"), "{stderr}");
    // A retention run does not make the cut look like its own (issue #18 review): it removes
    // nothing, keeps the old anchor, and verify still fails.
    let (code, stdout, stderr) =
        support::run(&mut bastion.config.portcullis(&["audit", "retention", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["removed_events"], 0, "{report}");
    assert!(
        report["held_by"][0]
            .as_str()
            .unwrap()
            .contains("does not start where the last run left it"),
        "{report}"
    );
    let (verified, stderr) = bastion.audit_verify();
    assert!(!verified, "still fails after a retention run");
    assert!(stderr.contains("removed outside retention"), "{stderr}");
}

/// Issue #18: a file sink with `format = "ocsf"` writes statements as OCSF Datastore Activity,
/// the activity by the statement's verb, failures as failures, the session as Datastore
/// Connect, and the chain head as a Base Event.
#[test]
fn issue_18_a_file_sink_in_ocsf_writes_statements_as_datastore_activity() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "[[audit.sinks]]\nname = \"siem\"\nkind = \"file\"\ndir = \"{}\"\nformat = \"ocsf\"\n",
        sink_dir.path().display()
    );
    let (bastion, postgres) = bastion_and_postgres_with("", &sink);
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let script = bastion.config.dir.path().join("ocsf.sql");
    std::fs::write(
        &script,
        "create temp table t (a int);\ninsert into t values (1);\nselect * from t;\n\
         delete from t;\nselect * from missing_table;\n",
    )
    .unwrap();
    let _ = psql_script(&bastion, &postgres, &token, &script);
    bastion.wait_for_event("session.ended");
    wait_for_sinks(&bastion);
    let lines = sink_lines(sink_dir.path());
    let statements: Vec<(u64, u64, String)> = lines
        .iter()
        .filter(|line| line["message"] == "pg.statement")
        .inspect(|line| assert_eq!(line["class_uid"], 6005, "{line}"))
        // psql's own requests before the script (no SQL text) are Other.
        .filter(|line| line["query_info"]["query_string"] != "")
        .map(|line| {
            assert_eq!(line["actor"]["user"]["name"], "alice");
            assert_eq!(line["database"]["name"], "prod-db");
            (
                line["activity_id"].as_u64().unwrap(),
                line["status_id"].as_u64().unwrap(),
                line["query_info"]["query_string"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64, String)> = [
        (6, 1, "create temp table t (a int);"),
        (5, 1, "insert into t values (1);"),
        (4, 1, "select * from t;"),
        (7, 1, "delete from t;"),
        (4, 2, "select * from missing_table;"),
    ]
    .iter()
    .map(|(activity, status, sql)| (*activity, *status, sql.to_string()))
    .collect();
    assert_eq!(statements, expected);
    let failed = lines
        .iter()
        .find(|line| line["message"] == "pg.statement" && line["status_id"] == 2)
        .unwrap();
    assert_eq!(failed["status_code"], "42P01", "{failed}");
    let started = lines
        .iter()
        .find(|line| line["message"] == "session.started")
        .unwrap();
    assert_eq!(
        (&started["class_uid"], &started["activity_id"]),
        (&json!(6005), &json!(3))
    );
    let head = lines
        .iter()
        .find(|line| line["message"] == "chain.head")
        .expect("the chain head");
    assert_eq!(head["class_uid"], 0);
    assert!(head["unmapped"]["portcullis"]["seq"].as_i64().unwrap() > 0);
}

/// Issue #18 review: once SCRAM has started, a hostile "database" (or a man in the middle on a
/// target without verified TLS) can neither skip the server's signature with an early
/// AuthenticationOk nor downgrade to cleartext or md5 to collect the injected password.
#[test]
fn issue_18_a_target_cannot_skip_or_downgrade_scram() {
    use std::io::{Read, Write};
    const PASSWORD: &str = "injected-secret-password";
    // What the hostile server sends after the client's SCRAM start, by case.
    let cases: [(&str, Vec<u8>); 3] = [
        ("an early AuthenticationOk", {
            let mut ok = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
            ok.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
            ok
        }),
        ("a switch to cleartext", vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3]),
        (
            "a switch to md5",
            vec![b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4],
        ),
    ];
    for (case, reply) in cases {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut length = [0u8; 4];
            stream.read_exact(&mut length).unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(length) as usize - 4];
            stream.read_exact(&mut startup).unwrap();
            let mechanisms = b"SCRAM-SHA-256\0\0";
            let mut sasl = vec![b'R'];
            sasl.extend_from_slice(&((8 + mechanisms.len()) as u32).to_be_bytes());
            sasl.extend_from_slice(&10u32.to_be_bytes());
            sasl.extend_from_slice(mechanisms);
            stream.write_all(&sasl).unwrap();
            let mut header = [0u8; 5];
            stream.read_exact(&mut header).unwrap();
            let mut initial =
                vec![
                    0u8;
                    u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4
                ];
            stream.read_exact(&mut initial).unwrap();
            stream.write_all(&reply).unwrap();
            // Whatever the bastion sends next, until it closes.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            rest
        });
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        let bastion = Bastion::start_configured("postgres_allow_plaintext = true", |_| {
            format!(
                "[[targets]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"{address}\"\n\
                 database = \"postgres\"\nlogin = \"x\"\npassword_file = \"{}\"\n\
                 tls = \"disable\"\nrequestable_by = [\"engineer\"]\napprovers = [\"leader\"]\n",
                password_file.display()
            )
        });
        let runtime = client_runtime();
        bastion.grant("alice", "prod-db", hour());
        let alice = token(&bastion, "alice");
        let result = connect(&runtime, &bastion, "alice", "prod-db", &alice);
        assert!(result.is_err(), "{case}: the login went through");
        let sent = server.join().unwrap();
        let text = String::from_utf8_lossy(&sent);
        assert!(
            !text.contains(PASSWORD),
            "{case}: the password was sent: {text:?}"
        );
        let md5 =
            postgres_protocol::authentication::md5_hash(b"x", PASSWORD.as_bytes(), [1, 2, 3, 4]);
        assert!(!text.contains(&md5), "{case}: an md5 answer was sent");
    }
}

/// Issue #18 review: while a sink lags, a query log changed on disk is not shipped as if it were
/// the record: the sink checks each line's chain up to its checkpoint, holds, and says why.
#[test]
fn issue_18_a_sink_does_not_ship_a_query_log_changed_while_it_lagged() {
    let blocker = tempfile::tempdir().unwrap();
    let sink_dir = blocker.path().join("sink");
    std::fs::write(&sink_dir, "not a folder yet").unwrap();
    let sink = format!(
        "[[audit.sinks]]\nname = \"siem\"\nkind = \"file\"\ndir = \"{}\"\n",
        sink_dir.display()
    );
    let (bastion, postgres) = bastion_and_postgres_with("", &sink);
    bastion.grant("alice", "prod-db", hour());
    let token = token(&bastion, "alice");
    let script = bastion.config.dir.path().join("few.sql");
    std::fs::write(&script, "select 101;\nselect 102;\nselect 103;\n").unwrap();
    assert!(
        psql_script(&bastion, &postgres, &token, &script)
            .status
            .success()
    );
    let finalized = bastion.wait_for_event("recording.finalized");
    let log = PathBuf::from(finalized["detail"]["path"].as_str().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("select 102;"));
    std::fs::write(&log, text.replace("select 102;", "select 999;")).unwrap();
    std::fs::remove_file(&sink_dir).unwrap();
    let error = wait_for(
        "the sink to refuse the changed log",
        Duration::from_secs(60),
        || {
            bastion.sink_status()["last_error"]
                .as_str()
                .filter(|error| error.contains("the query log was changed"))
                .map(str::to_string)
        },
    );
    assert!(error.contains("line"), "{error}");
    let shipped = sink_lines(&sink_dir);
    assert!(
        shipped
            .iter()
            .all(|line| !line.to_string().contains("select 999")),
        "the changed line was shipped"
    );
}

/// Issue #19: `sessions` over SSH and on the host CLI lists a real database session with its
/// grant's reason and approvers, its statements and its query log; the engineer sees their own,
/// the approver of the target sees it too, and each search is audited.
#[test]
fn issue_19_sessions_lists_a_database_session_with_its_grant() {
    let (bastion, postgres) = bastion_and_postgres("");
    bastion.grant("alice", "prod-db", hour());
    let (ok, _, stderr) = psql(&bastion, &postgres, &token(&bastion, "alice"), "select 42");
    assert!(ok, "{stderr}");
    bastion.wait_for_event("session.ended");
    let listed = |user: &str, args: &[&str]| -> Vec<Value> {
        let mut words = vec!["sessions", "--json"];
        words.extend_from_slice(args);
        let (code, stdout, stderr) = bastion.ssh(user, &words);
        assert_eq!(code, 0, "{user}: {stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()["sessions"]
            .as_array()
            .unwrap()
            .clone()
    };
    let mine = listed("alice", &[]);
    assert_eq!(mine.len(), 1, "{mine:?}");
    let session = &mine[0];
    assert_eq!(session["user"], "alice");
    assert_eq!(session["target"], "prod-db");
    assert_eq!(session["protocol"], "postgres");
    assert_eq!(session["end_reason"], "closed");
    assert!(session["statements"].as_u64().unwrap() >= 1, "{session}");
    assert!(
        !session["approvers"].as_array().unwrap().is_empty(),
        "{session}"
    );
    assert!(session["reason"].as_str().is_some(), "{session}");
    assert_eq!(
        session["recordings"][0]["kind"], "pg-query-log",
        "{session}"
    );
    assert_eq!(
        listed("bob", &["--target", "prod-db"]).len(),
        1,
        "an approver of prod-db"
    );
    assert!(listed("alice", &["--target", "other-db"]).is_empty());
    assert!(
        listed("alice", &["--until", "1h"]).is_empty(),
        "started within the hour"
    );
    assert_eq!(listed("alice", &["--since", "1h"]).len(), 1);
    // The operator on the host sees it as well, in text.
    let (code, stdout, stderr) =
        support::run(&mut bastion.config.portcullis(&["sessions", "--user", "alice"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("prod-db") && stdout.contains("statements"),
        "{stdout}"
    );
    let (code, _, stderr) = bastion.ssh("alice", &["sessions", "--since", "yesterday"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("neither a time"), "{stderr}");
    // An age past the calendar, or a filter that is no name, is refused, not a panic.
    let (code, _, stderr) = bastion.ssh("alice", &["sessions", "--since", "99999999d"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("further than any session"), "{stderr}");
    let (code, _, stderr) = bastion.ssh("alice", &["sessions", "--target", "Prod-DB"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--target takes"), "{stderr}");
    let searches = bastion
        .audit_types()
        .iter()
        .filter(|kind| *kind == "sessions.searched")
        .count();
    // Six searches, and the refused one with a bad filter (issue #19 review: refused searches
    // are control events too).
    assert_eq!(searches, 7);
}

/// Issue #19: `access now` shows who can reach production right now: each active grant with its
/// approvers, reason, end and live sessions, over SSH and on the host CLI.
#[test]
fn issue_19_access_now_shows_active_grants_and_their_live_sessions() {
    let (bastion, _postgres) = bastion_and_postgres("postgres_allow_plaintext = true");
    let grant = bastion.grant("alice", "prod-db", hour());
    let runtime = client_runtime();
    let alice = token(&bastion, "alice");
    let client = connect(&runtime, &bastion, "alice", "prod-db", &alice).expect("connect");
    runtime
        .block_on(client.simple_query("select 1"))
        .expect("query");
    let now = |user: &str| -> Vec<Value> {
        let (code, stdout, stderr) = bastion.ssh(user, &["access", "now", "--json"]);
        assert_eq!(code, 0, "{user}: {stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()["access"]
            .as_array()
            .unwrap()
            .clone()
    };
    let rows = now("alice");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["grant"]["id"], grant.as_str());
    assert_eq!(rows[0]["grant"]["target"], "prod-db");
    assert_eq!(
        rows[0]["live_sessions"].as_array().unwrap().len(),
        1,
        "{rows:?}"
    );
    assert!(!rows[0]["approvers"].as_array().unwrap().is_empty());
    assert_eq!(now("bob").len(), 1, "the approver of prod-db sees it");
    let (code, stdout, stderr) = support::run(&mut bastion.config.portcullis(&["access", "now"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&grant) && stdout.contains("alice"),
        "{stdout}"
    );
    drop(client);
    wait_for("the session to end", Duration::from_secs(10), || {
        now("alice")[0]["live_sessions"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
}
