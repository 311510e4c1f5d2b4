//! The bastion started in-process for a test, with four users whose keys are made by
//! `ssh-keygen`: alice and erin request (erin only from 10.0.0.0/8), bob and carol approve.
//! The clock is a `ManualClock` starting now, so tests move time instead of waiting.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use portcullis::access::Approved;
use portcullis::clock::{Clock, ManualClock, SystemClock};
use portcullis::server::Server;
use serde_json::Value;
use time::OffsetDateTime;

use super::{TestConfig, client_options, require_binary, run, ssh_keygen};

/// Two targets nobody connects to, for tests that stop at the command interface.
pub const UNREACHED_TARGETS: &str = "\
[[targets]]
name = \"web-1\"
kind = \"ssh\"
address = \"127.0.0.1:22\"
login = \"root\"
host_key = \"accept-first\"
requestable_by = [\"engineer\"]
approvers = [\"leader\"]
max_duration = \"2h\"

[[targets]]
name = \"web-2\"
kind = \"ssh\"
address = \"127.0.0.1:22\"
login = \"root\"
host_key = \"accept-first\"
requestable_by = [\"engineer\"]
approvers = [\"leader\"]
";

pub struct Bastion {
    pub server: Option<Server>,
    pub runtime: tokio::runtime::Runtime,
    pub config: TestConfig,
    pub clock: Arc<ManualClock>,
    pub known_hosts: PathBuf,
    pub keys: tempfile::TempDir,
}

const USERS: [(&str, &str, &str); 4] = [
    ("alice", r#"["engineer"]"#, "slack_user_id = \"UALICE\"\n"),
    ("bob", r#"["leader"]"#, "slack_user_id = \"UBOB\"\n"),
    ("carol", r#"["leader"]"#, "slack_user_id = \"UCAROL\"\n"),
    ("erin", r#"["engineer"]"#, "ip_allow = [\"10.0.0.0/8\"]\n"),
];

impl Bastion {
    /// Starts a bastion whose config has the standard users and `targets` (TOML).
    pub fn start(targets: &str) -> Bastion {
        Bastion::start_with(|_| targets.to_string())
    }

    /// Like `start`, but `targets` is made once the bastion's client public key exists, so a
    /// test can put it in an `sshd`'s authorized_keys before the bastion starts.
    pub fn start_with(targets: impl FnOnce(&str) -> String) -> Bastion {
        Bastion::start_configured("", targets)
    }

    /// A bastion with one SSH target, `web-1`, on a real `sshd` that trusts the bastion's client
    /// key. `host_key` pins another key than the sshd's (for mismatch tests), `extra` adds TOML
    /// lines after the target, `sshd_config` adds lines to the sshd's config.
    pub fn with_sshd(
        host_key: Option<&str>,
        extra: &str,
        sshd_config: &str,
    ) -> (Bastion, super::Sshd) {
        let mut sshd = None;
        let bastion = Bastion::start_with(|client_key| {
            let server = super::Sshd::start_with_config(&[client_key.to_string()], sshd_config);
            let pinned = host_key.map_or_else(|| server.host_key.clone(), str::to_string);
            let text = format!(
                "[[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"127.0.0.1:{}\"\n\
                 login = \"{}\"\nhost_key = \"{pinned}\"\nrequestable_by = [\"engineer\"]\n\
                 approvers = [\"leader\"]\nmax_duration = \"2h\"\n{extra}",
                server.port, server.user
            );
            sshd = Some(server);
            text
        });
        (bastion, sshd.expect("sshd started"))
    }

    /// Asks `alice+web-1` for a subsystem the target refuses, with bytes right behind the request
    /// (as sftp sends its INIT): the target never opens its window for that channel. Returns
    /// ssh's exit status and stderr once it gives up.
    pub fn refused_subsystem(&self) -> (std::process::ExitStatus, String) {
        use std::io::{Read, Write};
        use std::process::Stdio;
        let mut child = self
            .ssh_command(&self.key("alice"), "alice+web-1")
            .args(["-s", "no-such-subsystem"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ssh");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"bytes the target never takes\n")
            .expect("write to ssh");
        let status = super::wait_for("ssh to give up", Duration::from_secs(20), || {
            child.try_wait().expect("poll ssh")
        });
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        drop(stdin);
        (status, stderr)
    }

    /// Like `start_with`, with extra `[server]` lines.
    pub fn start_configured(server: &str, targets: impl FnOnce(&str) -> String) -> Bastion {
        Bastion::start_full(server, "", targets)
    }

    /// Like `start_configured`, with extra `[access]` lines too.
    pub fn start_full(server: &str, access: &str, targets: impl FnOnce(&str) -> String) -> Bastion {
        if std::env::var_os("PORTCULLIS_TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug,russh=info")
                .with_test_writer()
                .try_init();
        }
        let keys = tempfile::tempdir().expect("tempdir");
        let mut users = String::new();
        for (name, roles, extra) in USERS {
            let (_, public) = ssh_keygen(keys.path(), name);
            users.push_str(&format!(
                "[[users]]\nname = \"{name}\"\nssh_keys = [\"{public}\"]\nroles = {roles}\n{extra}\n"
            ));
        }
        let config = TestConfig::new("");
        if !server.is_empty() {
            config.add_server_lines(server);
        }
        if !access.is_empty() {
            config.add_access_lines(access);
        }
        std::fs::create_dir_all(config.state_dir()).expect("state dir");
        let client_key = portcullis::keys::load_or_create(
            &config.state_dir().join(portcullis::keys::CLIENT_KEY_FILE),
            "portcullis",
        )
        .expect("client key");
        let targets = targets(&portcullis::keys::public_line(&client_key));
        config.rewrite(&format!(
            "[roles]\nengineer = \"requests\"\nleader = \"approves\"\n\n{users}{targets}"
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let server = runtime
            .block_on(Server::start(config.load(), clock.clone()))
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
            clock,
            known_hosts,
            keys,
        }
    }

    pub fn access(&self) -> &portcullis::access::Access {
        &self.server.as_ref().expect("running").access
    }

    pub fn postgres_port(&self) -> u16 {
        self.server.as_ref().expect("running").postgres_addr.port()
    }

    /// Stops the bastion and starts it again on the same config and state (new ports).
    pub fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime
                .block_on(server.shutdown())
                .expect("stop the bastion");
        }
        let server = self
            .runtime
            .block_on(Server::start(self.config.load(), self.clock.clone()))
            .expect("restart the bastion");
        self.server = Some(server);
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().expect("running").http_addr
    }

    /// The metrics listener's address.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().expect("running").metrics_addr
    }

    pub fn port(&self) -> u16 {
        self.server
            .as_ref()
            .map_or(0, |server| server.ssh_addr.port())
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Moves the bastion's clock.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// alice asks for `target` for `duration`, bob approves; returns the grant id.
    pub fn grant(&self, user: &str, target: &str, duration: Duration) -> String {
        let access = self.access();
        let request = access
            .request(user, target, Some(duration), "INC-1 test")
            .expect("request");
        match access.approve("bob", &request.id) {
            Ok(Approved::Granted { grant, .. }) => grant.id,
            other => panic!("approval: {other:?}"),
        }
    }

    /// An `ssh` command for `login@127.0.0.1` on the bastion with `key` only, pinning its host key.
    pub fn ssh_command(&self, key: &Path, login: &str) -> Command {
        let mut command = Command::new(require_binary("ssh", &[], "openssh-client"));
        command
            .args(client_options(&self.known_hosts, key))
            .args(["-p", &self.port().to_string()])
            .arg(format!("{login}@127.0.0.1"));
        command
    }

    /// A russh client logged in as `login` with `user`'s key, for what OpenSSH never sends
    /// (issue #17). `None` when the login is refused.
    pub async fn russh_client(
        &self,
        user: &str,
        login: &str,
    ) -> Option<russh::client::Handle<AcceptAnyHostKey>> {
        let key = russh::keys::load_secret_key(self.key(user), None).expect("the user's key");
        let config = Arc::new(russh::client::Config::default());
        let mut handle =
            russh::client::connect(config, ("127.0.0.1", self.port()), AcceptAnyHostKey)
                .await
                .expect("connect");
        let authenticated = handle
            .authenticate_publickey(
                login,
                russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
            )
            .await
            .expect("authenticate");
        authenticated.success().then_some(handle)
    }

    /// `ssh -p PORT login@127.0.0.1 args...` with `key` only, stdin closed.
    pub fn ssh_with(&self, key: &Path, login: &str, args: &[&str]) -> (i32, String, String) {
        run(self
            .ssh_command(key, login)
            .args(args)
            .stdin(std::process::Stdio::null()))
    }

    pub fn ssh(&self, user: &str, args: &[&str]) -> (i32, String, String) {
        self.ssh_with(&self.key(user), user, args)
    }

    /// The terminal recordings under the recordings folder, as (path, parsed lines).
    pub fn casts(&self) -> Vec<(PathBuf, Vec<Value>)> {
        let recordings = self.config.dir.path().join("recordings");
        super::files_under(&recordings, ".cast")
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).expect("read cast");
                let lines = text
                    .lines()
                    .map(|line| serde_json::from_str(line).expect("each line is JSON"))
                    .collect();
                (path, lines)
            })
            .collect()
    }

    /// The audit events, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        let (_, stdout, _) = run(&mut self
            .config
            .portcullis(&["audit", "tail", "-n", "500", "--json"]));
        let events: Value = serde_json::from_str(&stdout).expect("audit json");
        events["events"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (10 s at most) for the first audit event of `kind` and returns it.
    pub fn wait_for_event(&self, kind: &str) -> Value {
        crate::support::wait_for(kind, Duration::from_secs(10), || {
            self.audit().into_iter().find(|event| event["type"] == kind)
        })
    }

    /// `portcullis audit verify`: whether it passed, and what it said on stderr.
    pub fn audit_verify(&self) -> (bool, String) {
        let output = self
            .config
            .portcullis(&["audit", "verify"])
            .output()
            .expect("run audit verify");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Writes each case's tampered text over `path` and checks that `audit verify` fails naming
    /// what the case expects; then puts `original` back and checks that it passes again.
    pub fn assert_tampering_named(
        &self,
        path: &Path,
        original: &str,
        cases: &[(&str, String, &str)],
    ) {
        for (case, text, named) in cases {
            std::fs::write(path, text).expect("write the tampered file");
            let (ok, stderr) = self.audit_verify();
            assert!(!ok, "{case}: verify passed");
            assert!(stderr.contains(named), "{case}: {stderr}");
        }
        std::fs::write(path, original).expect("restore the file");
        assert_eq!(self.audit_verify(), (true, String::new()));
    }

    /// The first audit sink's line of `portcullis audit sinks --json`.
    pub fn sink_status(&self) -> Value {
        let (code, stdout, _) = run(&mut self.config.portcullis(&["audit", "sinks", "--json"]));
        assert_eq!(code, 0);
        serde_json::from_str::<Value>(&stdout).expect("audit sinks json")["sinks"][0].clone()
    }

    pub fn audit_types(&self) -> Vec<String> {
        self.audit()
            .iter()
            .filter_map(|event| event["type"].as_str().map(str::to_string))
            .collect()
    }
}

/// A russh client handler that trusts the bastion's host key (the test started it).
pub struct AcceptAnyHostKey;

impl russh::client::Handler for AcceptAnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.shutdown());
        }
    }
}
