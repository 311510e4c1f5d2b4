//! Proves the test harness: the real `sshd` and PostgreSQL it starts accept direct connections
//! from the real clients, with the authentication they are configured for.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{Postgres, Sshd, run};

#[test]
fn sshd_accepts_the_harness_key_and_pins_its_host_key() {
    let sshd = Sshd::start();
    let (code, stdout, stderr) = run(sshd.ssh().args(["echo", "hello from sshd"]));
    assert_eq!(code, 0, "ssh failed: {stderr}");
    assert_eq!(stdout.trim(), "hello from sshd");

    // A key sshd does not know is refused: public-key auth is really checked.
    let other = tempfile::tempdir().expect("tempdir");
    let (stranger, _) = support::ssh_keygen(other.path(), "stranger");
    let ssh = support::require_binary("ssh", &[], "openssh-client");
    let (code, _, stderr) = run(std::process::Command::new(ssh)
        .args(support::client_options(&sshd.known_hosts, &stranger))
        .args(["-p", &sshd.port.to_string()])
        .arg(format!("{}@127.0.0.1", sshd.user))
        .arg("true"));
    assert_eq!(code, 255, "a stranger's key was accepted: {stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

#[test]
fn postgres_accepts_scram_logins_and_refuses_a_wrong_password() {
    let postgres = Postgres::start();
    assert_eq!(postgres.psql("SELECT 40 + 2"), "42");
    assert_eq!(postgres.psql("SHOW password_encryption"), "scram-sha-256");

    let psql = support::require_binary("psql", &[], "postgresql-client");
    let wrong = format!(
        "host=127.0.0.1 port={} user=postgres password=wrong dbname=postgres sslmode=disable",
        postgres.port
    );
    let (code, _, stderr) = run(std::process::Command::new(psql)
        .arg(wrong)
        .args(["-X", "-c", "SELECT 1"]));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
}
