//! The shared test harness: real servers on `127.0.0.1` random ports in temp dirs, and the
//! bastion itself, in-process or as the built binary.
//!
//! - `Sshd`: a real OpenSSH `sshd` with temp host and client keys and its own authorized_keys.
//! - `Postgres`: a real PostgreSQL (`initdb` + `postgres`, scram-sha-256), run as the `postgres` OS
//!   user when the tests run as root, because `initdb` refuses root.
//! - `TestConfig`: a bastion config in a temp dir, and helpers to run `portcullis` on it.
//!
//! A missing server binary fails the test with the package to install; it never skips (issue #2).
//! Nothing here sleeps to synchronise: every wait polls a condition against a deadline.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bastion;
pub mod slack;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to come up before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago. Servers that cannot take port 0 need one; `start` retries
/// on the rare collision.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free port on 127.0.0.1")
}

/// Finds a program in `extra` folders or on PATH, or fails naming the package to install.
pub fn require_binary(name: &str, extra: &[PathBuf], package: &str) -> PathBuf {
    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    extra
        .iter()
        .chain(&path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: install it with `apt-get install {package}` \
                 (or run the README's test command, which does)"
            )
        })
}

pub fn is_root() -> bool {
    current_user() == "root"
}

pub fn current_user() -> String {
    let output = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn run_checked(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    if !output.status.success() {
        panic!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// Generates an ed25519 key pair with `ssh-keygen`; returns (private key path, public key line).
pub fn ssh_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let keygen = require_binary("ssh-keygen", &[], "openssh-client");
    let path = dir.join(name);
    run_checked(
        Command::new(keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path),
    );
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .or_else(|_| std::fs::read_to_string(format!("{}.pub", path.display())))
        .expect("read generated public key");
    (path, public.trim().to_string())
}

/// Stops a child process politely (`signal`), then for good after a grace period.
fn stop_child(child: &mut Child, signal: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn child_stderr(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(stderr) = child.stderr.as_mut() {
        let _ = stderr.read_to_string(&mut text);
    }
    text
}

/// A real OpenSSH server on 127.0.0.1.
pub struct Sshd {
    pub port: u16,
    /// The OS user to log in as (the user running the tests).
    pub user: String,
    /// A private key that `authorized_keys` accepts.
    pub client_key: PathBuf,
    /// The server's host public key line, for pinning.
    pub host_key: String,
    /// A known_hosts file that pins `host_key` for `[127.0.0.1]:port`.
    pub known_hosts: PathBuf,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with(&[])
    }

    /// Starts sshd accepting the harness's own client key plus `authorized` public key lines.
    pub fn start_with(authorized: &[String]) -> Sshd {
        Sshd::start_with_config(authorized, "")
    }

    /// Like `start_with`, with extra `sshd_config` lines.
    pub fn start_with_config(authorized: &[String], extra_config: &str) -> Sshd {
        let sshd = require_binary(
            "sshd",
            &[PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")],
            "openssh-server",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (host_key_path, host_key) = ssh_keygen(dir.path(), "host_key");
        let (client_key, client_public) = ssh_keygen(dir.path(), "client_key");
        let authorized_keys = dir.path().join("authorized_keys");
        let mut lines = vec![client_public];
        lines.extend(authorized.iter().cloned());
        std::fs::write(&authorized_keys, lines.join("\n") + "\n").expect("write authorized_keys");
        if is_root() {
            // sshd's privilege separation needs this folder; Debian creates it only in its unit.
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let user = current_user();
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     AuthorizedKeysFile {authorized}\n\
                     PidFile {pid}\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     PermitRootLogin prohibit-password\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     AllowTcpForwarding yes\n\
                     AcceptEnv LANG LC_* TERM\n\
                     Subsystem sftp internal-sftp\n\
                     LogLevel VERBOSE\n\
                     {extra_config}\n",
                    host_key = host_key_path.display(),
                    authorized = authorized_keys.display(),
                    pid = dir.path().join("sshd.pid").display(),
                ),
            )
            .expect("write sshd_config");
            let mut child = Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {}: {error}", sshd.display()));
            let ready = wait_for("sshd to accept connections", START_DEADLINE, || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                ssh_banner(port).then_some(true)
            });
            if ready {
                let known_hosts = dir.path().join("known_hosts");
                std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n"))
                    .expect("write known_hosts");
                return Sshd {
                    port,
                    user,
                    client_key,
                    host_key,
                    known_hosts,
                    dir,
                    child,
                };
            }
            let stderr = child_stderr(&mut child);
            if !stderr.contains("Address already in use") {
                panic!("sshd exited at start:\n{stderr}");
            }
        }
        panic!("sshd found no free port in 5 attempts");
    }

    /// An `ssh` command that logs in to this server directly with the harness key, strictly
    /// checking its host key.
    pub fn ssh(&self) -> Command {
        let mut command = Command::new(require_binary("ssh", &[], "openssh-client"));
        command
            .args(client_options(&self.known_hosts, &self.client_key))
            .args(["-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", self.user))
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        stop_child(&mut self.child, "-TERM");
    }
}

/// The options of every OpenSSH client (`ssh`, `scp`, `sftp`) the tests run: no user config, no
/// prompts, only `key`, and the server's host key checked against `known_hosts`.
pub fn client_options(known_hosts: &Path, key: &Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        "-o".to_string(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-i".to_string(),
        key.display().to_string(),
    ])
    .collect()
}

