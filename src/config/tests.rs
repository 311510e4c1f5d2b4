//! Config validation: every rule, checked by the exact key path in its message.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, HostKeyPolicy, PostgresTls, SshCredential, TargetKind};

const BASE: &str = r#"
[server]
state_dir = "./state"
recordings_dir = "/var/lib/portcullis/recordings"
ssh_listen = "127.0.0.1:2222"

[access]
max_duration = "8h"

[roles]
engineer = "requests"
leader = "approves"

[[users]]
name = "alice"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDsihBuJrnxLn2lUiLsxVyfw/rtAWfhbQ4k6Tw4jZrdL alice@laptop"]
roles = ["engineer"]
ip_allow = ["10.0.0.0/8", "192.168.1.7"]

[[users]]
name = "bob"
roles = ["leader"]

[[users]]
name = "carol"
roles = ["leader"]

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
address = "db.internal:5432"
database = "app"
login = "app_rw"
password_env = "PROD_DB_PASSWORD"
tls = "verify-full"
ca_file = "ca.pem"
requestable_by = ["engineer"]
approvers = ["leader"]
approvals_required = 2
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Path::new("portcullis.toml"),
        Path::new("/etc/portcullis"),
    )
}

/// `BASE` with the first occurrence of `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

#[test]
fn the_base_config_is_valid_and_typed() {
    let config = parse(BASE).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        config.server.state_dir,
        PathBuf::from("/etc/portcullis/state")
    );
    assert_eq!(
        config.server.recordings_dir,
        PathBuf::from("/var/lib/portcullis/recordings")
    );
    assert_eq!(config.server.http_listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.users[0].ssh_keys.len(), 1);
    assert_eq!(config.users[0].ip_allow.as_ref().map(Vec::len), Some(2));
    let web = config.target("web-1").unwrap_or_else(|| panic!("no web-1"));
    assert!(matches!(
        &web.kind,
        TargetKind::Ssh(ssh) if matches!(ssh.host_key, HostKeyPolicy::AcceptFirst)
            && matches!(ssh.credential, SshCredential::ClientKey)
            && !ssh.allow_port_forwarding
    ));
    assert_eq!(config.max_duration_for(web).as_secs(), 7_200);
    let db = config
        .target("prod-db")
        .unwrap_or_else(|| panic!("no prod-db"));
    assert!(matches!(
        &db.kind,
        TargetKind::Postgres(pg) if pg.tls == PostgresTls::VerifyFull {
            ca_file: PathBuf::from("/etc/portcullis/ca.pem")
        }
    ));
    assert_eq!(config.max_duration_for(db).as_secs(), 8 * 3_600);
    assert_eq!(config.limits.shutdown_timeout.as_secs(), 10);
    let limits = parse(&format!("{BASE}\n[limits]\nshutdown_timeout = \"45s\"\n"))
        .unwrap_or_else(|error| panic!("{error}"))
        .limits;
    assert_eq!(limits.shutdown_timeout.as_secs(), 45);
}

#[test]
fn the_postgres_address_and_certificate_names_default_and_parse() {
    let config = parse(BASE).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.server.tls_names, ["localhost", "127.0.0.1", "::1"]);
    assert_eq!(
        config.server.postgres_public_address,
        ("127.0.0.1".to_string(), 6432)
    );
    let server = |lines: &str| {
        let text = edited(
            r#"ssh_listen = "127.0.0.1:2222""#,
            &format!("ssh_listen = \"127.0.0.1:2222\"\n{lines}"),
        );
        parse(&text)
            .unwrap_or_else(|error| panic!("{error}"))
            .server
    };
    let named = server(
        "public_url = \"https://bastion.example.com\"\ntls_names = [\"db-gw.internal\", \"localhost\"]\npostgres_listen = \"0.0.0.0:6432\"",
    );
    assert_eq!(
        named.tls_names,
        [
            "localhost",
            "127.0.0.1",
            "::1",
            "bastion.example.com",
            "db-gw.internal"
        ]
    );
    // A wildcard listen address is no address for clients: the public host stands in.
    assert_eq!(
        named.postgres_public_address,
        ("bastion.example.com".to_string(), 6432)
    );
    // The name it had first still works.
    let old = server("postgres_tls_names = [\"old.internal\"]");
    assert!(old.tls_names.contains(&"old.internal".to_string()));
    for (address, expected) in [
        ("db.example.com:5433", ("db.example.com", 5433)),
        ("10.0.0.5:6432", ("10.0.0.5", 6432)),
        ("[::1]:6432", ("::1", 6432)),
    ] {
        let parsed = server(&format!("postgres_public_address = \"{address}\""));
        assert_eq!(
            parsed.postgres_public_address,
            (expected.0.to_string(), expected.1),
            "{address}"
        );
    }
}

