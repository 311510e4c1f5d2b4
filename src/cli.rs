//! The command line for the operator on the bastion host: argument parsing, each subcommand, and
//! how results print (tables for people, one JSON object with `--json` for scripts).
//!
//! Exit codes are decided here, in `run`: 0 success, 1 refused or failed, 2 usage (clap's).
//! Approvals deliberately have no command here: they come from authenticated leaders (Slack, or the
//! SSH command interface), never from whoever holds a shell on the bastion host (issue #2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::access::Access;
use crate::access::model::{AccessRequest, Grant};
use crate::audit::{Actor, AuditRecord};
use crate::clock::{SystemClock, rfc3339};
use crate::config::{self, Config, HostKeyPolicy, TargetKind, format_duration};
use crate::keys;
use crate::server::{Server, open_store};
use crate::store::RequestFilter;
use crate::store::search::SearchIndex;
use crate::text::visible;
use crate::views::{audit_json, grant_json, request_json};
use time::OffsetDateTime;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A privileged-access-management bastion"
)]
pub struct Cli {
    /// The config file [default: config/portcullis.toml]
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print one JSON object instead of a table
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bastion
    Serve {
        #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
        log_format: LogFormat,
    },
    /// Validate the config and print who may request and approve each target
    CheckConfig {
        /// Do not check that secret files are readable and secret env vars are set
        #[arg(long)]
        skip_secrets: bool,
    },
    /// List access requests, newest first
    Requests {
        /// Only requests still waiting for a decision
        #[arg(long)]
        pending: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List grants, newest first
    Grants {
        /// Only grants active now
        #[arg(long)]
        active: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Recorded sessions, newest first, with their grant's reason and approvers (issue #19)
    Sessions(crate::commands::SessionArgs),
    /// Play a recorded session with its timing (in a terminal: space pauses, arrows seek 5 s,
    /// q quits), or print it when the output is not a terminal (issue #19)
    Replay(crate::commands::ReplayArgs),
    /// A session as evidence: a standalone .cast, its JSON timeline, or plain text (issue #19)
    Export(crate::commands::ExportArgs),
    /// End a live session within a second, with the reason on its user's screen (issue #19)
    Kill(crate::commands::KillArgs),
    /// Reports for auditors (issue #19)
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Who can reach production right now (issue #19)
    Access {
        #[command(subcommand)]
        command: crate::commands::AccessCommand,
    },
    /// End a grant at once
    Revoke {
        grant: String,
        #[arg(long)]
        reason: String,
    },
    /// Lock a user everywhere: refused at every login and decision, their grants revoked (which
    /// ends their live sessions)
    Lock {
        user: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift every lock of a user (an operator's, and those after failed logins)
    Unlock { user: String },
    /// Read and verify the audit log
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the public key the bastion uses for targets without a credential
    ClientKey,
    /// Print the fingerprint of the bastion's SSH host key
    HostKey,
    /// Print the CA certificate (PEM) that PostgreSQL clients trust (sslrootcert)
    TlsCa,
    /// Print the version
    Version,
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// The quarterly access review: per user and target, per approver, and grants standing at
    /// the end (CSV is one table with a `section` column)
    Access {
        /// First day (2026-07-01) or time of the period
        #[arg(long)]
        from: String,
        /// Last day (inclusive), or the time the period ends
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "csv")]
        format: crate::review::report::ReportFormat,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// The last events, oldest first
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        count: u32,
    },
    /// Walk the hash chain, then every query log and recording it anchors, and name the first
    /// bad sequence number, line or byte range; with --sink, check that a postgres sink holds
    /// the same events with the same hashes
    Verify {
        #[arg(long)]
        sink: Option<String>,
    },
    /// Each audit sink's cursor, lag and last error
    Sinks,
    /// Print the DDL of a postgres sink's tables (to create them with another role)
    SinkSchema,
    /// Run the retention job now: remove local events and recordings older than
    /// [audit] retention_days that every sink holds and that are archived
    Retention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human on a terminal, JSON otherwise
    Auto,
    Human,
    Json,
}

/// What a command reports besides its output: success, or a refusal already printed.
enum Outcome {
    Success,
    Refused,
}

/// Parses arguments, runs the command and turns the result into an exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match dispatch(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Refused) => ExitCode::from(1),
        Err(error) => {
            if json {
                println!("{}", json!({ "error": format!("{error:#}") }));
            }
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let output = Output { json: cli.json };
    match cli.command {
        Command::Version => {
            output.print(
                json!({ "version": env!("CARGO_PKG_VERSION") }),
                format!("portcullis {}", env!("CARGO_PKG_VERSION")),
            );
            Ok(Outcome::Success)
        }
        Command::CheckConfig { skip_secrets } => check_config(&config_path, skip_secrets, output),
        Command::Serve { log_format } => {
            init_tracing(log_format);
            let config = load(&config_path)?;
            serve(config)?;
            Ok(Outcome::Success)
        }
        command => {
            let config = load(&config_path)?;
            operator_command(command, config, output)
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::start(config, Arc::new(SystemClock)).await?;
        server.run_until_signal().await
    })
}

fn operator_command(command: Command, config: Config, output: Output) -> anyhow::Result<Outcome> {
    let state_dir = config.server.state_dir.clone();
    match command {
        Command::ClientKey | Command::HostKey => {
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("cannot create {}", state_dir.display()))?;
            let (file, comment) = match command {
                Command::ClientKey => (keys::CLIENT_KEY_FILE, "portcullis"),
                _ => (keys::HOST_KEY_FILE, "portcullis host key"),
            };
            let key = keys::load_or_create(&state_dir.join(file), comment)?;
            let public = keys::public_line(&key);
            let fingerprint = keys::fingerprint(&key);
            let text = match command {
                Command::ClientKey => public.clone(),
                _ => format!("{fingerprint}\n{public}"),
            };
            output.print(
                json!({ "public_key": public, "fingerprint": fingerprint }),
                text,
            );
            return Ok(Outcome::Success);
        }
        Command::TlsCa => {
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("cannot create {}", state_dir.display()))?;
            let pem = crate::postgres::tls::ca_pem(&config)?;
            output.print(json!({ "ca_pem": pem }), pem.trim_end().to_string());
            return Ok(Outcome::Success);
        }
        _ => {}
    }
    let store = open_store(&config)?;
    let mut access = Access::new(Arc::new(config), store, Arc::new(SystemClock));
    // The running server fills the index; the CLI only searches what is there.
    if let Some(index) = SearchIndex::open_existing(&state_dir.join(crate::server::INDEX_FILE))
        .context("cannot open the search index")?
    {
        access = access.with_search_index(index);
    }
    match command {
        Command::Requests { pending, limit } => {
            let requests = access.requests(RequestFilter {
                pending_only: pending,
                limit: Some(limit),
            })?;
            output.print(
                json!({ "requests": requests.iter().map(request_json).collect::<Vec<_>>() }),
                requests_table(&requests),
            );
        }
        Command::Grants { active, limit } => {
            let grants = access.grants(active, Some(limit))?;
            output.print(
                json!({ "grants": grants.iter().map(grant_json).collect::<Vec<_>>() }),
                grants_table(&grants),
            );
        }
        Command::Access {
            command: crate::commands::AccessCommand::Now,
        } => {
            let viewer = crate::access::Viewer::Operator(operator_name());
            let (value, text) = crate::commands::access_now(&access, &viewer)?;
            output.print(value, text);
        }
        Command::Sessions(args) => {
            let viewer = crate::access::Viewer::Operator(operator_name());
            let (value, text) = crate::commands::sessions(&access, &viewer, &args)?;
            output.print(value, text);
        }
        Command::Replay(args) => {
            use std::io::IsTerminal;
            let viewer = crate::access::Viewer::Operator(operator_name());
            let terminal =
                !output.json && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
            match crate::commands::replay(&access, &viewer, &args, terminal) {
                Ok(crate::commands::Replay::Text(text)) => {
                    if output.json {
                        output.print(json!({ "output": text }), String::new());
                    } else {
                        use std::io::Write;
                        let mut stdout = std::io::stdout().lock();
                        stdout.write_all(text.as_bytes())?;
                        stdout.flush()?;
                    }
                }
                Ok(crate::commands::Replay::Terminal {
                    player,
                    start,
                    slot: _slot,
                }) => {
                    play_in_terminal(player, start)?;
                }
                Err(crate::access::AccessError::Store(error)) => return Err(error.into()),
                Err(refusal) => {
                    output.refuse(&refusal.to_string());
                    return Ok(Outcome::Refused);
                }
            }
        }
        Command::Export(args) => {
            let viewer = crate::access::Viewer::Operator(operator_name());
            match crate::commands::export(&access, &viewer, &args) {
                Ok((value, text)) => output.print(value, text),
                Err(crate::access::AccessError::Store(error)) => return Err(error.into()),
                Err(refusal) => {
                    output.refuse(&refusal.to_string());
                    return Ok(Outcome::Refused);
                }
            }
        }
        Command::Report {
            command: ReportCommand::Access { from, to, format },
        } => {
            use crate::review::report::{self, ReportFormat};
            let (from, to) = report_period(&from, &to)?;
            let viewer = crate::access::Viewer::Operator(operator_name());
            let (data, commands) = access.access_report(&viewer, from, to)?;
            let rows = report::rows(&data, &commands);
            let format = if output.json {
                ReportFormat::Json
            } else {
                format
            };
            match format {
                ReportFormat::Csv => print!("{}", report::csv(&rows)),
                ReportFormat::Md => print!("{}", report::markdown(&rows, from, to)),
                ReportFormat::Json => println!("{}", report::json(&rows, from, to)),
            }
        }
        Command::Kill(args) => {
            let viewer = crate::access::Viewer::Operator(operator_name());
            match crate::commands::kill(&access, &viewer, &args) {
                Ok((value, text)) => output.print(value, text),
                Err(crate::access::AccessError::Store(error)) => return Err(error.into()),
                Err(refusal) => {
                    output.refuse(&refusal.to_string());
                    return Ok(Outcome::Refused);
                }
            }
        }
        Command::Revoke { grant, reason } => {
            let actor = Actor::Operator(operator_name());
            match access.revoke(&actor, &grant, &reason) {
                Ok(grant) => output.print(
                    grant_json(&grant),
                    format!("revoked {} ({} on {})", grant.id, grant.user, grant.target),
                ),
                Err(crate::access::AccessError::Store(error)) => return Err(error.into()),
                Err(refusal) => {
                    output.refuse(&refusal.to_string());
                    return Ok(Outcome::Refused);
                }
            }
        }
        Command::Lock { user, reason } => {
            let actor = Actor::Operator(operator_name());
            match access.lock_user(&actor, &user, &reason) {
                Ok(revoked) => output.print(
                    json!({ "user": user, "locked": true, "revoked_grants": revoked }),
                    format!(
                        "locked {user}; revoked grants: {}",
                        if revoked.is_empty() {
                            "none".to_string()
                        } else {
                            revoked.join(", ")
                        }
                    ),
                ),
                Err(crate::access::AccessError::Store(error)) => return Err(error.into()),
                Err(refusal) => {
                    output.refuse(&refusal.to_string());
                    return Ok(Outcome::Refused);
                }
            }
        }
        Command::Unlock { user } => {
            let actor = Actor::Operator(operator_name());
            match access.unlock_user(&actor, &user) {
                Ok(()) => output.print(
                    json!({ "user": user, "locked": false }),
                    format!("unlocked {user}"),
                ),
                Err(crate::access::AccessError::Store(error)) => return Err(error.into()),
                Err(refusal) => {
                    output.refuse(&refusal.to_string());
                    return Ok(Outcome::Refused);
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Tail { count },
        } => {
            let records = access.store().read(|tx| tx.audit_tail(count))?;
            output.print(
                json!({ "events": records.iter().map(audit_json).collect::<Vec<_>>() }),
                audit_table(&records),
            );
        }
        Command::Audit {
            command: AuditCommand::Verify { sink: Some(name) },
        } => {
            let Some(sink) = access
                .config()
                .audit
                .sinks
                .iter()
                .find(|sink| sink.name == name)
            else {
                bail!("no audit sink named {name}");
            };
            let crate::config::SinkKind::Postgres { url, ca_file } = &sink.kind else {
                bail!("audit sink {name} is not a postgres sink; only those can be read back");
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let checked = runtime.block_on(crate::sinks::verify_postgres(
                &access,
                &name,
                url,
                ca_file.as_deref(),
            ))?;
            match checked {
                Ok(count) => output.print(
                    json!({ "ok": true, "sink": name, "verified": count }),
                    format!("ok: sink {name} holds the same {count} events with the same hashes"),
                ),
                Err(difference) => {
                    if output.json {
                        println!(
                            "{}",
                            json!({ "ok": false, "sink": name, "error": difference })
                        );
                    }
                    eprintln!("sink {name}: {difference}");
                    return Ok(Outcome::Refused);
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Retention,
        } => {
            // Retention removes index entries too: the index opened for writing, when it exists
            // (the CLI otherwise only reads it).
            let index_path = state_dir.join(crate::server::INDEX_FILE);
            let writable_index = match index_path.exists() {
                true => {
                    Some(SearchIndex::open(&index_path).context("cannot open the search index")?)
                }
                false => None,
            };
            let report = crate::audit::retention::run(
                access.store(),
                &access.config().audit,
                &access.config().server.recordings_dir,
                access.now(),
                Actor::Operator(operator_name()),
                writable_index.as_ref(),
            )?;
            let held = if report.held_by.is_empty() {
                String::new()
            } else {
                format!(
                    "; held back by: {}",
                    report
                        .held_by
                        .iter()
                        .map(|name| crate::text::visible(name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            output.print(
                json!({
                    "cutoff": rfc3339(report.cutoff),
                    "removed_events": report.removed_events,
                    "removed_recordings": report.removed_recordings,
                    "held_by": report.held_by,
                    "leftover_files": report.leftover_files,
                    "removed_index_lines": report.removed_index_lines,
                }),
                format!(
                    "removed {} events and {} recordings from before {}{held}",
                    report.removed_events,
                    report.removed_recordings,
                    rfc3339(report.cutoff)
                ),
            );
        }
        Command::Audit {
            command: AuditCommand::SinkSchema,
        } => {
            println!("{}", crate::sinks::postgres::SCHEMA.trim_end());
        }
        Command::Audit {
            command: AuditCommand::Verify { sink: None },
        } => {
            // Issue #18: a chain that retention shortened starts from its anchor.
            let (first, latest_run) = access.store().read(|tx| {
                Ok((
                    tx.audit_first()?.map(|(seq, _)| seq),
                    tx.latest_audit_of(crate::audit::types::RETENTION_RAN)?,
                ))
            })?;
            let mut verifier = match crate::audit::retention::verifier(first, latest_run.as_ref()) {
                Ok(verifier) => verifier,
                Err(broken) => {
                    if output.json {
                        println!("{}", json!({ "ok": false, "error": broken.to_string() }));
                    }
                    eprintln!("{broken}");
                    return Ok(Outcome::Refused);
                }
            };
            let mut anchors = crate::audit::verify::Anchors::default();
            let mut last_anchor = 0i64;
            let result = access.store().read(|tx| {
                tx.audit_scan(|record| -> Result<(), crate::audit::ChainError> {
                    verifier.check(&record)?;
                    anchors.collect(&record);
                    if record.event_type == crate::audit::types::RETENTION_RAN
                        && let Some((seq, after, _)) = crate::audit::retention::anchor_of(&record)
                    {
                        if after < last_anchor {
                            return Err(crate::audit::ChainError::AnchorBack {
                                seq,
                                after,
                                earlier: last_anchor,
                            });
                        }
                        last_anchor = after;
                    }
                    Ok(())
                })
            })?;
            if let Err(broken) = result {
                if output.json {
                    println!(
                        "{}",
                        json!({ "ok": false, "verified": verifier.verified(),
                                "first_bad_seq": broken.seq(), "error": broken.to_string() })
                    );
                }
                eprintln!("{broken}");
                return Ok(Outcome::Refused);
            }
            // Records removed from the end show against what the sinks were given (issue #18
            // review): the chain must reach every sink's cursor.
            let head = access
                .store()
                .read(|tx| tx.audit_head())?
                .map_or(0, |(seq, _)| seq);
            let delivered = access.store().read(|tx| tx.max_sink_cursor())?;
            if let Some((sink, cursor)) = delivered.filter(|(_, cursor)| *cursor > head) {
                let why = format!(
                    "audit chain ends at seq {head}, but sink {} was given records up to seq \
                     {cursor}: records were removed from the end",
                    crate::text::visible(&sink)
                );
                if output.json {
                    println!("{}", json!({ "ok": false, "error": why }));
                }
                eprintln!("{why}");
                return Ok(Outcome::Refused);
            }
            // Issue #18: the query logs and recordings the chain anchors.
            let files = access.store().read(|tx| {
                let mut files = Vec::new();
                for session in anchors.sessions() {
                    files.extend(tx.recordings(&session)?.into_iter().map(|row| {
                        crate::audit::verify::RecordedFile {
                            query_log: row.kind == crate::recording::QUERY_LOG_KIND,
                            session_id: row.session_id,
                            channel: row.channel,
                            path: row.path.into(),
                        }
                    }));
                }
                Ok(files)
            })?;
            match anchors.verify(&files) {
                Ok(checked) => output.print(
                    json!({ "ok": true, "verified": verifier.verified(),
                            "query_logs": checked.query_logs, "lines": checked.lines,
                            "recordings": checked.recordings }),
                    format!(
                        "ok: {} events verified; {} query logs ({} lines) and {} recordings \
                         match their checkpoints",
                        verifier.verified(),
                        checked.query_logs,
                        checked.lines,
                        checked.recordings
                    ),
                ),
                Err(broken) => {
                    if output.json {
                        println!(
                            "{}",
                            json!({ "ok": false, "verified": verifier.verified(),
                                    "error": broken.to_string() })
                        );
                    }
                    eprintln!("{broken}");
                    return Ok(Outcome::Refused);
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Sinks,
        } => {
            let now = access.now();
            let rows = access.store().read(|tx| {
                let mut rows = Vec::new();
                for sink in &access.config().audit.sinks {
                    let lag = tx.sink_lag(&sink.name)?;
                    rows.push((sink.clone(), lag.cursor, lag.events, lag.oldest));
                }
                Ok(rows)
            })?;
            let json_rows: Vec<serde_json::Value> = rows
                .iter()
                .map(|(sink, cursor, lag, oldest)| {
                    json!({
                        "name": sink.name,
                        "kind": sink.kind.as_str(),
                        "cursor": cursor.seq,
                        "lag_events": lag,
                        "oldest_undelivered": oldest.map(rfc3339),
                        "lag_seconds": oldest.map(|oldest| (now - oldest).whole_seconds().max(0)),
                        "delivered_at": cursor.delivered_at.map(rfc3339),
                        "last_error": cursor.last_error,
                        "error_at": cursor.error_at.map(rfc3339),
                    })
                })
                .collect();
            let mut table =
                String::from("SINK\tKIND\tCURSOR\tLAG\tOLDEST UNDELIVERED\tLAST ERROR\n");
            for (sink, cursor, lag, oldest) in &rows {
                table.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\n",
                    sink.name,
                    sink.kind.as_str(),
                    cursor.seq,
                    lag,
                    oldest.map(rfc3339).unwrap_or_else(|| "-".to_string()),
                    cursor
                        .last_error
                        .as_deref()
                        .map(crate::text::visible)
                        .unwrap_or_else(|| "-".to_string()),
                ));
            }
            if rows.is_empty() {
                table = "no audit sinks configured ([[audit.sinks]] in the config)\n".to_string();
            }
            output.print(json!({ "sinks": json_rows }), table.trim_end().to_string());
        }
        _ => bail!("unreachable command"),
    }
    Ok(Outcome::Success)
}

/// Who runs the host CLI, for the audit log: `sudo` keeps the invoking user in `SUDO_USER`.
fn operator_name() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

fn check_config(
    path: &std::path::Path,
    skip_secrets: bool,
    output: Output,
) -> anyhow::Result<Outcome> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            output.refuse(&error.to_string());
            return Ok(Outcome::Refused);
        }
    };
    let mut problems = Vec::new();
    if !skip_secrets {
        for (key, path) in config.named_files() {
            if let Err(error) = std::fs::File::open(path) {
                problems.push(format!("{key}: cannot read {}: {error}", path.display()));
            }
        }
        for (key, source) in config.secret_sources() {
            if let Err(error) = source.read() {
                problems.push(format!("{key}: {error}"));
            }
        }
    }
    if !problems.is_empty() {
        let message = format!(
            "{}: {} problem(s):\n  {}",
            config.path.display(),
            problems.len(),
            problems.join("\n  ")
        );
        output.refuse(&message);
        return Ok(Outcome::Refused);
    }
    let warnings = config_warnings(&config);
    let summary = ConfigSummary::new(&config);
    let mut value = summary.json();
    value["warnings"] = json!(warnings);
    let mut text = summary.text();
    for warning in &warnings {
        text.push_str(&format!("\nwarning: {warning}"));
    }
    output.print(value, text);
    Ok(Outcome::Success)
}

/// Valid but probably not what the operator wants.
fn config_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for (index, target) in config.targets.iter().enumerate() {
        if let TargetKind::Ssh(ssh) = &target.kind
            && matches!(ssh.host_key, HostKeyPolicy::Unpinned)
        {
            warnings.push(format!(
                "targets[{index}] ({}): no host_key or known_hosts_file; connections will be \
                 refused until one is set (or host_key = \"accept-first\")",
                target.name
            ));
        }
        let requesters = config
            .users
            .iter()
            .filter(|user| crate::access::policy::may_request(user, target))
            .count();
        if requesters == 0 {
            warnings.push(format!(
                "targets[{index}] ({}): no user holds a role in requestable_by",
                target.name
            ));
        }
    }
    if config.slack.is_some() {
        for (index, user) in config.users.iter().enumerate() {
            let approves = config
                .targets
                .iter()
                .any(|target| crate::access::policy::is_approver(user, target));
            if approves && user.slack_user_id.is_none() {
                warnings.push(format!(
                    "users[{index}] ({}): approves access but has no slack_user_id",
                    user.name
                ));
            }
        }
    }
    warnings
}

/// What `check-config` prints: who may do what.
struct ConfigSummary<'a> {
    config: &'a Config,
}

impl<'a> ConfigSummary<'a> {
    fn new(config: &'a Config) -> Self {
        ConfigSummary { config }
    }

    fn names_with(
        &self,
        roles: &std::collections::BTreeSet<String>,
        except: &[&str],
    ) -> Vec<String> {
        self.config
            .users
            .iter()
            .filter(|user| !user.roles.is_disjoint(roles) && !except.contains(&user.name.as_str()))
            .map(|user| user.name.clone())
            .collect()
    }

    fn json(&self) -> Value {
        let config = self.config;
        json!({
            "ok": true,
            "config": config.path.display().to_string(),
            "state_dir": config.server.state_dir.display().to_string(),
            "recordings_dir": config.server.recordings_dir.display().to_string(),
            "roles": config.roles,
            "users": config.users.iter().map(|user| json!({
                "name": user.name,
                "roles": user.roles,
                "ssh_keys": user.ssh_keys.len(),
                "slack_user_id": user.slack_user_id,
                "ip_allow": user.ip_allow.as_ref()
                    .map(|networks| networks.iter().map(ToString::to_string).collect::<Vec<_>>()),
            })).collect::<Vec<_>>(),
            "targets": config.targets.iter().map(|target| json!({
                "name": target.name,
                "kind": target.kind.name(),
                "requestable_by": self.names_with(&target.requestable_by, &[]),
                "approvers": self.names_with(&target.approvers, &[]),
                "approvals_required": target.approvals_required,
                "max_duration_seconds": config.max_duration_for(target).as_secs(),
            })).collect::<Vec<_>>(),
            "reviewers": self.names_with(&config.access.reviewer_roles, &[]),
            "slack": config.slack.is_some(),
        })
    }

    fn text(&self) -> String {
        let config = self.config;
        let mut text = format!("{}: ok\n", config.path.display());
        text.push_str(&format!(
            "state in {}, recordings in {}\n\nroles:\n",
            config.server.state_dir.display(),
            config.server.recordings_dir.display()
        ));
        for (name, description) in &config.roles {
            text.push_str(&format!("  {name}: {description}\n"));
        }
        let mut users = vec![vec![
            "USER".to_string(),
            "ROLES".to_string(),
            "SSH KEYS".to_string(),
            "SLACK".to_string(),
        ]];
        for user in &config.users {
            users.push(vec![
                user.name.clone(),
                join(&user.roles),
                user.ssh_keys.len().to_string(),
                user.slack_user_id
                    .clone()
                    .unwrap_or_else(|| "-".to_string()),
            ]);
        }
        text.push_str(&format!("\n{}\n", table(&users)));
        let mut targets = vec![vec![
            "TARGET".to_string(),
            "KIND".to_string(),
            "MAY REQUEST".to_string(),
            "MAY APPROVE".to_string(),
            "APPROVALS".to_string(),
            "MAX".to_string(),
        ]];
        for target in &config.targets {
            targets.push(vec![
                target.name.clone(),
                target.kind.name().to_string(),
                or_dash(self.names_with(&target.requestable_by, &[]).join(",")),
                or_dash(self.names_with(&target.approvers, &[]).join(",")),
                target.approvals_required.to_string(),
                format_duration(config.max_duration_for(target)),
            ]);
        }
        text.push_str(&table(&targets));
        // Who sees every recorded session (issue #19): what an access review asks first.
        text.push_str(&format!(
            "\nsee every session (roles {}): {}\n",
            join(&config.access.reviewer_roles),
            or_dash(
                self.names_with(&config.access.reviewer_roles, &[])
                    .join(",")
            )
        ));
        text
    }
}

fn join(set: &std::collections::BTreeSet<String>) -> String {
    or_dash(set.iter().cloned().collect::<Vec<_>>().join(","))
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text
    }
}

/// Prints either the JSON object or the human text, never both.
#[derive(Debug, Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn print(&self, value: Value, text: String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    /// A refusal: the message on stderr, and `{"error": ...}` on stdout for scripts.
    fn refuse(&self, message: &str) {
        if self.json {
            println!("{}", json!({ "error": message }));
        }
        eprintln!("error: {message}");
    }
}

/// `--from` and `--to` as RFC 3339 times, or dates (`--to` a date takes the whole day).
fn report_period(from: &str, to: &str) -> anyhow::Result<(OffsetDateTime, OffsetDateTime)> {
    let parse = |text: &str, end: bool| -> anyhow::Result<OffsetDateTime> {
        if let Ok(at) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        {
            return Ok(at);
        }
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let date = time::Date::parse(text, &format).map_err(|_| {
            anyhow::anyhow!(
                "{text:?} is neither a date (2026-07-01) nor a time (2026-07-01T00:00:00Z)"
            )
        })?;
        let day = date.midnight().assume_utc();
        Ok(if end { day + time::Duration::DAY } else { day })
    };
    Ok((parse(from, false)?, parse(to, true)?))
}

/// Plays a replay on this terminal: raw input for the keys (restored however the replay
/// ends), output as it comes.
fn play_in_terminal(player: crate::review::replay::Player, start: f64) -> anyhow::Result<()> {
    use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    struct Restore(rustix::termios::Termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.0);
        }
    }
    let saved = tcgetattr(std::io::stdin().as_fd()).context("cannot read the terminal's mode")?;
    let mut raw = saved.clone();
    raw.make_raw();
    // Output still ends lines as recorded; only input goes raw.
    raw.output_modes = saved.output_modes;
    let _restore = Restore(saved);
    tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &raw)
        .context("cannot set the terminal's mode")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (keys, key_queue) = tokio::sync::mpsc::channel(16);
        let (writes, mut written) = tokio::sync::mpsc::channel::<String>(16);
        // The thread stays blocked on stdin after the replay; the process ends anyway.
        std::thread::spawn(move || {
            let mut buffer = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(read) = stdin.read(&mut buffer) {
                if read == 0 || keys.blocking_send(buffer[..read].to_vec()).is_err() {
                    return;
                }
            }
        });
        let driver = tokio::spawn(crate::review::replay::drive(
            player, start, key_queue, writes,
        ));
        let mut stdout = std::io::stdout();
        while let Some(text) = written.recv().await {
            if stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                break;
            }
        }
        let _ = driver.await;
        let _ = stdout.write_all(b"\x1b[0m\r\n");
        let _ = stdout.flush();
    });
    Ok(())
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn requests_table(requests: &[AccessRequest]) -> String {
    if requests.is_empty() {
        return "no requests".to_string();
    }
    let mut rows = vec![
        [
            "ID",
            "REQUESTER",
            "TARGET",
            "STATE",
            "FOR",
            "CREATED",
            "APPROVALS",
            "GRANT",
            "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for request in requests {
        rows.push(vec![
            request.id.clone(),
            request.requester.clone(),
            request.target.clone(),
            request.state.to_string(),
            format_duration(request.duration),
            rfc3339(request.created_at),
            or_dash(
                request
                    .approvals
                    .iter()
                    .map(|approval| approval.approver.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            request.grant_id.clone().unwrap_or_else(|| "-".to_string()),
            request.reason.clone(),
        ]);
    }
    table(&rows)
}

fn grants_table(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return "no grants".to_string();
    }
    let mut rows = vec![
        [
            "ID",
            "USER",
            "TARGET",
            "STATE",
            "STARTS",
            "ENDS",
            "REQUEST",
            "REVOKED BY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for grant in grants {
        rows.push(vec![
            grant.id.clone(),
            grant.user.clone(),
            grant.target.clone(),
            grant.state.to_string(),
            rfc3339(grant.starts_at),
            rfc3339(grant.ends_at),
            grant.request_id.clone(),
            grant.revoked_by.clone().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    table(&rows)
}

fn audit_table(records: &[AuditRecord]) -> String {
    if records.is_empty() {
        return "no events".to_string();
    }
    let mut rows = vec![
        [
            "SEQ", "TIME", "TYPE", "ACTOR", "TARGET", "REQUEST", "GRANT", "DETAIL",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_string());
    for record in records {
        rows.push(vec![
            record.seq.to_string(),
            rfc3339(record.ts),
            record.event_type.clone(),
            dash(&record.actor),
            dash(&record.target),
            dash(&record.request_id),
            dash(&record.grant_id),
            record.detail.clone(),
        ]);
    }
    table(&rows)
}

/// Left-aligned columns separated by two spaces; the last column is not padded. Every cell is
/// shown through `visible`, and the columns align on what is shown.
fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(String::as_str).map(visible).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        out.push_str(line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;
    use crate::text::visible;

    #[test]
    fn issue_17_control_characters_show_as_escapes() {
        for (text, expected) in [
            ("INC-9 fix the thing", "INC-9 fix the thing"),
            ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
            ("a\nb\rc\td", "a\\nb\\rc\\td"),
            ("\0 \x7f", "\\x00 \\x7f"),
            ("\u{9b}31m \u{80}", "\\u{9b}31m \\u{80}"),
            ("caf\u{e9} \u{65e5}\u{672c}", "caf\u{e9} \u{65e5}\u{672c}"),
        ] {
            assert_eq!(visible(text), expected, "{text:?}");
        }
    }

    #[test]
    fn issue_17_table_cells_are_shown_escaped_and_aligned_on_what_is_shown() {
        let rows = [["ID", "REASON"], ["r-1\x1b[31m", "fix\nr-2  forged"]]
            .map(|row| row.map(String::from).to_vec())
            .to_vec();
        assert_eq!(
            table(&rows),
            "ID           REASON\nr-1\\x1b[31m  fix\\nr-2  forged"
        );
    }
}