/// True once something on `port` speaks SSH.
fn ssh_banner(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 8];
    stream.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-2.0-")
}

/// A real PostgreSQL server on 127.0.0.1 with scram-sha-256 authentication.
pub struct Postgres {
    pub port: u16,
    pub superuser: String,
    pub password: String,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    child: Child,
}

impl Postgres {
    pub fn start() -> Postgres {
        let versions = postgres_bin_dirs();
        let initdb = require_binary("initdb", &versions, "postgresql");
        // The server's tools live together; resolve links (some images link initdb into PATH).
        let initdb = initdb.canonicalize().unwrap_or(initdb);
        let bin = initdb.parent().map(Path::to_path_buf).unwrap_or_default();
        require_binary("postgres", std::slice::from_ref(&bin), "postgresql");
        let dir = tempfile::tempdir().expect("tempdir");
        let run_as_postgres = is_root();
        if run_as_postgres {
            // initdb refuses root: the data lives in a folder the postgres user owns.
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown data dir");
        }
        let password = format!("pw-{}", std::process::id());
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, &password).expect("write password file");
        if run_as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&password_file, Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        run_checked(
            as_postgres(&initdb, run_as_postgres)
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", password_file.display())),
        );
        for _attempt in 0..5 {
            let port = free_port();
            let (mut child, ready) = spawn_postgres(&bin, dir.path(), port);
            if ready {
                return Postgres {
                    port,
                    superuser: "postgres".to_string(),
                    password,
                    dir,
                    bin,
                    child,
                };
            }
            let stderr = child_stderr(&mut child);
            if !stderr.contains("could not bind") && !stderr.contains("already in use") {
                panic!("postgres exited at start:\n{stderr}");
            }
        }
        panic!("postgres found no free port in 5 attempts");
    }

    /// A libpq connection string for the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={database} sslmode=disable",
            self.port, self.superuser, self.password
        )
    }

    /// A PostgreSQL client tool (`psql`, `pgbench`) of the same version as the server.
    pub fn tool(&self, name: &str) -> PathBuf {
        require_binary(name, std::slice::from_ref(&self.bin), "postgresql-client")
    }

    /// Runs SQL with `psql` as the superuser; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let psql = require_binary("psql", std::slice::from_ref(&self.bin), "postgresql-client");
        let output = run_checked(Command::new(psql).arg(self.url("postgres")).args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Postgres {
    /// Stops the server (a fast shutdown), keeping its data and port.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, "-INT");
    }

    /// Starts a stopped server again on its data and port.
    pub fn start_again(&mut self) {
        let (child, ready) = spawn_postgres(&self.bin, self.dir.path(), self.port);
        self.child = child;
        assert!(ready, "postgres started again");
    }
}

/// Starts `postgres` on `dir/data` at `port`; true once it accepts connections.
fn spawn_postgres(bin: &Path, dir: &Path, port: u16) -> (Child, bool) {
    let postgres = bin.join("postgres");
    let mut child = as_postgres(&postgres, is_root())
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "fsync=off", "-c", "max_connections=200"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", postgres.display()));
    let ready = wait_for("postgres to accept connections", START_DEADLINE, || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(false);
        }
        pg_isready(bin, port).then_some(true)
    });
    (child, ready)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it ends sessions and exits in milliseconds.
        stop_child(&mut self.child, "-INT");
    }
}

