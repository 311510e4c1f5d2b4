//! The SSH command interface, driven by the real OpenSSH client against the bastion started
//! in-process (issue #3, first part): public-key authentication that fails closed, the request →
//! approve → grant flow over `ssh alice@bastion <command>`, `--json`, exit codes, and the refusal
//! of a target session without a grant.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use portcullis::clock::SystemClock;
use portcullis::server::Server;
use serde_json::Value;
use support::{TestConfig, require_binary, run, ssh_keygen, wait_for};

struct Bastion {
    server: Option<Server>,
    runtime: tokio::runtime::Runtime,
    config: TestConfig,
    known_hosts: PathBuf,
    keys: tempfile::TempDir,
}

impl Bastion {
    fn start() -> Bastion {
        let keys = tempfile::tempdir().expect("tempdir");
        let mut users = String::new();
        for (name, roles, extra) in [
            ("alice", r#"["engineer"]"#, ""),
            ("bob", r#"["leader"]"#, ""),
            ("carol", r#"["leader"]"#, ""),
            ("erin", r#"["engineer"]"#, "ip_allow = [\"10.0.0.0/8\"]\n"),
        ] {
            let (_, public) = ssh_keygen(keys.path(), name);
            users.push_str(&format!(
                "[[users]]\nname = \"{name}\"\nssh_keys = [\"{public}\"]\nroles = {roles}\n{extra}\n"
            ));
        }
        let config = TestConfig::new(&format!(
            "[roles]\nengineer = \"requests\"\nleader = \"approves\"\n\n{users}\
             [[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"127.0.0.1:22\"\n\
             login = \"root\"\nhost_key = \"accept-first\"\nrequestable_by = [\"engineer\"]\n\
             approvers = [\"leader\"]\nmax_duration = \"2h\"\n\n\
             [[targets]]\nname = \"web-2\"\nkind = \"ssh\"\naddress = \"127.0.0.1:22\"\n\
             login = \"root\"\nhost_key = \"accept-first\"\nrequestable_by = [\"engineer\"]\n\
             approvers = [\"leader\"]\n"
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(Server::start(config.load(), Arc::new(SystemClock)))
            .expect("start the bastion");
        let host_key = portcullis::keys::load_or_create(
            &config.state_dir().join(portcullis::keys::HOST_KEY_FILE),
            "unused",
        )
        .expect("host key");
        let known_hosts = keys.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!(
                "[127.0.0.1]:{} {}\n",
                server.ssh_addr.port(),
                portcullis::keys::public_line(&host_key)
            ),
        )
        .expect("write known_hosts");
        Bastion {
            server: Some(server),
            runtime,
            config,
            known_hosts,
            keys,
        }
    }

    fn port(&self) -> u16 {
        self.server
            .as_ref()
            .map_or(0, |server| server.ssh_addr.port())
    }

    fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }

    /// `ssh -p PORT login@127.0.0.1 args...` with `key` only, pinning the bastion's host key.
    fn ssh_with(&self, key: &Path, login: &str, args: &[&str]) -> (i32, String, String) {
        let ssh = require_binary("ssh", &[], "openssh-client");
        run(Command::new(ssh)
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(key)
            .args(["-p", &self.port().to_string()])
            .arg(format!("{login}@127.0.0.1"))
            .args(args))
    }

    fn ssh(&self, user: &str, args: &[&str]) -> (i32, String, String) {
        self.ssh_with(&self.key(user), user, args)
    }

    fn audit_types(&self) -> Vec<String> {
        let (_, stdout, _) = run(&mut self
            .config
            .portcullis(&["audit", "tail", "-n", "200", "--json"]));
        let events: Value = serde_json::from_str(&stdout).expect("audit json");
        events["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|event| event["type"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.shutdown());
        }
    }
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|error| panic!("{error}: {stdout:?}"))
}

#[test]
fn request_approve_and_inspect_over_ssh() {
    let bastion = Bastion::start();

    let (code, stdout, stderr) = bastion.ssh(
        "alice",
        &[
            "request",
            "web-1",
            "--for",
            "1h",
            "--reason",
            "'INC-7 disk full'",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let request = json(&stdout);
    let id = request["id"].as_str().expect("id").to_string();
    assert_eq!(request["state"], "pending");
    assert_eq!(request["reason"], "INC-7 disk full");
    assert_eq!(request["approvers"], serde_json::json!(["bob", "carol"]));

    // The requester cannot approve; the refusal is exit 1 on stderr and changes nothing.
    let (code, _, stderr) = bastion.ssh("alice", &["approve", &id]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot approve your own request"),
        "{stderr}"
    );

    let (code, stdout, _) = bastion.ssh("bob", &["pending", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&stdout)["requests"][0]["id"], id.as_str());

    let (code, stdout, stderr) = bastion.ssh("bob", &["approve", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("alice may reach web-1 until"), "{stdout}");

    let (code, _, stderr) = bastion.ssh("carol", &["approve", &id]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is approved, not pending"), "{stderr}");

    let (code, stdout, _) = bastion.ssh("alice", &["grants", "--json"]);
    assert_eq!(code, 0);
    let grants = json(&stdout);
    assert_eq!(grants["grants"].as_array().map(Vec::len), Some(1));
    let (_, stdout, _) = bastion.ssh("alice", &["targets", "--json"]);
    let targets = json(&stdout);
    assert!(
        targets["targets"][0]["access_until"].is_string(),
        "{targets}"
    );
    assert!(targets["targets"][1]["access_until"].is_null(), "{targets}");

    let (code, stdout, _) = bastion.ssh("alice", &["status", &id]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("approved") && stdout.contains("bob"),
        "{stdout}"
    );
    // Another engineer cannot look at alice's request.
    let (code, _, stderr) = bastion.ssh_with(&bastion.key("erin"), "erin", &["status", &id]);
    assert_eq!(code, 255, "erin is outside her ip_allow: {stderr}");

    let types = bastion.audit_types();
    for expected in [
        "logged_in",
        "requested",
        "decision_refused",
        "approved",
        "granted",
    ] {
        assert!(
            types.iter().any(|kind| kind == expected),
            "{expected} missing in {types:?}"
        );
    }
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let bastion = Bastion::start();
    let (code, _, stderr) = bastion.ssh("alice", &["request", "web-1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--reason"), "{stderr}");
    let (code, _, _) = bastion.ssh("alice", &["frobnicate"]);
    assert_eq!(code, 2);
    let (code, _, stderr) = bastion.ssh(
        "alice",
        &["request", "web-1", "--for", "9x", "--reason", "x"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("\"9x\" is not a duration"), "{stderr}");
    let (code, stdout, _) = bastion.ssh("alice", &["help"]);
    assert_eq!(code, 0);
    for command in [
        "targets", "request", "approve", "deny", "pending", "revoke", "cancel",
    ] {
        assert!(stdout.contains(command), "help lacks {command}: {stdout}");
    }
}

#[test]
fn a_target_without_a_grant_is_refused_with_the_request_command() {
    let bastion = Bastion::start();
    // No command: the (not yet interactive) command interface explains itself.
    let (code, stdout, _) = bastion.ssh("alice", &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("run one command per connection"),
        "{stdout}"
    );
    let (code, _, stderr) = bastion.ssh_with(&bastion.key("alice"), "alice+web-2", &["uptime"]);
    assert_eq!(code, 1, "{stderr}");
    let hint = format!(
        "no active grant for web-2; request one with: ssh -p {} alice@127.0.0.1 request web-2 --for 1h --reason",
        bastion.port()
    );
    assert!(stderr.contains(&hint), "{stderr}");
    let (code, _, stderr) = bastion.ssh_with(&bastion.key("alice"), "alice+nowhere", &["uptime"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown target nowhere"), "{stderr}");
    assert!(
        bastion
            .audit_types()
            .iter()
            .filter(|kind| *kind == "session_refused")
            .count()
            >= 2
    );
}

#[test]
fn authentication_is_public_key_only_and_fails_closed() {
    let bastion = Bastion::start();
    // bob's key does not log in as alice, a stranger's key logs in as nobody.
    let (code, _, stderr) = bastion.ssh_with(&bastion.key("bob"), "alice", &["targets"]);
    assert_eq!(code, 255);
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");
    let other = tempfile::tempdir().expect("tempdir");
    let (stranger, _) = ssh_keygen(other.path(), "stranger");
    let (code, _, _) = bastion.ssh_with(&stranger, "alice", &["targets"]);
    assert_eq!(code, 255);
    let (code, _, _) = bastion.ssh_with(&stranger, "mallory", &["targets"]);
    assert_eq!(code, 255);
    // Passwords are not even offered.
    let ssh = require_binary("ssh", &[], "openssh-client");
    let (code, _, stderr) = run(Command::new(ssh)
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAuthentication=no",
        ])
        .args([
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-p",
            &bastion.port().to_string(),
            "alice@127.0.0.1",
            "targets",
        ]));
    assert_eq!(code, 255, "{stderr}");
    // Each refused connection is one audited, counted failure.
    let failures = wait_for(
        "failed logins to be audited",
        Duration::from_secs(10),
        || {
            let count = bastion
                .audit_types()
                .iter()
                .filter(|kind| *kind == "auth_failed")
                .count();
            (count >= 3).then_some(count)
        },
    );
    assert!(failures >= 3);
}
