//! The first stage of config loading: serde structs that mirror the TOML file key for key.
//!
//! Nothing here is trusted or interpreted: durations, addresses, keys and paths stay strings until
//! `config::validate` turns them into typed values and names the key path of every problem.
//! `deny_unknown_fields` everywhere, because a misspelt security option must not be silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub access: RawAccess,
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    #[serde(default)]
    pub users: Vec<RawUser>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    pub slack: Option<RawSlack>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub audit: RawAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default)]
    pub sinks: Vec<RawSink>,
    /// Days local events and recordings are kept once every sink has them (issue #18).
    pub retention_days: Option<i64>,
    pub allow_short_retention: Option<bool>,
}

/// One `[[audit.sinks]]` (issue #18).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: String,
    pub kind: String,
    /// `file`: the folder of the daily files.
    pub dir: Option<String>,
    /// `postgres`: the connection URL (with its password), from an env var or a file.
    pub url_env: Option<String>,
    pub url_file: Option<String>,
    /// `postgres`: `verify-full` (default, with `ca_file`) or `disable`.
    pub tls: Option<String>,
    pub ca_file: Option<String>,
    /// `webhook` (and `postgres`, in `url_env` / `url_file`): where batches go.
    pub url: Option<String>,
    /// `webhook`: the Standard Webhooks secret (`whsec_...`).
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    /// `webhook`: extra headers, and an `Authorization` value kept secret.
    pub headers: Option<BTreeMap<String, String>>,
    pub authorization_env: Option<String>,
    pub authorization_file: Option<String>,
    /// `s3`: the bucket, an S3-compatible endpoint, region, key prefix and keys.
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    pub access_key_id_env: Option<String>,
    pub access_key_id_file: Option<String>,
    pub secret_access_key_env: Option<String>,
    pub secret_access_key_file: Option<String>,
    /// `control`, `statements` (default both).
    pub events: Option<Vec<String>>,
    /// `json` (default).
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub handshake_timeout: Option<String>,
    pub max_channels_per_connection: Option<i64>,
    pub upstream_connect_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub state_dir: String,
    pub recordings_dir: String,
    pub ssh_listen: Option<String>,
    pub postgres_listen: Option<String>,
    pub http_listen: Option<String>,
    /// `GET /metrics` for Prometheus, on its own listener (issue #18).
    pub metrics_listen: Option<String>,
    pub public_url: Option<String>,
    pub postgres_tls_cert_file: Option<String>,
    pub postgres_tls_key_file: Option<String>,
    /// Extra names for the generated certificate (`postgres_tls_names` was its first name).
    #[serde(alias = "postgres_tls_names")]
    pub tls_names: Option<Vec<String>>,
    /// `host:port` clients use to reach the PostgreSQL front end (printed by `token --pgpass`).
    pub postgres_public_address: Option<String>,
    pub postgres_allow_plaintext: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    pub default_duration: Option<String>,
    pub max_duration: Option<String>,
    pub pending_request_ttl: Option<String>,
    pub expiry_warning: Option<String>,
    pub ip_allow: Option<Vec<String>>,
    pub lockout_after: Option<i64>,
    pub lockout_for: Option<String>,
    /// Roles whose holders see every session (issue #19).
    pub reviewer_roles: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    pub slack_user_id: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub ip_allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: String,
    pub kind: String,
    pub address: Option<String>,
    pub login: Option<String>,
    pub database: Option<String>,
    pub private_key_file: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub host_key: Option<String>,
    pub known_hosts_file: Option<String>,
    pub tls: Option<String>,
    pub ca_file: Option<String>,
    /// For `kind = "container"`: the SSH target the container runs on.
    pub host: Option<String>,
    pub container: Option<String>,
    pub runtime: Option<String>,
    #[serde(default)]
    pub requestable_by: Vec<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
    pub approvals_required: Option<i64>,
    pub max_duration: Option<String>,
    pub allow_port_forwarding: Option<bool>,
    pub record_input: Option<bool>,
    pub record_parameters: Option<bool>,
    pub allowed_startup_parameters: Option<Vec<String>>,
    pub slack_channel: Option<String>,
    pub on_recording_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlack {
    pub bot_token_env: Option<String>,
    pub bot_token_file: Option<String>,
    pub signing_secret_env: Option<String>,
    pub signing_secret_file: Option<String>,
    pub channel: String,
    pub alerts_channel: Option<String>,
    pub api_url: Option<String>,
}