/// True once the server at `port` accepts connections (not just TCP: past recovery and startup).
fn pg_isready(bin: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

/// `/usr/lib/postgresql/<version>/bin`, newest first: Debian keeps the server binaries there.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((version, entry.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    dirs.into_iter().map(|(_, dir)| dir).collect()
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!("no `postgres` OS user: install it with `apt-get install postgresql`")
            })
    };
    (id("-u"), id("-g"))
}

/// A command for `program`, run as the `postgres` OS user when `switch` (we are root). `setpriv`
/// execs rather than forks, so killing the child stops the server itself.
fn as_postgres(program: &Path, switch: bool) -> Command {
    if switch {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A bastion config in a temp dir: state and recordings inside it, listeners on port 0.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Users and targets shared by the tests: alice requests, bob and carol approve.
pub const PEOPLE_AND_TARGETS: &str = r#"
[roles]
engineer = "requests access"
leader = "approves access"

[[users]]
name = "alice"
roles = ["engineer"]

[[users]]
name = "bob"
roles = ["leader"]

[[users]]
name = "carol"
roles = ["leader"]

[[targets]]
name = "web-1"
kind = "ssh"
address = "127.0.0.1:22"
login = "root"
host_key = "accept-first"
requestable_by = ["engineer"]
approvers = ["leader"]
max_duration = "2h"
"#;

impl TestConfig {
    /// A config whose `[server]` section is generated and the rest is `body`.
    pub fn new(body: &str) -> TestConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("portcullis.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\n\
                 state_dir = \"state\"\n\
                 recordings_dir = \"recordings\"\n\
                 ssh_listen = \"127.0.0.1:0\"\n\
                 postgres_listen = \"127.0.0.1:0\"\n\
                 http_listen = \"127.0.0.1:0\"\n\
                 metrics_listen = \"127.0.0.1:0\"\n\
                 public_url = \"http://127.0.0.1:8080\"\n\n\
                 [access]\n\
                 pending_request_ttl = \"30m\"\n\
                 {body}"
            ),
        )
        .expect("write config");
        TestConfig { dir, path }
    }

    /// Adds `lines` to the generated `[server]` section.
    pub fn add_server_lines(&self, lines: &str) {
        let text = std::fs::read_to_string(&self.path).expect("read config");
        let text = text.replacen("\n\n[access]", &format!("\n{lines}\n\n[access]"), 1);
        std::fs::write(&self.path, text).expect("write config");
    }

    /// Adds `lines` to the generated `[access]` section.
    pub fn add_access_lines(&self, lines: &str) {
        let text = std::fs::read_to_string(&self.path).expect("read config");
        let text = text.replacen("[access]\n", &format!("[access]\n{lines}\n"), 1);
        std::fs::write(&self.path, text).expect("write config");
    }

    /// Replaces everything after the generated `[server]` and `[access]` sections.
    pub fn rewrite(&self, body: &str) {
        let text = std::fs::read_to_string(&self.path).expect("read config");
        let head = text
            .find("pending_request_ttl")
            .and_then(|at| text[at..].find('\n').map(|end| at + end + 1))
            .unwrap_or(text.len());
        std::fs::write(&self.path, format!("{}{body}", &text[..head])).expect("write config");
    }

    pub fn load(&self) -> portcullis::config::Config {
        portcullis::config::Config::load(&self.path).unwrap_or_else(|error| panic!("{error}"))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `portcullis --config <this> args...`, the real binary.
    pub fn portcullis(&self, args: &[&str]) -> Command {
        let mut command = portcullis_binary();
        command.arg("--config").arg(&self.path).args(args);
        command.env_remove("PORTCULLIS_CONFIG");
        command
    }
}

/// The files below `dir` (recursively) whose names end with `suffix`, sorted.
pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The built `portcullis` binary, with no config chosen.
pub fn portcullis_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.stdin(Stdio::null());
    command
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(command: &mut Command) -> (i32, String, String) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A minimal HTTP/1.1 GET, so tests need no HTTP client crate; returns (status, body).
pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to http listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}
