//! The operator's command line, run as the real binary: config checking, `serve` and its clean
//! shutdown, and the listing, revoke and audit commands with their `--json` shapes (issue #2).

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use portcullis::access::{Access, Approved};
use portcullis::clock::SystemClock;
use serde_json::Value;
use support::{PEOPLE_AND_TARGETS, TestConfig, portcullis_binary, run, wait_for};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("not one JSON object ({error}): {stdout}"))
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[test]
fn the_shipped_config_checks_out_from_a_fresh_clone() {
    // No --config and no PORTCULLIS_CONFIG: the default path, relative to the working directory.
    let (code, stdout, stderr) = run(portcullis_binary()
        .current_dir(repo_root())
        .env_remove("PORTCULLIS_CONFIG")
        .arg("check-config"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("config/portcullis.toml: ok"), "{stdout}");
    assert!(stdout.contains("MAY APPROVE"), "{stdout}");
    // Issue #19: who sees every recorded session.
    assert!(
        stdout.contains("see every session (roles reviewer):"),
        "{stdout}"
    );

    let example = repo_root().join("config/portcullis.example.toml");
    let (code, stdout, stderr) = run(portcullis_binary().arg("--config").arg(&example).args([
        "check-config",
        "--skip-secrets",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let summary = json(&stdout);
    assert_eq!(summary["ok"], true);
    let prod_db = summary["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|target| target["name"] == "prod-db"))
        .unwrap_or_else(|| panic!("no prod-db in {summary}"));
    assert_eq!(prod_db["requestable_by"], serde_json::json!(["alice"]));
    assert_eq!(prod_db["approvers"], serde_json::json!(["bob", "carol"]));
    assert!(summary["reviewers"].is_array(), "{summary}");

    // Without --skip-secrets, every named file and env var must exist.
    let (code, _, stderr) = run(portcullis_binary()
        .arg("--config")
        .arg(&example)
        .arg("check-config")
        .env_remove("PROD_DB_PASSWORD"));
    assert_eq!(code, 1);
    assert!(
        stderr
            .contains("targets[2].password_env: environment variable PROD_DB_PASSWORD is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("targets[0].private_key_file: cannot read /etc/portcullis/keys/deploy"),
        "{stderr}"
    );
}

#[test]
fn config_errors_exit_1_with_the_key_path() {
    let config = TestConfig::new(
        &PEOPLE_AND_TARGETS.replace(r#"max_duration = "2h""#, r#"max_duration = "9x""#),
    );
    let (code, stdout, stderr) = run(&mut config.portcullis(&["check-config"]));
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains(r#"targets[0].max_duration: "9x" is not a duration"#),
        "{stderr}"
    );
}

#[test]
fn config_path_comes_from_the_flag_then_the_environment() {
    let good = TestConfig::new(PEOPLE_AND_TARGETS);
    let bad = TestConfig::new("[bogus]\n");
    // PORTCULLIS_CONFIG applies when --config is absent...
    let (code, _, stderr) = run(portcullis_binary()
        .arg("check-config")
        .env("PORTCULLIS_CONFIG", &bad.path));
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown field `bogus`"), "{stderr}");
    // ...and --config wins over it, before or after the subcommand.
    for args in [
        ["--config", "PATH", "check-config"],
        ["check-config", "--config", "PATH"],
    ] {
        let args: Vec<&std::ffi::OsStr> = args
            .iter()
            .map(|arg| {
                if *arg == "PATH" {
                    good.path.as_os_str()
                } else {
                    std::ffi::OsStr::new(arg)
                }
            })
            .collect();
        let (code, _, stderr) = run(portcullis_binary()
            .args(&args)
            .env("PORTCULLIS_CONFIG", &bad.path));
        assert_eq!(code, 0, "{args:?}: {stderr}");
    }
    // A usage error is exit 2.
    let (code, _, _) = run(portcullis_binary().arg("no-such-command"));
    assert_eq!(code, 2);
}

/// A `portcullis serve` child with JSON logs; knows its HTTP address from them.
struct Served {
    child: Child,
    http: SocketAddr,
}

fn serve(config: &TestConfig) -> Served {
    let mut child = config
        .portcullis(&["serve", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis serve");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let http = wait_for(
        "serve to log its http address",
        Duration::from_secs(30),
        || {
            let line = receiver.try_recv().ok()?;
            let log: Value = serde_json::from_str(&line).ok()?;
            if log["fields"]["message"] == "http listening" {
                log["fields"]["address"].as_str()?.parse().ok()
            } else {
                None
            }
        },
    );
    Served { child, http }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[test]
fn serve_answers_healthz_and_exits_0_on_sigterm_and_sigint() {
    for signal_name in ["-TERM", "-INT"] {
        let config = TestConfig::new(PEOPLE_AND_TARGETS);
        let mut served = serve(&config);
        let (status, body) = support::http_get(served.http, "/healthz");
        assert_eq!(
            (status, json(&body)["status"].clone()),
            (200, Value::from("ok"))
        );
        let (status, _) = support::http_get(served.http, "/nothing-here");
        assert_eq!(status, 404);

        signal(&served.child, signal_name);
        let exit = wait_for("serve to exit", Duration::from_secs(20), || {
            served.child.try_wait().ok().flatten()
        });
        assert_eq!(exit.code(), Some(0), "{signal_name}");

        // First start created the state dir (private), its database and both keys.
        let state = config.state_dir();
        for file in [
            "portcullis.db",
            "ssh_host_ed25519_key",
            "client_ed25519_key",
        ] {
            assert!(state.join(file).is_file(), "{file} missing");
        }
        let mode = std::fs::metadata(&state)
            .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777);
        assert_eq!(mode.ok(), Some(0o700));
        let (code, stdout, _) = run(&mut config.portcullis(&["audit", "tail", "--json"]));
        assert_eq!(code, 0);
        let types: Vec<Value> = json(&stdout)["events"]
            .as_array()
            .map(|events| events.iter().map(|event| event["type"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(types, ["server_started", "server_stopped"]);
    }
}

/// Files a request by alice for web-1 and has bob approve it, through the library on the same
/// state the binary reads.
fn granted(config: &TestConfig) -> (Access, String, String) {
    let store = portcullis::server::open_store(&config.load()).expect("open store");
    let access = Access::new(Arc::new(config.load()), store, Arc::new(SystemClock));
    let request = access
        .request(
            "alice",
            "web-1",
            Some(Duration::from_secs(3_600)),
            "INC-9 disk full",
        )
        .expect("request");
    match access.approve("bob", &request.id) {
        Ok(Approved::Granted { grant, .. }) => (access, request.id, grant.id),
        other => panic!("approval: {other:?}"),
    }
}

#[test]
fn listings_print_the_documented_json_shapes() {
    let config = TestConfig::new(PEOPLE_AND_TARGETS);
    let (access, request_id, grant_id) = granted(&config);
    let pending = access
        .request("alice", "web-1", None, "INC-10")
        .expect("request");

    let (code, stdout, stderr) = run(&mut config.portcullis(&["requests", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let requests = json(&stdout)["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(requests.len(), 2);
    let approved = requests
        .iter()
        .find(|request| request["id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("{request_id} not listed"));
    let required = set(&[
        "id",
        "requester",
        "target",
        "state",
        "duration_seconds",
        "reason",
        "created_at",
        "approvals",
        "grant_id",
    ]);
    assert!(keys(approved).is_superset(&required), "{approved}");
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["duration_seconds"], 3_600);
    assert_eq!(approved["grant_id"], grant_id.as_str());
    assert_eq!(approved["approvals"][0]["approver"], "bob");
    assert!(
        approved["created_at"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z') && at.len() == 20)
    );

    let (_, stdout, _) = run(&mut config.portcullis(&["requests", "--pending", "--json"]));
    let pending_ids: Vec<Value> = json(&stdout)["requests"]
        .as_array()
        .map(|list| list.iter().map(|request| request["id"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(pending_ids, [Value::from(pending.id.as_str())]);

    let (code, stdout, _) = run(&mut config.portcullis(&["grants", "--active", "--json"]));
    assert_eq!(code, 0);
    let grants = json(&stdout)["grants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(grants.len(), 1);
    let grant_keys = set(&[
        "id",
        "request_id",
        "user",
        "target",
        "state",
        "starts_at",
        "ends_at",
        "revoked_by",
    ]);
    assert!(keys(&grants[0]).is_superset(&grant_keys), "{}", grants[0]);
    assert_eq!(grants[0]["state"], "active");

    let (code, stdout, _) = run(&mut config.portcullis(&["audit", "tail", "-n", "2", "--json"]));
    assert_eq!(code, 0);
    let events = json(&stdout)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 2);
    let event_keys = set(&[
        "seq",
        "id",
        "ts",
        "type",
        "actor",
        "target",
        "request_id",
        "grant_id",
        "session_id",
        "detail",
        "prev_hash",
        "hash",
    ]);
    assert_eq!(keys(&events[0]), event_keys);
    assert_eq!(events[1]["type"], "requested");
    assert_eq!(events[1]["prev_hash"], events[0]["hash"]);

    // Human tables too.
    let (code, stdout, _) = run(&mut config.portcullis(&["grants"]));
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("ID ") && stdout.contains(&grant_id),
        "{stdout}"
    );
}

#[test]
fn the_operator_revokes_a_grant_and_refusals_exit_1() {
    let config = TestConfig::new(PEOPLE_AND_TARGETS);
    let (access, _, grant_id) = granted(&config);

    let (code, _, stderr) = run(&mut config.portcullis(&["revoke", &grant_id]));
    assert_eq!(code, 2, "--reason is required: {stderr}");

    let (code, stdout, stderr) = run(config
        .portcullis(&["revoke", &grant_id, "--reason", "incident closed", "--json"])
        .env("USER", "ops"));
    assert_eq!(code, 0, "{stderr}");
    let grant = json(&stdout);
    assert_eq!(grant["state"], "revoked");
    assert_eq!(grant["revoked_by"], "operator:ops");
    assert!(
        access
            .active_grant("alice", "web-1")
            .expect("read")
            .is_none()
    );

    let (code, stdout, stderr) =
        run(&mut config.portcullis(&["revoke", &grant_id, "--reason", "again", "--json"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("is revoked, not active"), "{stderr}");
    assert!(json(&stdout)["error"].as_str().is_some());

    let (code, _, stderr) = run(&mut config.portcullis(&["revoke", "g-nosuchid", "--reason", "x"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("no grant g-nosuchid"), "{stderr}");

    let (_, stdout, _) = run(&mut config.portcullis(&["audit", "tail", "-n", "3", "--json"]));
    let types: Vec<Value> = json(&stdout)["events"]
        .as_array()
        .map(|events| events.iter().map(|event| event["type"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(types, ["revoked", "revoke_refused", "revoke_refused"]);
}

#[test]
fn audit_verify_names_the_first_tampered_record() {
    let config = TestConfig::new(PEOPLE_AND_TARGETS);
    let (access, _, grant_id) = granted(&config);
    access
        .revoke(
            &portcullis::audit::Actor::User("alice".into()),
            &grant_id,
            "done",
        )
        .expect("revoke");
    let (code, stdout, _) = run(&mut config.portcullis(&["audit", "verify"]));
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        "ok: 4 events verified; 0 query logs (0 lines) and 0 recordings match their checkpoints"
    );
    drop(access);

    // Someone with write access to the database rewrites history: seq 2 (the approval).
    let database =
        rusqlite::Connection::open(config.state_dir().join("portcullis.db")).expect("open");
    database
        .execute("UPDATE audit_events SET actor = 'carol' WHERE seq = 2", [])
        .expect("tamper");
    drop(database);
    let (code, stdout, stderr) = run(&mut config.portcullis(&["audit", "verify", "--json"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("audit chain broken at seq 2"), "{stderr}");
    assert_eq!(json(&stdout)["first_bad_seq"], 2);
}

#[test]
fn keys_are_printed_and_stable() {
    let config = TestConfig::new(PEOPLE_AND_TARGETS);
    let (code, first, stderr) = run(&mut config.portcullis(&["client-key"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(first.starts_with("ssh-ed25519 AAAA"), "{first}");
    let (_, second, _) = run(&mut config.portcullis(&["client-key"]));
    assert_eq!(first, second);
    let (code, stdout, _) = run(&mut config.portcullis(&["host-key", "--json"]));
    assert_eq!(code, 0);
    assert!(
        json(&stdout)["fingerprint"]
            .as_str()
            .is_some_and(|print| print.starts_with("SHA256:"))
    );
    let (code, stdout, _) = run(portcullis_binary().arg("version"));
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_from_another_process_reaches_the_running_server() {
    let config = TestConfig::new(PEOPLE_AND_TARGETS);
    let server = portcullis::server::Server::start(config.load(), Arc::new(SystemClock))
        .await
        .expect("start server");
    let mut ended = server.access.subscribe_ended();
    let access = server.access.clone();
    let grant = tokio::task::spawn_blocking(move || {
        let request = access
            .request("alice", "web-1", None, "INC-11")
            .expect("request");
        match access.approve("carol", &request.id) {
            Ok(Approved::Granted { grant, .. }) => grant,
            other => panic!("{other:?}"),
        }
    })
    .await
    .expect("join");

    let mut revoke = config.portcullis(&["revoke", &grant.id, "--reason", "leaving"]);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || run(&mut revoke))
        .await
        .expect("join");
    assert_eq!(code, 0, "{stderr}");
    let notice = tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("the server announced the revoke within 10s")
        .expect("channel open");
    assert_eq!(notice.grant_id, grant.id);
    assert_eq!(
        notice.reason,
        portcullis::access::model::GrantState::Revoked
    );
    server.shutdown().await.expect("shutdown");
}
