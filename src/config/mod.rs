//! The validated configuration: the second stage of loading, after `raw` has mirrored the TOML.
//!
//! `Config::load` reads a file, deserializes it strictly (unknown keys are errors) and then validates
//! every field into a typed value. Every problem names its 0-based key path and the offending value,
//! for example `targets[1].max_duration: "9x" is not a duration`, and all problems are reported at
//! once so an operator fixes a file in one pass (issue #2). Relative paths resolve against the folder
//! of the config file, so the bastion behaves the same whatever its working directory.

mod duration;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use russh::keys::PublicKey;

pub use duration::{format_duration, parse_duration};
use raw::{
    RawAccess, RawAudit, RawConfig, RawLimits, RawServer, RawSink, RawSlack, RawTarget, RawUser,
};

use crate::secret::SecretSource;

/// The default config path, relative to the working directory, used when neither `--config` nor
/// `PORTCULLIS_CONFIG` is given.
pub const DEFAULT_PATH: &str = "config/portcullis.toml";

/// The shortest access a request may ask for (issue #2: "a request may be as short as 1 minute").
pub const MIN_REQUEST_DURATION: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub access: AccessConfig,
    /// Role name → description.
    pub roles: BTreeMap<String, String>,
    pub users: Vec<User>,
    pub targets: Vec<Target>,
    pub slack: Option<SlackConfig>,
    pub limits: Limits,
    pub audit: AuditConfig,
}

/// `[audit]`: where the activity log goes besides the bastion's own store (issue #18).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub sinks: Vec<SinkConfig>,
    /// Local events and recordings older than this go, once every sink has them (issue #18).
    pub retention_days: u32,
}

/// The retention the controls ask for: activity logs kept at least a year.
pub const MIN_RETENTION_DAYS: u32 = 365;

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sinks: Vec::new(),
            retention_days: MIN_RETENTION_DAYS,
        }
    }
}

/// One audit sink: it receives the chain's events in order, from its own durable cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// Which events it gets.
    pub events: SinkEvents,
    /// The shape of each event (file and webhook sinks).
    pub format: SinkFormat,
}

/// How a file or webhook sink writes each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkFormat {
    /// Our documented JSON shape (docs/AUDIT-FORMAT.md).
    #[default]
    Json,
    /// Mapped to OCSF classes, ours kept in `unmapped`.
    Ocsf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// JSON lines, one file a UTC day, for log shippers.
    File { dir: PathBuf },
    /// Batches POSTed as JSON, signed the Standard Webhooks way.
    Webhook {
        url: String,
        secret: SecretSource,
        headers: Vec<(String, String)>,
        authorization: Option<SecretSource>,
    },
    /// Finished recordings and query logs copied, verified and marked archived.
    Archive(ArchiveTarget),
    /// Tables in a PostgreSQL database, written idempotently.
    Postgres {
        /// The connection URL, password included.
        url: SecretSource,
        /// `None`: no TLS (`tls = "disable"`); otherwise the CA that verifies the server.
        ca_file: Option<PathBuf>,
    },
}

/// Where an archive sink copies recordings to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveTarget {
    /// An S3-compatible bucket.
    S3 {
        bucket: String,
        /// For S3-compatible services (MinIO, Ceph, R2); AWS's own when absent.
        endpoint: Option<String>,
        region: String,
        /// Put before every key (`portcullis/`, say).
        prefix: String,
        access_key_id: SecretSource,
        secret_access_key: SecretSource,
    },
    /// A folder, such as a mounted volume.
    Folder { dir: PathBuf },
}

impl SinkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Archive(ArchiveTarget::S3 { .. }) => "s3",
            SinkKind::Archive(ArchiveTarget::Folder { .. }) => "folder",
            SinkKind::File { .. } => "file",
            SinkKind::Postgres { .. } => "postgres",
            SinkKind::Webhook { .. } => "webhook",
        }
    }
}

/// The streams a sink takes: control events (the audit chain) and statements (query-log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkEvents {
    pub control: bool,
    pub statements: bool,
}

/// Bounds on what one unauthenticated or authenticated client may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The SSH handshake and authentication (and later the Postgres startup) must finish within.
    pub handshake_timeout: Duration,
    /// Channels one SSH connection may have open at once.
    pub max_channels_per_connection: u32,
    /// Reaching a target: TCP connect and the SSH handshake, or TCP, TLS and the PostgreSQL login.
    pub upstream_connect_timeout: Duration,
    /// How long a stopping bastion waits for live sessions to end and finalize their recordings
    /// and query logs (each synced to disk), and then for its listeners and tasks to stop.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub state_dir: PathBuf,
    pub recordings_dir: PathBuf,
    pub ssh_listen: SocketAddr,
    pub postgres_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Prometheus metrics, on a listener of their own so they are never served where Slack's
    /// endpoints are (issue #18).
    pub metrics_listen: SocketAddr,
    pub public_url: String,
    /// The PostgreSQL front end's certificate: from files, or generated in the state dir.
    pub postgres_tls: PostgresServerTls,
    /// Names the generated certificate is valid for: localhost, 127.0.0.1, ::1, the host of
    /// `public_url`, then `[server] tls_names`.
    pub tls_names: Vec<String>,
    /// The host and port clients reach the PostgreSQL front end at (`[server]
    /// postgres_public_address`, default the listen address).
    pub postgres_public_address: (String, u16),
    /// Accept a startup without TLS (off by default: tokens are passwords).
    pub postgres_allow_plaintext: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresServerTls {
    /// A private CA and a server certificate generated on first start in the state dir.
    Generated,
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

impl ServerConfig {
    /// The host engineers reach the bastion by, from `public_url`.
    pub fn public_host(&self) -> &str {
        self.public_url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', ':']).next())
            .filter(|host| !host.is_empty())
            .unwrap_or("bastion")
    }
}

#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub default_duration: Duration,
    pub max_duration: Duration,
    pub pending_request_ttl: Duration,
    pub expiry_warning: Duration,
    /// Addresses any connection may come from (issue #17), checked when it is accepted; a
    /// user's own `ip_allow` applies as well. `None`: any address.
    pub ip_allow: Option<Vec<IpNet>>,
    /// Consecutive failed logins of one user from one address that lock the user there.
    pub lockout_after: u32,
    /// How long such a lock lasts.
    pub lockout_for: Duration,
    /// Roles whose holders see every session and recording (issue #19); approvers see the
    /// sessions on the targets they approve, everyone their own.
    pub reviewer_roles: BTreeSet<String>,
}