#[test]
fn every_problem_names_its_key_path_and_value() {
    let cases: Vec<(String, &str)> = vec![
        (
            edited(
                r#"ssh_listen = "127.0.0.1:2222""#,
                "ssh_listen = \"127.0.0.1:2222\"\npostgres_public_address = \"db.example.com\"",
            ),
            r#"server.postgres_public_address: "db.example.com" is not host:port"#,
        ),
        (
            format!("{BASE}\n[limits]\nshutdown_timeout = \"0s\"\n"),
            r#"limits.shutdown_timeout: "0s" is zero"#,
        ),
        (
            format!("{BASE}\n[limits]\nshutdown_timeout = \"11m\"\n"),
            "limits.shutdown_timeout: 660s is out of range (1s to 600s)",
        ),
        (
            format!("{BASE}\n[limits]\nshutdown_timeout = \"soon\"\n"),
            r#"limits.shutdown_timeout: "soon" is not a duration"#,
        ),
        (
            edited(r#"max_duration = "2h""#, r#"max_duration = "9x""#),
            r#"targets[0].max_duration: "9x" is not a duration"#,
        ),
        (
            edited(r#"max_duration = "2h""#, r#"max_duration = "9h""#),
            r#"targets[0].max_duration: "9h" exceeds access.max_duration (8h)"#,
        ),
        (
            edited(r#"max_duration = "8h""#, r#"max_duration = "eight""#),
            r#"access.max_duration: "eight" is not a duration"#,
        ),
        (
            edited(
                r#"ssh_listen = "127.0.0.1:2222""#,
                r#"ssh_listen = "localhost""#,
            ),
            r#"server.ssh_listen: "localhost" is not a socket address"#,
        ),
        (
            edited(r#"name = "bob""#, r#"name = "alice""#),
            r#"users[1].name: "alice" is a duplicate user name"#,
        ),
        (
            edited(r#"name = "prod-db""#, r#"name = "web-1""#),
            r#"targets[1].name: "web-1" is a duplicate target name"#,
        ),
        (
            edited(r#"roles = ["leader"]"#, r#"roles = ["boss"]"#),
            r#"users[1].roles[0]: "boss" is not a role declared in [roles]"#,
        ),
        (
            edited(r#"approvers = ["leader"]"#, r#"approvers = ["leaders"]"#),
            r#"targets[0].approvers[0]: "leaders" is not a role declared in [roles]"#,
        ),
        (
            edited(
                r#"requestable_by = ["engineer"]"#,
                r#"requestable_by = ["eng"]"#,
            ),
            r#"targets[0].requestable_by[0]: "eng" is not a role declared in [roles]"#,
        ),
        (
            edited(r#"approvals_required = 2"#, r#"approvals_required = 3"#),
            "targets[1].approvals_required: 3 can never be met: only 2 user(s) hold an approver role",
        ),
        (
            // carol becomes an engineer too: a request by carol has only bob left to approve it.
            edited(
                "name = \"carol\"\nroles = [\"leader\"]",
                "name = \"carol\"\nroles = [\"leader\", \"engineer\"]",
            ),
            "targets[1].approvals_required: 2 can never be met for a request by carol: only 1 other user(s) hold an approver role (bob)",
        ),
        (
            edited(r#"kind = "ssh""#, r#"kind = "telnet""#),
            r#"targets[0].kind: "telnet" is not one of ssh, postgres, container"#,
        ),
        (
            edited(r#"address = "10.0.1.5:22""#, r#"address = "db:port""#),
            r#"targets[0].address: "db:port" is not host:port"#,
        ),
        (
            edited(
                r#"host_key = "accept-first""#,
                r#"host_key = "ssh-ed25519 nope""#,
            ),
            "targets[0].host_key: \"ssh-ed25519 nope\" is neither an OpenSSH public key",
        ),
        (
            edited("alice@laptop\"]", "alice@laptop\", \"not-a-key\"]"),
            r#"users[0].ssh_keys[1]: "not-a-key" is not an OpenSSH public key"#,
        ),
        (
            edited(r#""10.0.0.0/8""#, r#""10.0.0.0/33""#),
            r#"users[0].ip_allow[0]: "10.0.0.0/33" is not an IP address or CIDR network"#,
        ),
        (
            edited(r#"tls = "verify-full""#, r#"tls = "prefer""#),
            r#"targets[1].tls: "prefer" is not one of disable, require, verify-full"#,
        ),
        (
            edited("ca_file = \"ca.pem\"\n", ""),
            r#"targets[1].ca_file: is required with tls = "verify-full""#,
        ),
        (
            edited(
                r#"password_env = "PROD_DB_PASSWORD""#,
                "password_env = \"PROD_DB_PASSWORD\"\npassword_file = \"pw\"",
            ),
            "targets[1].password_env: set only one of password_file and password_env",
        ),
        (
            edited(
                r#"login = "deploy""#,
                "login = \"deploy\"\ndatabase = \"app\"",
            ),
            "targets[0].database: not a setting of a ssh target",
        ),
        (
            edited(r#"login = "deploy""#, ""),
            "targets[0].login: is required",
        ),
        (
            edited(r#"name = "bob""#, r#"name = "Bob+admin""#),
            r#"users[1].name: "Bob+admin" is not a valid user name"#,
        ),
        (
            edited(r#"approvers = ["leader"]"#, "approvers = []"),
            "targets[0].approvers: no approver role",
        ),
        (
            format!("{BASE}\n[slack]\nchannel = \"C1\"\n"),
            "slack.bot_token_env: one of bot_token_env or bot_token_file is required",
        ),
        // Issue #18: activity logs are kept at least a year unless the operator says otherwise.
        (
            format!("{BASE}\n[audit]\nretention_days = 90\n"),
            "audit.retention_days: 90 is under 365",
        ),
        (
            format!("{BASE}\n[audit]\nretention_days = 0\nallow_short_retention = true\n"),
            "audit.retention_days: 0 is not between 1 and 36500",
        ),
    ];
    for (text, expected) in cases {
        match parse(&text) {
            Ok(_) => panic!("accepted, expected {expected:?}"),
            Err(ConfigError::Invalid { problems, .. }) => assert!(
                problems.iter().any(|problem| problem.starts_with(expected)),
                "expected {expected:?} in {problems:#?}"
            ),
            Err(other) => panic!("expected {expected:?}, got {other}"),
        }
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_with_their_path() {
    let cases = [
        (
            edited(
                r#"login = "deploy""#,
                "login = \"deploy\"\npasword_file = \"x\"",
            ),
            "targets[0].pasword_file: unknown field `pasword_file`",
        ),
        (
            edited("[access]", "[access]\nmax_durration = \"1h\""),
            "access.max_durration: unknown field `max_durration`",
        ),
        (
            edited("approvals_required = 2", "approvals_required = \"two\""),
            "targets[1].approvals_required: invalid type",
        ),
        (format!("{BASE}\n[extra]\n"), "unknown field `extra`"),
        ("[server\n".to_string(), "(line 1)"),
    ];
    for (text, expected) in cases {
        match parse(&text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(
                    message.contains(expected),
                    "expected {expected:?} in {message:?}"
                )
            }
            other => panic!("expected a parse error {expected:?}, got {other:?}"),
        }
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = edited(r#"max_duration = "2h""#, r#"max_duration = "9x""#).replacen(
        r#"ssh_listen = "127.0.0.1:2222""#,
        r#"ssh_listen = "nowhere""#,
        1,
    );
    match parse(&text) {
        Err(ConfigError::Invalid { problems, .. }) => {
            assert_eq!(problems.len(), 2, "{problems:#?}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["portcullis.toml", "portcullis.example.toml"] {
        let path = root.join("config").join(name);
        if let Err(error) = Config::load(&path) {
            panic!("{name}: {error}");
        }
    }
}

#[test]
fn issue_18_retention_defaults_to_a_year_and_goes_shorter_only_when_allowed() {
    let cases = [
        ("", 365),
        ("[audit]\nretention_days = 400\n", 400),
        (
            "[audit]\nretention_days = 30\nallow_short_retention = true\n",
            30,
        ),
    ];
    for (audit, days) in cases {
        let config = parse(&format!("{BASE}\n{audit}")).expect("valid");
        assert_eq!(config.audit.retention_days, days, "{audit}");
    }
}
