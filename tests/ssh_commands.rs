//! The SSH command interface, driven by the real OpenSSH client against the bastion started
//! in-process (issue #3, first part): public-key authentication that fails closed, the request →
//! approve → grant flow over `ssh alice@bastion <command>`, `--json`, exit codes, and the refusal
//! of a target session without a grant.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::bastion::{Bastion, UNREACHED_TARGETS};
use support::{require_binary, run, ssh_keygen, wait_for};

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|error| panic!("{error}: {stdout:?}"))
}

#[test]
fn request_approve_and_inspect_over_ssh() {
    let bastion = Bastion::start(UNREACHED_TARGETS);

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
    let bastion = Bastion::start(UNREACHED_TARGETS);
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
    let bastion = Bastion::start(UNREACHED_TARGETS);
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
    // Tokens are only for database targets, and only with a grant.
    let (code, _, stderr) = bastion.ssh("alice", &["token", "web-2"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("web-2 is not a database target"),
        "{stderr}"
    );
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
    let bastion = Bastion::start(UNREACHED_TARGETS);
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

#[test]
fn a_request_from_a_terminal_waits_for_the_decision() {
    let bastion = Bastion::start(UNREACHED_TARGETS);
    let mut child = bastion
        .ssh_command(&bastion.key("alice"), "alice")
        .args([
            "-tt", "request", "web-1", "--for", "30m", "--reason", "INC-42",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ssh");
    let stdin = child.stdin.take();
    // The request appears; bob approves it from his own connection.
    let id = wait_for("the request to be filed", Duration::from_secs(15), || {
        let (_, stdout, _) = bastion.ssh("bob", &["pending", "--json"]);
        json(&stdout)["requests"][0]["id"]
            .as_str()
            .map(str::to_string)
    });
    let (code, _, stderr) = bastion.ssh("bob", &["approve", &id]);
    assert_eq!(code, 0, "{stderr}");
    let output = child.wait_with_output().expect("the waiting request ends");
    drop(stdin);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("waiting for a decision"), "{stdout}");
    assert!(
        stdout.contains(&format!("request {id} approved by bob")),
        "{stdout}"
    );
}