impl AccessConfig {
    /// Does the global allow list let `address` connect?
    pub fn source_allowed(&self, address: std::net::IpAddr) -> bool {
        allows(self.ip_allow.as_deref(), address)
    }
}

impl User {
    /// Does the user's own allow list let them log in from `address`?
    pub fn source_allowed(&self, address: std::net::IpAddr) -> bool {
        allows(self.ip_allow.as_deref(), address)
    }
}

/// `None` allows every address; a list, the addresses in its networks.
fn allows(networks: Option<&[IpNet]>, address: std::net::IpAddr) -> bool {
    // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
    let address = match address {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, std::net::IpAddr::V4),
        v4 => v4,
    };
    networks.is_none_or(|networks| networks.iter().any(|network| network.contains(&address)))
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub ssh_keys: Vec<PublicKey>,
    pub slack_user_id: Option<String>,
    pub roles: BTreeSet<String>,
    /// `None`: any address; `Some`: only these networks.
    pub ip_allow: Option<Vec<IpNet>>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    pub requestable_by: BTreeSet<String>,
    pub approvers: BTreeSet<String>,
    pub approvals_required: u32,
    /// The target's own cap; the global `access.max_duration` applies as well.
    pub max_duration: Option<Duration>,
    pub slack_channel: Option<String>,
    /// What a session does when its recording cannot be written (issue #3): end, by default.
    pub on_recording_failure: RecordingFailurePolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingFailurePolicy {
    End,
    Continue,
}

#[derive(Debug, Clone)]
pub enum TargetKind {
    Ssh(SshTarget),
    Postgres(PostgresTarget),
    Container(ContainerTarget),
}

impl TargetKind {
    pub fn name(&self) -> &'static str {
        match self {
            TargetKind::Ssh(_) => "ssh",
            TargetKind::Postgres(_) => "postgres",
            TargetKind::Container(_) => "container",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SshTarget {
    /// `host:port`; the host may be a DNS name.
    pub address: String,
    pub login: String,
    pub credential: SshCredential,
    pub host_key: HostKeyPolicy,
    pub allow_port_forwarding: bool,
    pub record_input: bool,
}

#[derive(Debug, Clone)]
pub enum SshCredential {
    /// The bastion's own client key from the state dir (`portcullis client-key` prints it).
    ClientKey,
    PrivateKeyFile(PathBuf),
    Password(SecretSource),
}

#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    Pinned(PublicKey),
    KnownHostsFile(PathBuf),
    /// Trust on first use, recorded in state.
    AcceptFirst,
    /// No policy given: connections are refused (issue #3), `check-config` warns.
    Unpinned,
}

#[derive(Debug, Clone)]
pub struct PostgresTarget {
    pub address: String,
    pub database: String,
    pub login: String,
    /// `None` sends no password: only for upstreams that trust the bastion by other means.
    pub password: Option<SecretSource>,
    pub tls: PostgresTls,
    pub record_parameters: bool,
    /// Startup parameters that change identity or auditing (`role`, `log_*`, ...) which this
    /// target lets clients send anyway, lowercase (issue #17); every other such one is refused.
    pub allowed_startup_parameters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresTls {
    Disable,
    Require,
    VerifyFull { ca_file: PathBuf },
}

#[derive(Debug, Clone)]
pub struct ContainerTarget {
    /// The name of the SSH target the container runs on.
    pub host: String,
    pub container: String,
    pub runtime: ContainerRuntime,
    pub record_input: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRuntime {
    Docker,
    Podman,
    Kubectl,
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub bot_token: SecretSource,
    pub signing_secret: SecretSource,
    pub channel: String,
    pub alerts_channel: Option<String>,
    pub api_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", .problems.len(), Problems(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

struct Problems<'a>(&'a [String]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(formatter)?;
            }
            write!(formatter, "  {problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Config::parse(&text, path, &base)
    }

    /// Parses config text; `base` is the folder relative paths resolve against.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: toml_message(text, &error),
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let message = toml_message(text, error.inner());
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: if key.is_empty() || key == "." {
                    message
                } else {
                    format!("{key}: {message}")
                },
            }
        })?;
        let mut validator = Validator {
            base: base.to_path_buf(),
            problems: Vec::new(),
        };
        let config = validator.config(raw, path);
        if validator.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: validator.problems,
            })
        }
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|user| user.name == name)
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|target| target.name == name)
    }

    /// The longest access `target` may be granted for: the smaller of its own and the global cap.
    pub fn max_duration_for(&self, target: &Target) -> Duration {
        target.max_duration.map_or(self.access.max_duration, |own| {
            own.min(self.access.max_duration)
        })
    }

    /// Every secret source the config names, with its key path, for `check-config`.
    pub fn secret_sources(&self) -> Vec<(String, &SecretSource)> {
        let mut sources = Vec::new();
        for (index, target) in self.targets.iter().enumerate() {
            match &target.kind {
                TargetKind::Ssh(ssh) => {
                    if let SshCredential::Password(source) = &ssh.credential {
                        sources.push((
                            secret_key(&format!("targets[{index}].password"), source),
                            source,
                        ));
                    }
                }
                TargetKind::Postgres(postgres) => {
                    if let Some(source) = &postgres.password {
                        sources.push((
                            secret_key(&format!("targets[{index}].password"), source),
                            source,
                        ));
                    }
                }
                TargetKind::Container(_) => {}
            }
        }
        if let Some(slack) = &self.slack {
            sources.push((
                secret_key("slack.bot_token", &slack.bot_token),
                &slack.bot_token,
            ));
            sources.push((
                secret_key("slack.signing_secret", &slack.signing_secret),
                &slack.signing_secret,
            ));
        }
        for (index, sink) in self.audit.sinks.iter().enumerate() {
            match &sink.kind {
                SinkKind::Postgres { url, .. } => {
                    sources.push((secret_key(&format!("audit.sinks[{index}].url"), url), url));
                }
                SinkKind::Webhook {
                    secret,
                    authorization,
                    ..
                } => {
                    let key = format!("audit.sinks[{index}].secret");
                    sources.push((secret_key(&key, secret), secret));
                    if let Some(authorization) = authorization {
                        let key = format!("audit.sinks[{index}].authorization");
                        sources.push((secret_key(&key, authorization), authorization));
                    }
                }
                SinkKind::Archive(ArchiveTarget::S3 {
                    access_key_id,
                    secret_access_key,
                    ..
                }) => {
                    let key = format!("audit.sinks[{index}].access_key_id");
                    sources.push((secret_key(&key, access_key_id), access_key_id));
                    let key = format!("audit.sinks[{index}].secret_access_key");
                    sources.push((secret_key(&key, secret_access_key), secret_access_key));
                }
                SinkKind::File { .. } | SinkKind::Archive(ArchiveTarget::Folder { .. }) => {}
            }
        }
        sources
    }

    /// Every non-secret file the config names, with its key path, for `check-config`.
    pub fn named_files(&self) -> Vec<(String, &Path)> {
        let mut files = Vec::new();
        for (index, target) in self.targets.iter().enumerate() {
            match &target.kind {
                TargetKind::Ssh(ssh) => {
                    if let SshCredential::PrivateKeyFile(path) = &ssh.credential {
                        files.push((format!("targets[{index}].private_key_file"), path.as_path()));
                    }
                    if let HostKeyPolicy::KnownHostsFile(path) = &ssh.host_key {
                        files.push((format!("targets[{index}].known_hosts_file"), path.as_path()));
                    }
                }
                TargetKind::Postgres(postgres) => {
                    if let PostgresTls::VerifyFull { ca_file } = &postgres.tls {
                        files.push((format!("targets[{index}].ca_file"), ca_file.as_path()));
                    }
                }
                TargetKind::Container(_) => {}
            }
        }
        for (index, sink) in self.audit.sinks.iter().enumerate() {
            if let SinkKind::Postgres {
                ca_file: Some(ca_file),
                ..
            } = &sink.kind
            {
                files.push((format!("audit.sinks[{index}].ca_file"), ca_file.as_path()));
            }
        }
        files
    }
}

/// The key that named a secret: `prefix_env` or `prefix_file`.
fn secret_key(prefix: &str, source: &SecretSource) -> String {
    match source {
        SecretSource::Env(_) => format!("{prefix}_env"),
        SecretSource::File(_) => format!("{prefix}_file"),
    }
}

/// A TOML error as one line: its message and where it is, without the quoted source.
fn toml_message(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{message} (line {line})")
        }
        None => message,
    }
}

/// Names of users, targets and roles: they appear in SSH logins (`alice+web-1`), ids and messages,
/// so they are kept to characters that need no quoting anywhere. `+` is the login separator.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

struct Validator {
    base: PathBuf,
    problems: Vec<String>,
}

impl Validator {
    fn problem(&mut self, key: impl fmt::Display, message: impl fmt::Display) {
        self.problems.push(format!("{key}: {message}"));
    }

    fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let server = self.server(raw.server);
        let reviewer_roles = raw.access.reviewer_roles.clone();
        let access = self.access(raw.access);
        let roles = self.roles(raw.roles);
        // Named explicitly, a reviewer role must exist (a typo would give nobody the view).
        if let Some(names) = reviewer_roles {
            self.role_refs("access.reviewer_roles", names, &roles);
        }
        let users = self.users(raw.users, &roles);
        let targets = self.targets(raw.targets, &roles, &access);
        let slack = raw.slack.map(|slack| self.slack(slack));
        let limits = self.limits(raw.limits);
        let audit = self.audit(raw.audit);
        self.approval_policies(&targets, &users);
        Config {
            path: path.to_path_buf(),
            server,
            access,
            roles,
            users,
            targets,
            slack,
            limits,
            audit,
        }
    }

    fn audit(&mut self, raw: RawAudit) -> AuditConfig {
        let mut sinks: Vec<SinkConfig> = Vec::new();
        for (index, sink) in raw.sinks.into_iter().enumerate() {
            let key = format!("audit.sinks[{index}]");
            if let Some(sink) = self.sink(&key, sink) {
                if sinks.iter().any(|known| known.name == sink.name) {
                    self.problem(
                        format!("{key}.name"),
                        format!("{:?} names another sink too", sink.name),
                    );
                    continue;
                }
                sinks.push(sink);
            }
        }
        let retention_days = match (raw.retention_days, raw.allow_short_retention) {
            (None, _) => MIN_RETENTION_DAYS,
            (Some(days), _) if !(1..=36_500).contains(&days) => {
                self.problem(
                    "audit.retention_days",
                    format!("{days} is not between 1 and 36500"),
                );
                MIN_RETENTION_DAYS
            }
            (Some(days), Some(true)) => days as u32,
            (Some(days), _) if days < i64::from(MIN_RETENTION_DAYS) => {
                self.problem(
                    "audit.retention_days",
                    format!(
                        "{days} is under {MIN_RETENTION_DAYS}: activity logs are kept at least a \
                         year; set allow_short_retention = true to keep them shorter"
                    ),
                );
                MIN_RETENTION_DAYS
            }
            (Some(days), _) => days as u32,
        };
        AuditConfig {
            sinks,
            retention_days,
        }
    }

    fn sink(&mut self, key: &str, raw: RawSink) -> Option<SinkConfig> {
        if !is_valid_name(&raw.name) {
            self.problem(
                format!("{key}.name"),
                format!(
                    "{:?} is not a valid name (a-z, 0-9, '.', '_', '-')",
                    raw.name
                ),
            );
        }
        let mut events = SinkEvents {
            control: true,
            statements: true,
        };
        if let Some(names) = raw.events {
            if names.is_empty() {
                self.problem(
                    format!("{key}.events"),
                    "is empty: a sink takes control, statements or both",
                );
            }
            events = SinkEvents {
                control: false,
                statements: false,
            };
            for name in names {
                match name.as_str() {
                    "control" => events.control = true,
                    "statements" => events.statements = true,
                    other => self.problem(
                        format!("{key}.events"),
                        format!("{other:?} is not an event stream (control, statements)"),
                    ),
                }
            }
        }
        let format = match raw.format.as_deref() {
            None | Some("json") => SinkFormat::Json,
            Some("ocsf") if matches!(raw.kind.as_str(), "file" | "webhook") => SinkFormat::Ocsf,
            Some("ocsf") => {
                self.problem(
                    format!("{key}.format"),
                    "\"ocsf\" is for file and webhook sinks",
                );
                SinkFormat::Json
            }
            Some(other) => {
                self.problem(
                    format!("{key}.format"),
                    format!("{other:?} is not one of json, ocsf"),
                );
                SinkFormat::Json
            }
        };
        let kind = match raw.kind.as_str() {
            "file" => match raw.dir {
                Some(dir) => SinkKind::File {
                    dir: self.path(&dir),
                },
                None => {
                    self.problem(format!("{key}.dir"), "a file sink needs a folder");
                    return None;
                }
            },
            "postgres" => {
                let url = match (&raw.url_env, &raw.url_file) {
                    (Some(env), None) if !env.trim().is_empty() => SecretSource::Env(env.clone()),
                    (None, Some(file)) => SecretSource::File(self.path(file)),
                    _ => {
                        self.problem(
                            format!("{key}.url_env"),
                            "a postgres sink needs exactly one of url_env, url_file",
                        );
                        return None;
                    }
                };
                let ca_file = match (raw.tls.as_deref().unwrap_or("verify-full"), &raw.ca_file) {
                    ("verify-full", Some(file)) => Some(self.path(file)),
                    ("verify-full", None) => {
                        self.problem(
                            format!("{key}.ca_file"),
                            "is required with tls = \"verify-full\" (the default)",
                        );
                        return None;
                    }
                    ("disable", None) => None,
                    ("disable", Some(_)) => {
                        self.problem(
                            format!("{key}.ca_file"),
                            "is only used with tls = \"verify-full\"",
                        );
                        return None;
                    }
                    (other, _) => {
                        self.problem(
                            format!("{key}.tls"),
                            format!("{other:?} is not one of verify-full, disable"),
                        );
                        return None;
                    }
                };
                SinkKind::Postgres { url, ca_file }
            }
            "folder" => match raw.dir {
                Some(dir) => SinkKind::Archive(ArchiveTarget::Folder {
                    dir: self.path(&dir),
                }),
                None => {
                    self.problem(format!("{key}.dir"), "a folder sink needs a folder");
                    return None;
                }
            },
            "s3" => {
                let Some(bucket) = raw.bucket.filter(|bucket| !bucket.trim().is_empty()) else {
                    self.problem(format!("{key}.bucket"), "an s3 sink needs a bucket");
                    return None;
                };
                if let Some(endpoint) = &raw.endpoint {
                    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                        .iter()
                        .any(|prefix| endpoint.starts_with(prefix));
                    if !endpoint.starts_with("https://") && !loopback {
                        self.problem(
                            format!("{key}.endpoint"),
                            format!("{endpoint:?} must be https:// (plain http only to loopback)"),
                        );
                        return None;
                    }
                }
                let mut secret =
                    |name: &str, env: &Option<String>, file: &Option<String>| match (env, file) {
                        (Some(env), None) if !env.trim().is_empty() => {
                            Some(SecretSource::Env(env.clone()))
                        }
                        (None, Some(file)) => Some(SecretSource::File(self.path(file))),
                        _ => {
                            self.problem(
                                format!("{key}.{name}_env"),
                                format!("an s3 sink needs exactly one of {name}_env, {name}_file"),
                            );
                            None
                        }
                    };
                let access_key_id = secret(
                    "access_key_id",
                    &raw.access_key_id_env,
                    &raw.access_key_id_file,
                );
                let secret_access_key = secret(
                    "secret_access_key",
                    &raw.secret_access_key_env,
                    &raw.secret_access_key_file,
                );
                let (Some(access_key_id), Some(secret_access_key)) =
                    (access_key_id, secret_access_key)
                else {
                    return None;
                };
                SinkKind::Archive(ArchiveTarget::S3 {
                    bucket,
                    endpoint: raw.endpoint,
                    region: raw.region.unwrap_or_else(|| "us-east-1".to_string()),
                    prefix: raw.prefix.unwrap_or_default(),
                    access_key_id,
                    secret_access_key,
                })
            }
            "webhook" => {
                let url = raw.url.unwrap_or_default();
                let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                    .iter()
                    .any(|prefix| url.starts_with(prefix));
                if !url.starts_with("https://") && !loopback {
                    self.problem(
                        format!("{key}.url"),
                        format!("{url:?} must be https:// (plain http only to loopback)"),
                    );
                    return None;
                }
                let secret = match (&raw.secret_env, &raw.secret_file) {
                    (Some(env), None) if !env.trim().is_empty() => SecretSource::Env(env.clone()),
                    (None, Some(file)) => SecretSource::File(self.path(file)),
                    _ => {
                        self.problem(
                            format!("{key}.secret_env"),
                            "a webhook sink needs exactly one of secret_env, secret_file",
                        );
                        return None;
                    }
                };
                let authorization = match (&raw.authorization_env, &raw.authorization_file) {
                    (None, None) => None,
                    (Some(env), None) => Some(SecretSource::Env(env.clone())),
                    (None, Some(file)) => Some(SecretSource::File(self.path(file))),
                    (Some(_), Some(_)) => {
                        self.problem(
                            format!("{key}.authorization_env"),
                            "give one of authorization_env, authorization_file",
                        );
                        return None;
                    }
                };
                let headers = raw.headers.unwrap_or_default().into_iter().collect();
                SinkKind::Webhook {
                    url,
                    secret,
                    headers,
                    authorization,
                }
            }
            other => {
                self.problem(
                    format!("{key}.kind"),
                    format!(
                        "{other:?} is not a sink kind this build has (file, postgres, webhook, s3, folder)"
                    ),
                );
                return None;
            }
        };
        if matches!(kind, SinkKind::Archive(_)) {
            // An archive takes finished recordings, which `recording.finalized` events name.
            events = SinkEvents {
                control: true,
                statements: false,
            };
        }
        Some(SinkConfig {
            name: raw.name,
            kind,
            events,
            format,
        })
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let max_channels = match raw.max_channels_per_connection {
            None => 64,
            Some(count) if (1..=1024).contains(&count) => count as u32,
            Some(count) => {
                self.problem(
                    "limits.max_channels_per_connection",
                    format!("{count} is out of range (1 to 1024)"),
                );
                64
            }
        };
        Limits {
            handshake_timeout: self.duration(
                "limits.handshake_timeout",
                raw.handshake_timeout,
                Duration::from_secs(10),
            ),
            max_channels_per_connection: max_channels,
            // OpenSSH's LoginGraceTime is 120 s; a loaded target answers late, not never.
            upstream_connect_timeout: self.duration(
                "limits.upstream_connect_timeout",
                raw.upstream_connect_timeout,
                Duration::from_secs(60),
            ),
            shutdown_timeout: self.shutdown_timeout(raw.shutdown_timeout),
        }
    }

    /// `limits.shutdown_timeout`: 10 s by default, from 1 s to 10 minutes. Shutdown waits up to
    /// this long for sessions, then up to this long for listeners and tasks; a service manager
    /// kills a bastion that outlasts its own stop timeout (`TimeoutStopSec=30s` in
    /// systemd/portcullis.service), and recordings still open then stay unfinalized.
    fn shutdown_timeout(&mut self, value: Option<String>) -> Duration {
        let default = Duration::from_secs(10);
        let timeout = self.duration("limits.shutdown_timeout", value, default);
        // Zero is refused by the duration parser itself.
        if timeout > Duration::from_secs(600) {
            self.problem(
                "limits.shutdown_timeout",
                format!("{}s is out of range (1s to 600s)", timeout.as_secs()),
            );
            return default;
        }
        timeout
    }

    fn path(&self, value: &str) -> PathBuf {
        let path = PathBuf::from(value);
        if path.is_absolute() {
            path
        } else {
            normalize(&self.base.join(path))
        }
    }

    fn socket(&mut self, key: &str, value: Option<String>, default: &str) -> SocketAddr {
        let text = value.unwrap_or_else(|| default.to_string());
        text.parse().unwrap_or_else(|_| {
            self.problem(
                key,
                format!("{text:?} is not a socket address (like 127.0.0.1:2222)"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn duration(&mut self, key: &str, value: Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => parse_duration(&text).unwrap_or_else(|message| {
                self.problem(key, message);
                default
            }),
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let ssh_listen = self.socket("server.ssh_listen", raw.ssh_listen, "127.0.0.1:2222");
        let postgres_listen = self.socket(
            "server.postgres_listen",
            raw.postgres_listen,
            "127.0.0.1:6432",
        );
        let http_listen = self.socket("server.http_listen", raw.http_listen, "127.0.0.1:8080");
        let metrics_listen = self.socket(
            "server.metrics_listen",
            raw.metrics_listen,
            "127.0.0.1:9464",
        );
        let public_url = raw
            .public_url
            .unwrap_or_else(|| format!("http://{http_listen}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://"))
            || public_url.len() <= "https://".len()
        {
            self.problem(
                "server.public_url",
                format!("{public_url:?} is not an http:// or https:// URL"),
            );
        }
        for (key, value) in [
            ("server.state_dir", &raw.state_dir),
            ("server.recordings_dir", &raw.recordings_dir),
        ] {
            if value.trim().is_empty() {
                self.problem(key, "must not be empty");
            }
        }
        let postgres_tls = match (raw.postgres_tls_cert_file, raw.postgres_tls_key_file) {
            (None, None) => PostgresServerTls::Generated,
            (Some(cert), Some(key)) => PostgresServerTls::Files {
                cert_file: self.path(&cert),
                key_file: self.path(&key),
            },
            _ => {
                self.problem(
                    "server.postgres_tls_cert_file",
                    "set both postgres_tls_cert_file and postgres_tls_key_file, or neither",
                );
                PostgresServerTls::Generated
            }
        };
        let public_url = public_url.trim_end_matches('/').to_string();
        let mut server = ServerConfig {
            state_dir: self.path(&raw.state_dir),
            recordings_dir: self.path(&raw.recordings_dir),
            ssh_listen,
            postgres_listen,
            http_listen,
            metrics_listen,
            public_url,
            postgres_tls,
            tls_names: Vec::new(),
            postgres_public_address: (postgres_listen.ip().to_string(), postgres_listen.port()),
            postgres_allow_plaintext: raw.postgres_allow_plaintext.unwrap_or(false),
        };
        let mut names: Vec<String> = Vec::new();
        let always = ["localhost", "127.0.0.1", "::1", server.public_host()].map(str::to_string);
        for name in always.into_iter().chain(raw.tls_names.unwrap_or_default()) {
            if name.trim().is_empty() {
                self.problem("server.tls_names", "names must not be empty");
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
        server.tls_names = names;
        server.postgres_public_address = match raw.postgres_public_address {
            Some(address) => host_and_port(&address).unwrap_or_else(|| {
                self.problem(
                    "server.postgres_public_address",
                    format!("{address:?} is not host:port"),
                );
                server.postgres_public_address.clone()
            }),
            // A wildcard listen address is not one clients can use: name the public host.
            None if postgres_listen.ip().is_unspecified() => {
                (server.public_host().to_string(), postgres_listen.port())
            }
            None => server.postgres_public_address.clone(),
        };
        server
    }

    /// Parses a list of addresses and CIDR networks, naming each bad one by its index.
    fn networks(&mut self, key: &str, networks: &[String]) -> Vec<IpNet> {
        networks
            .iter()
            .enumerate()
            .filter_map(|(index, text)| match parse_network(text) {
                Some(network) => Some(network),
                None => {
                    self.problem(
                        format!("{key}[{index}]"),
                        format!("{text:?} is not an IP address or CIDR network"),
                    );
                    None
                }
            })
            .collect()
    }

    fn access(&mut self, raw: RawAccess) -> AccessConfig {
        let hour = Duration::from_secs(3_600);
        let access = AccessConfig {
            default_duration: self.duration("access.default_duration", raw.default_duration, hour),
            max_duration: self.duration("access.max_duration", raw.max_duration, 8 * hour),
            pending_request_ttl: self.duration(
                "access.pending_request_ttl",
                raw.pending_request_ttl,
                Duration::from_secs(30 * 60),
            ),
            expiry_warning: self.duration(
                "access.expiry_warning",
                raw.expiry_warning,
                Duration::from_secs(5 * 60),
            ),
            ip_allow: raw
                .ip_allow
                .map(|networks| self.networks("access.ip_allow", &networks)),
            lockout_after: match raw.lockout_after {
                None => 5,
                Some(count) if (1..=1000).contains(&count) => count as u32,
                Some(count) => {
                    self.problem(
                        "access.lockout_after",
                        format!("{count} is not between 1 and 1000"),
                    );
                    5
                }
            },
            lockout_for: self.duration(
                "access.lockout_for",
                raw.lockout_for,
                Duration::from_secs(30 * 60),
            ),
            reviewer_roles: raw
                .reviewer_roles
                .clone()
                .unwrap_or_else(|| vec!["reviewer".to_string()])
                .into_iter()
                .collect(),
        };
        if access.default_duration > access.max_duration {
            self.problem(
                "access.default_duration",
                format!(
                    "{:?} exceeds access.max_duration ({})",
                    format_duration(access.default_duration),
                    format_duration(access.max_duration)
                ),
            );
        }
        if access.max_duration < MIN_REQUEST_DURATION {
            self.problem(
                "access.max_duration",
                format!(
                    "{:?} is shorter than the 1m minimum request",
                    format_duration(access.max_duration)
                ),
            );
        }
        access
    }

    fn roles(&mut self, raw: BTreeMap<String, String>) -> BTreeMap<String, String> {
        for name in raw.keys() {
            if !is_valid_name(name) {
                self.problem(
                    format!("roles.{name}"),
                    format!("{name:?} is not a valid role name (lowercase letters, digits, . _ -)"),
                );
            }
        }
        raw
    }

    fn role_refs(
        &mut self,
        key: &str,
        names: Vec<String>,
        roles: &BTreeMap<String, String>,
    ) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        for (index, name) in names.into_iter().enumerate() {
            if !roles.contains_key(&name) {
                self.problem(
                    format!("{key}[{index}]"),
                    format!("{name:?} is not a role declared in [roles]"),
                );
            } else if !set.insert(name.clone()) {
                self.problem(
                    format!("{key}[{index}]"),
                    format!("{name:?} is listed twice"),
                );
            }
        }
        set
    }

    fn users(&mut self, raw: Vec<RawUser>, roles: &BTreeMap<String, String>) -> Vec<User> {
        let mut seen = BTreeSet::new();
        let mut users = Vec::with_capacity(raw.len());
        for (index, user) in raw.into_iter().enumerate() {
            let key = format!("users[{index}]");
            if !is_valid_name(&user.name) {
                self.problem(
                    format!("{key}.name"),
                    format!(
                        "{:?} is not a valid user name (lowercase letters, digits, . _ -)",
                        user.name
                    ),
                );
            } else if !seen.insert(user.name.clone()) {
                self.problem(
                    format!("{key}.name"),
                    format!("{:?} is a duplicate user name", user.name),
                );
            }
            let mut ssh_keys = Vec::new();
            for (key_index, text) in user.ssh_keys.iter().enumerate() {
                match PublicKey::from_openssh(text.trim()) {
                    Ok(public_key) => ssh_keys.push(public_key),
                    Err(error) => self.problem(
                        format!("{key}.ssh_keys[{key_index}]"),
                        format!("{:?} is not an OpenSSH public key: {error}", shorten(text)),
                    ),
                }
            }
            let user_roles = self.role_refs(&format!("{key}.roles"), user.roles, roles);
            let ip_allow = user
                .ip_allow
                .map(|networks| self.networks(&format!("{key}.ip_allow"), &networks));
            if let Some(slack_id) = &user.slack_user_id
                && slack_id.trim().is_empty()
            {
                self.problem(format!("{key}.slack_user_id"), "must not be empty");
            }
            users.push(User {
                name: user.name,
                ssh_keys,
                slack_user_id: user.slack_user_id,
                roles: user_roles,
                ip_allow,
            });
        }
        users
    }

    fn targets(
        &mut self,
        raw: Vec<RawTarget>,
        roles: &BTreeMap<String, String>,
        access: &AccessConfig,
    ) -> Vec<Target> {
        let ssh_names: BTreeSet<String> = raw
            .iter()
            .filter(|target| target.kind == "ssh")
            .map(|target| target.name.clone())
            .collect();
        let mut seen = BTreeSet::new();
        let mut targets = Vec::with_capacity(raw.len());
        for (index, target) in raw.into_iter().enumerate() {
            let key = format!("targets[{index}]");
            if !is_valid_name(&target.name) {
                self.problem(
                    format!("{key}.name"),
                    format!(
                        "{:?} is not a valid target name (lowercase letters, digits, . _ -)",
                        target.name
                    ),
                );
            } else if !seen.insert(target.name.clone()) {
                self.problem(
                    format!("{key}.name"),
                    format!("{:?} is a duplicate target name", target.name),
                );
            }
            let requestable_by = self.role_refs(
                &format!("{key}.requestable_by"),
                target.requestable_by.clone(),
                roles,
            );
            let approvers =
                self.role_refs(&format!("{key}.approvers"), target.approvers.clone(), roles);
            if approvers.is_empty() {
                self.problem(
                    format!("{key}.approvers"),
                    "no approver role: nobody could ever approve access to this target",
                );
            }
            let approvals_required = match target.approvals_required {
                None => 1,
                Some(count) if (1..=10).contains(&count) => count as u32,
                Some(count) => {
                    self.problem(
                        format!("{key}.approvals_required"),
                        format!("{count} is out of range (1 to 10)"),
                    );
                    1
                }
            };
            let max_duration =
                target
                    .max_duration
                    .clone()
                    .and_then(|text| match parse_duration(&text) {
                        Ok(duration) if duration > access.max_duration => {
                            self.problem(
                                format!("{key}.max_duration"),
                                format!(
                                    "{text:?} exceeds access.max_duration ({})",
                                    format_duration(access.max_duration)
                                ),
                            );
                            None
                        }
                        Ok(duration) if duration < MIN_REQUEST_DURATION => {
                            self.problem(
                                format!("{key}.max_duration"),
                                format!("{text:?} is shorter than the 1m minimum request"),
                            );
                            None
                        }
                        Ok(duration) => Some(duration),
                        Err(message) => {
                            self.problem(format!("{key}.max_duration"), message);
                            None
                        }
                    });
            let kind = self.target_kind(&key, &target, &ssh_names);
            let on_recording_failure = match target.on_recording_failure.as_deref() {
                None | Some("end") => RecordingFailurePolicy::End,
                // Issue #17: the query log is a database session's whole record, so a database
                // session never runs without it; say so at load rather than ignore the key.
                Some("continue") if target.kind == "postgres" => {
                    self.problem(
                        format!("{key}.on_recording_failure"),
                        "\"continue\" is not offered for database targets: a session whose \
                         query log cannot be written always ends"
                            .to_string(),
                    );
                    RecordingFailurePolicy::End
                }
                Some("continue") => RecordingFailurePolicy::Continue,
                Some(other) => {
                    self.problem(
                        format!("{key}.on_recording_failure"),
                        format!("{other:?} is not one of end, continue"),
                    );
                    RecordingFailurePolicy::End
                }
            };
            targets.push(Target {
                name: target.name,
                kind,
                requestable_by,
                approvers,
                approvals_required,
                max_duration,
                slack_channel: target.slack_channel,
                on_recording_failure,
            });
        }
        targets
    }

    fn target_kind(
        &mut self,
        key: &str,
        target: &RawTarget,
        ssh_names: &BTreeSet<String>,
    ) -> TargetKind {
        // Keys that belong to another kind are errors: a `tls` on an SSH target would otherwise
        // look like protection that is not there.
        let foreign: &[(&str, bool)] = match target.kind.as_str() {
            "ssh" => &[
                ("database", target.database.is_some()),
                ("tls", target.tls.is_some()),
                ("ca_file", target.ca_file.is_some()),
                ("host", target.host.is_some()),
                ("container", target.container.is_some()),
                ("runtime", target.runtime.is_some()),
                ("record_parameters", target.record_parameters.is_some()),
                (
                    "allowed_startup_parameters",
                    target.allowed_startup_parameters.is_some(),
                ),
            ],
            "postgres" => &[
                ("private_key_file", target.private_key_file.is_some()),
                ("host_key", target.host_key.is_some()),
                ("known_hosts_file", target.known_hosts_file.is_some()),
                ("host", target.host.is_some()),
                ("container", target.container.is_some()),
                ("runtime", target.runtime.is_some()),
                (
                    "allow_port_forwarding",
                    target.allow_port_forwarding.is_some(),
                ),
                ("record_input", target.record_input.is_some()),
            ],
            "container" => &[
                ("address", target.address.is_some()),
                ("login", target.login.is_some()),
                ("database", target.database.is_some()),
                ("private_key_file", target.private_key_file.is_some()),
                ("password_file", target.password_file.is_some()),
                ("password_env", target.password_env.is_some()),
                ("host_key", target.host_key.is_some()),
                ("known_hosts_file", target.known_hosts_file.is_some()),
                ("tls", target.tls.is_some()),
                ("ca_file", target.ca_file.is_some()),
                (
                    "allow_port_forwarding",
                    target.allow_port_forwarding.is_some(),
                ),
                ("record_parameters", target.record_parameters.is_some()),
                (
                    "allowed_startup_parameters",
                    target.allowed_startup_parameters.is_some(),
                ),
            ],
            _ => &[],
        };
        for (name, present) in foreign {
            if *present {
                self.problem(
                    format!("{key}.{name}"),
                    format!("not a setting of a {} target", target.kind),
                );
            }
        }
        match target.kind.as_str() {
            "ssh" => TargetKind::Ssh(SshTarget {
                address: self.address(key, target.address.as_deref(), 22),
                login: self.required(key, "login", target.login.as_deref()),
                credential: self.ssh_credential(key, target),
                host_key: self.host_key(key, target),
                allow_port_forwarding: target.allow_port_forwarding.unwrap_or(false),
                record_input: target.record_input.unwrap_or(true),
            }),
            "postgres" => TargetKind::Postgres(PostgresTarget {
                address: self.address(key, target.address.as_deref(), 5432),
                database: self.required(key, "database", target.database.as_deref()),
                login: self.required(key, "login", target.login.as_deref()),
                password: self.password(key, target),
                tls: self.postgres_tls(key, target),
                record_parameters: target.record_parameters.unwrap_or(true),
                allowed_startup_parameters: target
                    .allowed_startup_parameters
                    .iter()
                    .flatten()
                    .map(|name| name.to_ascii_lowercase().replace('-', "_"))
                    .collect(),
            }),
            "container" => {
                let host = self.required(key, "host", target.host.as_deref());
                if !host.is_empty() && !ssh_names.contains(&host) {
                    self.problem(
                        format!("{key}.host"),
                        format!("{host:?} is not the name of an ssh target"),
                    );
                }
                let runtime = match target.runtime.as_deref().unwrap_or("docker") {
                    "docker" => ContainerRuntime::Docker,
                    "podman" => ContainerRuntime::Podman,
                    "kubectl" => ContainerRuntime::Kubectl,
                    other => {
                        self.problem(
                            format!("{key}.runtime"),
                            format!("{other:?} is not one of docker, podman, kubectl"),
                        );
                        ContainerRuntime::Docker
                    }
                };
                TargetKind::Container(ContainerTarget {
                    host,
                    container: self.required(key, "container", target.container.as_deref()),
                    runtime,
                    record_input: target.record_input.unwrap_or(true),
                })
            }
            other => {
                self.problem(
                    format!("{key}.kind"),
                    format!("{other:?} is not one of ssh, postgres, container"),
                );
                TargetKind::Ssh(SshTarget {
                    address: String::new(),
                    login: String::new(),
                    credential: SshCredential::ClientKey,
                    host_key: HostKeyPolicy::Unpinned,
                    allow_port_forwarding: false,
                    record_input: true,
                })
            }
        }
    }

    fn required(&mut self, key: &str, name: &str, value: Option<&str>) -> String {
        match value {
            Some(text) if !text.trim().is_empty() => text.to_string(),
            Some(_) => {
                self.problem(format!("{key}.{name}"), "must not be empty");
                String::new()
            }
            None => {
                self.problem(format!("{key}.{name}"), "is required");
                String::new()
            }
        }
    }

    /// `host:port` or `[v6]:port`; the host may be a DNS name resolved when connecting.
    fn address(&mut self, key: &str, value: Option<&str>, default_port: u16) -> String {
        let Some(text) = value else {
            self.problem(format!("{key}.address"), "is required");
            return String::new();
        };
        if text.parse::<SocketAddr>().is_ok() {
            return text.to_string();
        }
        let valid = text.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(['[', ']', ' ', '/'])
                && port.parse::<u16>().is_ok_and(|port| port > 0)
        });
        if valid {
            text.to_string()
        } else {
            self.problem(
                format!("{key}.address"),
                format!("{text:?} is not host:port (like db.internal:{default_port})"),
            );
            String::new()
        }
    }

    fn password(&mut self, key: &str, target: &RawTarget) -> Option<SecretSource> {
        match (&target.password_file, &target.password_env) {
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{key}.password_env"),
                    "set only one of password_file and password_env",
                );
                None
            }
            (Some(file), None) => Some(SecretSource::File(self.path(file))),
            (None, Some(env)) if env.trim().is_empty() => {
                self.problem(format!("{key}.password_env"), "must not be empty");
                None
            }
            (None, Some(env)) => Some(SecretSource::Env(env.clone())),
            (None, None) => None,
        }
    }

    fn ssh_credential(&mut self, key: &str, target: &RawTarget) -> SshCredential {
        let password = self.password(key, target);
        match (&target.private_key_file, password) {
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{key}.private_key_file"),
                    "set only one of private_key_file, password_file and password_env",
                );
                SshCredential::ClientKey
            }
            (Some(file), None) => SshCredential::PrivateKeyFile(self.path(file)),
            (None, Some(source)) => SshCredential::Password(source),
            (None, None) => SshCredential::ClientKey,
        }
    }

    fn host_key(&mut self, key: &str, target: &RawTarget) -> HostKeyPolicy {
        match (&target.host_key, &target.known_hosts_file) {
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{key}.known_hosts_file"),
                    "set only one of host_key and known_hosts_file",
                );
                HostKeyPolicy::Unpinned
            }
            (Some(text), None) if text == "accept-first" => HostKeyPolicy::AcceptFirst,
            (Some(text), None) => match PublicKey::from_openssh(text.trim()) {
                Ok(public_key) => HostKeyPolicy::Pinned(public_key),
                Err(error) => {
                    self.problem(
                        format!("{key}.host_key"),
                        format!(
                            "{:?} is neither an OpenSSH public key nor \"accept-first\": {error}",
                            shorten(text)
                        ),
                    );
                    HostKeyPolicy::Unpinned
                }
            },
            (None, Some(file)) => HostKeyPolicy::KnownHostsFile(self.path(file)),
            (None, None) => HostKeyPolicy::Unpinned,
        }
    }

    fn postgres_tls(&mut self, key: &str, target: &RawTarget) -> PostgresTls {
        // Strict by default: a production database is reached over verified TLS unless the config
        // says otherwise.
        match target.tls.as_deref().unwrap_or("verify-full") {
            "disable" | "require" if target.ca_file.is_some() => {
                self.problem(
                    format!("{key}.ca_file"),
                    "is only used with tls = \"verify-full\"",
                );
                PostgresTls::Disable
            }
            "disable" => PostgresTls::Disable,
            "require" => PostgresTls::Require,
            "verify-full" => match &target.ca_file {
                Some(file) => PostgresTls::VerifyFull {
                    ca_file: self.path(file),
                },
                None => {
                    self.problem(
                        format!("{key}.ca_file"),
                        "is required with tls = \"verify-full\" (the default)",
                    );
                    PostgresTls::Disable
                }
            },
            other => {
                self.problem(
                    format!("{key}.tls"),
                    format!("{other:?} is not one of disable, require, verify-full"),
                );
                PostgresTls::Disable
            }
        }
    }

    fn secret_pair(
        &mut self,
        key: &str,
        env: &Option<String>,
        file: &Option<String>,
    ) -> SecretSource {
        match (env, file) {
            (Some(env), None) if !env.trim().is_empty() => SecretSource::Env(env.clone()),
            (None, Some(file)) if !file.trim().is_empty() => SecretSource::File(self.path(file)),
            (Some(_), Some(_)) => {
                self.problem(
                    format!("slack.{key}_env"),
                    format!("set only one of {key}_env and {key}_file"),
                );
                SecretSource::Env(String::new())
            }
            _ => {
                self.problem(
                    format!("slack.{key}_env"),
                    format!(
                        "one of {key}_env or {key}_file is required (secrets are never inline)"
                    ),
                );
                SecretSource::Env(String::new())
            }
        }
    }

    fn slack(&mut self, raw: RawSlack) -> SlackConfig {
        let bot_token = self.secret_pair("bot_token", &raw.bot_token_env, &raw.bot_token_file);
        let signing_secret = self.secret_pair(
            "signing_secret",
            &raw.signing_secret_env,
            &raw.signing_secret_file,
        );
        if raw.channel.trim().is_empty() {
            self.problem("slack.channel", "must not be empty");
        }
        let api_url = raw
            .api_url
            .unwrap_or_else(|| "https://slack.com/api".to_string());
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            self.problem(
                "slack.api_url",
                format!("{api_url:?} is not an http(s) URL"),
            );
        }
        SlackConfig {
            bot_token,
            signing_secret,
            channel: raw.channel,
            alerts_channel: raw.alerts_channel,
            api_url: api_url.trim_end_matches('/').to_string(),
        }
    }

    /// A policy that can never be met is a config error, not a request that waits forever: for each
    /// user who may request a target, the users holding an approver role, less the requester
    /// (nobody approves their own request), must number at least `approvals_required`.
    fn approval_policies(&mut self, targets: &[Target], users: &[User]) {
        for (index, target) in targets.iter().enumerate() {
            let approvers: Vec<&str> = users
                .iter()
                .filter(|user| !user.roles.is_disjoint(&target.approvers))
                .map(|user| user.name.as_str())
                .collect();
            let required = target.approvals_required as usize;
            if approvers.len() < required {
                self.problem(
                    format!("targets[{index}].approvals_required"),
                    format!(
                        "{required} can never be met: only {} user(s) hold an approver role",
                        approvers.len()
                    ),
                );
                continue;
            }
            let requesters = users
                .iter()
                .filter(|user| !user.roles.is_disjoint(&target.requestable_by));
            for requester in requesters {
                let others: Vec<&str> = approvers
                    .iter()
                    .copied()
                    .filter(|name| *name != requester.name)
                    .collect();
                if others.len() < required {
                    self.problem(
                        format!("targets[{index}].approvals_required"),
                        format!(
                            "{required} can never be met for a request by {}: only {} other \
                             user(s) hold an approver role ({})",
                            requester.name,
                            others.len(),
                            if others.is_empty() {
                                "none".to_string()
                            } else {
                                others.join(", ")
                            }
                        ),
                    );
                    break;
                }
            }
        }
    }
}

/// Folds `.` and `name/..` without touching the file system, so `config/../state` reads `state`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

fn parse_network(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text.to_string()
    }
}

/// `db.example.com:6432`, `10.0.0.5:6432` or `[::1]:6432` as a host and a port.
fn host_and_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|port| *port != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    let valid = !host.is_empty() && !host.contains(['/', ' ', '@']);
    valid.then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests;
