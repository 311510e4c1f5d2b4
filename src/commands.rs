//! The bastion's command interface for engineers and leaders: `targets`, `request`, `status`,
//! `cancel`, `grants`, `approve`, `deny`, `pending`, `revoke`, `help` (issue #3), `sessions`
//! and `access now` (issue #19).
//!
//! Protocol-blind: the SSH front end hands over an authenticated user name and the words of the
//! command line and writes back what this returns; a Slack slash command can do the same. Every
//! decision goes through `Access`, so the rules (no self-approval, approver role required) are the
//! same as on every other path. Exit codes: 0 success, 1 refused, 2 usage error. With `--json`,
//! stdout carries exactly one JSON object.

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::access::model::{AccessRequest, Grant, RequestState};
use crate::access::{Access, AccessError, Approved, policy};
use crate::audit::{Actor, ViewKind};
use crate::clock::rfc3339;
use crate::config::{format_duration, parse_duration};
use crate::ids::IdKind;
use crate::store::RequestFilter;
use crate::views::{grant_json, request_json};

/// What a command prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: u32,
}

impl CommandOutput {
    fn success(stdout: String) -> Self {
        CommandOutput {
            stdout,
            stderr: String::new(),
            exit_code: 0,
        }
    }

    fn refused(message: String, json: bool) -> Self {
        CommandOutput {
            stdout: if json {
                format!("{}\n", json!({ "error": message }))
            } else {
                String::new()
            },
            stderr: format!("error: {message}\n"),
            exit_code: 1,
        }
    }

    fn usage(message: String) -> Self {
        CommandOutput {
            stdout: String::new(),
            stderr: message,
            exit_code: 2,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Request, approve and inspect production access"
)]
struct CommandLine {
    /// Print one JSON object
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Targets you may request, and your access to each now
    Targets,
    /// Ask for access to a target
    Request {
        target: String,
        /// How long, like 30m, 1h, 2h30m (default: the configured default)
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why you need access (a ticket id helps the approvers); takes the remaining words
        #[arg(long, num_args = 1.., required = true)]
        reason: Vec<String>,
    },
    /// Your requests, or one request
    Status { request: Option<String> },
    /// Withdraw your pending request
    Cancel { request: String },
    /// Your grants that are active now
    Grants,
    /// Approve a request (approvers only; never your own)
    Approve { request: String },
    /// Deny a request (approvers only)
    Deny {
        request: String,
        #[arg(long, num_args = 1.., required = true)]
        reason: Vec<String>,
    },
    /// Requests waiting for your decision
    Pending,
    /// Print a database access token for your active grant (the password for psql)
    Token {
        target: String,
        /// Print a ~/.pgpass line instead of the bare token
        #[arg(long)]
        pgpass: bool,
    },
    /// End a grant at once (its holder, or an approver of its target); takes a grant or request id
    Revoke {
        grant: String,
        #[arg(long, num_args = 1..)]
        reason: Vec<String>,
    },
    /// Recorded sessions, newest first: yours; an approver's targets' too; a reviewer's all
    Sessions(SessionArgs),
    /// Play a recorded session with its timing (with a terminal: space pauses, arrows seek
    /// 5 s, q quits); a database session as a transcript
    Replay(ReplayArgs),
    /// A session as evidence: a standalone .cast, its JSON timeline, or plain text
    Export(ExportArgs),
    /// Watch a live terminal session, read-only (reviewers and approvers of its target; needs
    /// ssh -t)
    Watch { session: String },
    /// End a live session now, with the reason on its user's screen (reviewers and approvers
    /// of its target)
    Kill(KillArgs),
    /// Who can reach production right now
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
}

/// `access now` (issue #19).
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum AccessCommand {
    /// Every active grant you may see: user, target, approvers, reason, end, live sessions
    Now,
}

/// The JSON and text of `access now` for `viewer`.
pub fn access_now(
    access: &Access,
    viewer: &crate::access::Viewer,
) -> Result<(Value, String), AccessError> {
    let rows = access.access_now(viewer)?;
    let approvers = |request: &Option<AccessRequest>| -> Vec<String> {
        request
            .iter()
            .flat_map(|request| {
                request
                    .approvals
                    .iter()
                    .map(|approval| approval.approver.clone())
            })
            .collect()
    };
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let (grant, request, live) = (&row.grant, &row.request, &row.live_sessions);
            json!({
                "grant": grant_json(grant),
                "reason": request.as_ref().map(|request| request.reason.clone()),
                "approvers": approvers(request),
                "live_sessions": live,
            })
        })
        .collect();
    let text = if rows.is_empty() {
        "no active grants".to_string()
    } else {
        rows.iter()
            .map(|row| {
                let (grant, request, live) = (&row.grant, &row.request, &row.live_sessions);
                format!(
                    "{}  {}  {}  until {}  approved by {}  live sessions: {}  reason: {}",
                    grant.id,
                    crate::text::visible(&grant.user),
                    crate::text::visible(&grant.target),
                    rfc3339(grant.ends_at),
                    crate::text::visible(&approvers(request).join(", ")),
                    if live.is_empty() {
                        "none".to_string()
                    } else {
                        live.join(", ")
                    },
                    crate::text::visible(
                        request
                            .as_ref()
                            .map(|request| request.reason.as_str())
                            .unwrap_or("-")
                    ),
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok((json!({ "access": json_rows }), text))
}

/// The filters of `sessions`, on the host CLI and over SSH (issue #19).
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// Only this user's sessions
    #[arg(long)]
    pub user: Option<String>,
    /// Only sessions on this target
    #[arg(long)]
    pub target: Option<String>,
    /// Started at or after: a time (2026-12-01T00:00:00Z) or an age (7d, 12h)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Started before: a time or an age
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// At most this many (newest first)
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only sessions where this text was shown, typed as a command, sent as SQL or named as a
    /// file (case-insensitive substring, 3 characters or more), each hit with its time
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
}

/// `replay SESSION[/CHANNEL]` (issue #19).
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// A session id, or SESSION/CHANNEL for one of its recordings
    pub recording: String,
    /// Play this many times faster (0.1 to 100)
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Cut longer pauses to this (like 2s)
    #[arg(long, value_name = "DURATION")]
    pub idle_limit: Option<String>,
    /// Start here: 00:05:12, 312 (seconds) or 5m12s, as `sessions --grep` prints hits
    #[arg(long, value_name = "OFFSET")]
    pub at: Option<String>,
}

/// `export SESSION --format cast|json|txt` (issue #19).
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// A session id, or SESSION/CHANNEL for one recording (`cast` takes one)
    pub session: String,
    #[arg(long, value_enum)]
    pub format: crate::review::export::ExportFormat,
}

/// `kill SESSION --reason TEXT` (issue #19).
#[derive(Debug, Clone, clap::Args)]
pub struct KillArgs {
    pub session: String,
    /// Why; shown to the session's user
    #[arg(long, num_args = 1.., required = true)]
    pub reason: Vec<String>,
}

/// What a replay shows: text (a database session's transcript, or any replay whose output is
/// not a terminal), or a terminal recording to play with its timing.
pub enum Replay {
    Text(String),
    Terminal {
        player: crate::review::replay::Player,
        /// Where to start, on the player's clock.
        start: f64,
        /// Held while the replay plays.
        slot: crate::access::ReviewSlot,
    },
}

/// Prepares `replay` for `viewer`: audited as `recording.viewed` before anything is read.
/// `terminal` says whether the output is a terminal; without one a terminal recording is
/// printed whole, without timing.
pub fn replay(
    access: &Access,
    viewer: &crate::access::Viewer,
    args: &ReplayArgs,
    terminal: bool,
) -> Result<Replay, AccessError> {
    use crate::review::replay::{Cast, PlayOptions, Player, parse_offset, plain, transcript};
    if !(0.1..=100.0).contains(&args.speed) {
        return Err(AccessError::BadFilter(
            "--speed takes 0.1 to 100".to_string(),
        ));
    }
    let idle_limit = match args.idle_limit.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(limit)) => Some(limit),
        Some(Err(message)) => return Err(AccessError::BadDuration(message)),
    };
    let at = match args.at.as_deref() {
        None => 0.0,
        Some(text) => parse_offset(text).ok_or_else(|| {
            AccessError::BadFilter(format!(
                "--at takes an offset like 00:05:12, 312 or 5m12s, not {:?}",
                crate::text::visible(text)
            ))
        })?,
    };
    let slot = access.review_slot(viewer)?;
    let (found, row) = recording_of(access, viewer, &args.recording, ViewKind::Replay)?;
    let review =
        |error: crate::review::replay::ReviewError| AccessError::Recording(error.to_string());
    if row.kind == crate::recording::QUERY_LOG_KIND {
        return Ok(Replay::Text(
            transcript(&found.session.target, &row).map_err(review)?,
        ));
    }
    let mut cast = Cast::read(&row).map_err(review)?;
    if !terminal {
        cast.events.retain(|event| event.at >= at);
        return Ok(Replay::Text(plain(&cast)));
    }
    let options = PlayOptions {
        speed: args.speed,
        idle_limit,
        at,
    };
    let player = Player::new(cast, options);
    let start = player.clock_of(at);
    Ok(Replay::Terminal {
        player,
        start,
        slot,
    })
}

/// The session (and one recording of it) that `id` names (`SESSION` or `SESSION/CHANNEL`),
/// for `viewer`, audited as `how`. Without a channel: the first terminal recording, else the
/// query log.
fn recording_of(
    access: &Access,
    viewer: &crate::access::Viewer,
    id: &str,
    how: ViewKind,
) -> Result<(crate::store::SessionSummary, crate::store::RecordingRow), AccessError> {
    let (session, channel) = match id.split_once('/') {
        Some((session, channel)) => (session, Some(channel)),
        None => (id, None),
    };
    let (found, rows) = access.view_session(viewer, session, how)?;
    let chosen = match channel {
        Some(channel) => rows
            .iter()
            .find(|row| row.channel.to_string() == channel)
            .cloned(),
        None => rows
            .iter()
            .find(|row| row.kind == crate::recording::CAST_KIND)
            .or_else(|| rows.first())
            .cloned(),
    };
    let row = chosen.ok_or_else(|| {
        AccessError::Recording(format!(
            "session {session} has no recording {}; its recordings are listed by: sessions",
            crate::text::visible(channel.unwrap_or("at all"))
        ))
    })?;
    Ok((found, row))
}

/// `export` for `viewer`: the content (JSON for `--format json`) and the same as text.
pub fn export(
    access: &Access,
    viewer: &crate::access::Viewer,
    args: &ExportArgs,
) -> Result<(Value, String), AccessError> {
    use crate::review::export::{self, ExportFormat};
    let _slot = access.review_slot(viewer)?;
    let review =
        |error: crate::review::replay::ReviewError| AccessError::Recording(error.to_string());
    match args.format {
        ExportFormat::Cast => {
            let (_, row) = recording_of(access, viewer, &args.session, ViewKind::ExportCast)?;
            if row.kind != crate::recording::CAST_KIND {
                return Err(AccessError::Recording(format!(
                    "{}/{} is a query log, not a terminal recording: export it with --format json or txt",
                    row.session_id, row.channel
                )));
            }
            let cast = export::cast(&row).map_err(review)?;
            Ok((json!({ "cast": cast }), cast.trim_end().to_string()))
        }
        ExportFormat::Txt => {
            let session = args.session.split('/').next().unwrap_or_default();
            let (found, rows) = access.view_session(viewer, session, ViewKind::ExportText)?;
            let text = export::text(&found, &rows).map_err(review)?;
            Ok((json!({ "text": text }), text.trim_end().to_string()))
        }
        ExportFormat::Json => {
            let session = args.session.split('/').next().unwrap_or_default();
            let (found, rows) = access.view_session(viewer, session, ViewKind::ExportJson)?;
            let mut events = access.session_events(session)?;
            // The session's own user, unless a reviewer or an approver of its target, does not
            // learn who reviewed it (issue #19 review): the look at a session is not theirs.
            if let crate::access::Viewer::User(name) = viewer
                && *name == found.session.user
                && access
                    .visibility(viewer)?
                    .is_some_and(|(_, targets)| !targets.contains(&found.session.target))
            {
                events.retain(|record| {
                    !matches!(
                        record.event_type.as_str(),
                        "recording.viewed" | "session.kill_requested" | "sessions.searched"
                    )
                });
            }
            let value = export::timeline(&found, &rows, &events).map_err(review)?;
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            Ok((value, text))
        }
    }
}

/// `kill` for `viewer`.
pub fn kill(
    access: &Access,
    viewer: &crate::access::Viewer,
    args: &KillArgs,
) -> Result<(Value, String), AccessError> {
    let session = access.kill_session(viewer, &args.session, &args.reason.join(" "))?;
    Ok((
        json!({ "session": session.id, "user": session.user, "target": session.target, "kill_requested": true }),
        format!(
            "session {} ({} on {}) ends within a second",
            session.id,
            crate::text::visible(&session.user),
            crate::text::visible(&session.target)
        ),
    ))
}

/// Lists the sessions `viewer` may see that match `args`: the JSON and the text of `sessions`.
pub fn sessions(
    access: &Access,
    viewer: &crate::access::Viewer,
    args: &SessionArgs,
) -> Result<(Value, String), AccessError> {
    let now = access.now();
    let when = |text: &Option<String>| -> Result<Option<time::OffsetDateTime>, AccessError> {
        let Some(text) = text else {
            return Ok(None);
        };
        if let Ok(at) =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        {
            return Ok(Some(at));
        }
        let age = parse_duration(text).map_err(|_| {
            AccessError::BadDuration(format!(
                "{:?} is neither a time (2026-12-01T00:00:00Z) nor an age (7d, 12h)",
                crate::text::visible(text)
            ))
        })?;
        let age = time::Duration::try_from(age).ok();
        match age.and_then(|age| now.checked_sub(age)) {
            Some(at) => Ok(Some(at)),
            None => Err(AccessError::BadDuration(format!(
                "{:?} reaches back further than any session",
                crate::text::visible(text)
            ))),
        }
    };
    let filter = crate::store::SessionFilter {
        user: args.user.clone(),
        target: args.target.clone(),
        since: when(&args.since)?,
        until: when(&args.until)?,
        limit: args.limit.clamp(1, 10_000),
        visible_to: None,
        ids: None,
    };
    let found = access.find_sessions(viewer, filter, args.grep.as_deref())?;
    let text = if found.is_empty() {
        "no sessions".to_string()
    } else {
        found
            .iter()
            .map(crate::views::session_line)
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok((
        json!({ "sessions": found.iter().map(crate::views::session_json).collect::<Vec<_>>() }),
        text,
    ))
}

/// The grant an id names: a grant id as it is, a request id for the grant it produced (issue #3:
/// `revoke` takes either, over SSH and in Slack).
pub fn grant_of(access: &Access, id: &str) -> Result<String, AccessError> {
    if id.starts_with(IdKind::Request.prefix()) {
        Ok(access
            .request_by_id(id)?
            .and_then(|request| request.grant_id)
            .unwrap_or_else(|| id.to_string()))
    } else {
        Ok(id.to_string())
    }
}

/// `ssh -p 2222 alice@bastion request web-1 --for 1h --reason "..."`, with this bastion's address.
pub fn request_hint(access: &Access, user: &str, target: &str, port: u16) -> String {
    let host = access.config().server.public_host();
    format!("ssh -p {port} {user}@{host} request {target} --for 1h --reason \"...\"")
}

/// A command that streams over a terminal (issue #19).
pub enum Streaming {
    Replay(ReplayArgs),
    Watch(String),
}

/// Whether `line` is `replay` or `watch` (without `--json`): `Some` with its arguments, or the
/// usage error to print.
pub fn streaming(line: &str) -> Option<Result<Streaming, CommandOutput>> {
    let words = shell_words::split(line).ok()?;
    if !matches!(words.first().map(String::as_str), Some("replay" | "watch")) {
        return None;
    }
    let parsed = match CommandLine::try_parse_from(&words) {
        Ok(parsed) => parsed,
        Err(error) => return Some(Err(CommandOutput::usage(error.render().to_string()))),
    };
    if parsed.json {
        return None;
    }
    match parsed.command {
        Command::Replay(args) => Some(Ok(Streaming::Replay(args))),
        Command::Watch { session } => Some(Ok(Streaming::Watch(session))),
        _ => None,
    }
}

/// Parses a command line as typed after `ssh alice@bastion` and runs it as `user`.
pub fn run_line(access: &Access, user: &str, line: &str) -> CommandOutput {
    match shell_words::split(line) {
        Ok(words) => run(access, user, &words),
        Err(error) => CommandOutput::usage(format!("error: cannot parse the command: {error}\n")),
    }
}

/// Runs one command as the authenticated `user`.
pub fn run(access: &Access, user: &str, words: &[String]) -> CommandOutput {
    let line = match CommandLine::try_parse_from(words) {
        Ok(line) => line,
        Err(error) => {
            let text = error.render().to_string();
            return match error.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    CommandOutput::success(text)
                }
                _ => CommandOutput::usage(text),
            };
        }
    };
    let json = line.json;
    match execute(access, user, line.command) {
        Ok((value, text)) => CommandOutput::success(if json {
            format!("{value}\n")
        } else {
            format!("{text}\n")
        }),
        Err(AccessError::Store(error)) => {
            tracing::error!(%error, "command failed on the state database");
            CommandOutput::refused(
                "the bastion could not reach its state; nothing was changed".to_string(),
                json,
            )
        }
        Err(refusal) => CommandOutput::refused(refusal.to_string(), json),
    }
}

fn execute(access: &Access, user: &str, command: Command) -> Result<(Value, String), AccessError> {
    match command {
        Command::Targets => targets(access, user),
        Command::Request {
            target,
            duration,
            reason,
        } => {
            let duration = match duration.as_deref().map(parse_duration) {
                None => None,
                Some(Ok(duration)) => Some(duration),
                Some(Err(message)) => return Err(AccessError::BadDuration(message)),
            };
            let request = access.request(user, &target, duration, &reason.join(" "))?;
            let approvers = access
                .config()
                .target(&target)
                .map(|target| policy::eligible_approvers(access.config(), target, user))
                .unwrap_or_default()
                .into_iter()
                .map(|approver| approver.name.clone())
                .collect::<Vec<_>>();
            let mut value = request_json(&request);
            value["approvers"] = json!(approvers);
            let text = format!(
                "request {} filed: {} for {} ({})\nwaiting for approval by one of: {}\n\
                 check with: status {}",
                request.id,
                request.target,
                format_duration(request.duration),
                request.reason,
                approvers.join(", "),
                request.id
            );
            Ok((value, text))
        }
        Command::Status { request: Some(id) } => {
            let request = visible_request(access, user, &id)?;
            Ok((request_json(&request), describe_request(&request)))
        }
        Command::Status { request: None } => {
            let requests: Vec<AccessRequest> = access
                .requests(RequestFilter {
                    pending_only: false,
                    limit: Some(200),
                })?
                .into_iter()
                .filter(|request| request.requester == user)
                .take(20)
                .collect();
            let text = if requests.is_empty() {
                "no requests".to_string()
            } else {
                requests
                    .iter()
                    .map(describe_request)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok((
                json!({ "requests": requests.iter().map(request_json).collect::<Vec<_>>() }),
                text,
            ))
        }
        Command::Cancel { request } => {
            let request = access.cancel(user, &request)?;
            Ok((
                request_json(&request),
                format!("request {} cancelled", request.id),
            ))
        }
        Command::Grants => {
            let grants: Vec<Grant> = access
                .grants(true, None)?
                .into_iter()
                .filter(|grant| grant.user == user)
                .collect();
            let text = if grants.is_empty() {
                "no active grants".to_string()
            } else {
                grants
                    .iter()
                    .map(|grant| {
                        format!(
                            "{}  {}  until {}",
                            grant.id,
                            grant.target,
                            rfc3339(grant.ends_at)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok((
                json!({ "grants": grants.iter().map(grant_json).collect::<Vec<_>>() }),
                text,
            ))
        }
        Command::Approve { request } => match access.approve(user, &request)? {
            Approved::Waiting {
                request,
                approvals,
                required,
            } => Ok((
                request_json(&request),
                format!(
                    "approved {}: {approvals} of {required} approvals",
                    request.id
                ),
            )),
            Approved::Granted { request, grant } => {
                let mut value = request_json(&request);
                value["grant"] = grant_json(&grant);
                let text = format!(
                    "approved {}: {} may reach {} until {} (grant {})",
                    request.id,
                    grant.user,
                    grant.target,
                    rfc3339(grant.ends_at),
                    grant.id
                );
                Ok((value, text))
            }
        },
        Command::Deny { request, reason } => {
            let request = access.deny(user, &request, &reason.join(" "))?;
            Ok((request_json(&request), format!("denied {}", request.id)))
        }
        Command::Pending => {
            let config = access.config();
            let decidable: Vec<AccessRequest> = access
                .requests(RequestFilter {
                    pending_only: true,
                    limit: None,
                })?
                .into_iter()
                .filter(|request| {
                    request.requester != user
                        && !request
                            .approvals
                            .iter()
                            .any(|approval| approval.approver == user)
                        && config
                            .user(user)
                            .zip(config.target(&request.target))
                            .is_some_and(|(me, target)| policy::is_approver(me, target))
                })
                .collect();
            let text = if decidable.is_empty() {
                "nothing waiting for you".to_string()
            } else {
                decidable
                    .iter()
                    .map(describe_request)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok((
                json!({ "requests": decidable.iter().map(request_json).collect::<Vec<_>>() }),
                text,
            ))
        }
        Command::Token { target, pgpass } => token(access, user, &target, pgpass),
        Command::Sessions(args) => sessions(
            access,
            &crate::access::Viewer::User(user.to_string()),
            &args,
        ),
        Command::Replay(args) => {
            // Here the output is not a terminal (a pty's replay streams, `ssh/local.rs`).
            let viewer = crate::access::Viewer::User(user.to_string());
            match replay(access, &viewer, &args, false)? {
                Replay::Text(text) => Ok((json!({ "output": text }), text)),
                Replay::Terminal { .. } => Err(AccessError::Recording(
                    "a terminal replay needs a terminal: ssh -t".to_string(),
                )),
            }
        }
        Command::Export(args) => export(
            access,
            &crate::access::Viewer::User(user.to_string()),
            &args,
        ),
        Command::Watch { .. } => Err(AccessError::Recording(
            "watch needs a terminal: connect with ssh -t".to_string(),
        )),
        Command::Kill(args) => kill(
            access,
            &crate::access::Viewer::User(user.to_string()),
            &args,
        ),
        Command::Access {
            command: AccessCommand::Now,
        } => access_now(access, &crate::access::Viewer::User(user.to_string())),
        Command::Revoke { grant, reason } => {
            let grant = grant_of(access, &grant)?;
            let reason = if reason.is_empty() {
                "revoked over ssh".to_string()
            } else {
                reason.join(" ")
            };
            let grant = access.revoke(&Actor::User(user.to_string()), &grant, &reason)?;
            Ok((
                grant_json(&grant),
                format!("revoked {} ({} on {})", grant.id, grant.user, grant.target),
            ))
        }
    }
}

/// A token for the caller's active grant on a database target, alone on stdout (issue #4).
fn token(
    access: &Access,
    user: &str,
    target: &str,
    pgpass: bool,
) -> Result<(Value, String), AccessError> {
    match access.config().target(target).map(|target| &target.kind) {
        None => return Err(AccessError::UnknownTarget(target.to_string())),
        Some(crate::config::TargetKind::Postgres(_)) => {}
        Some(_) => return Err(AccessError::NotADatabase(target.to_string())),
    }
    let (token, grant) = access.issue_token(user, target)?;
    let (host, port) = &access.config().server.postgres_public_address;
    let line = [host.as_str(), &port.to_string(), target, user, &token]
        .map(pgpass_field)
        .join(":");
    let text = if pgpass { line.clone() } else { token.clone() };
    let value = json!({
        "token": token,
        "target": target,
        "grant_id": grant.id,
        "expires_at": crate::clock::rfc3339(grant.ends_at),
        "pgpass": line,
    });
    Ok((value, text))
}

/// A ~/.pgpass field: libpq reads `:` and `\` escaped with a backslash (an IPv6 host has colons).
fn pgpass_field(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

fn targets(access: &Access, user: &str) -> Result<(Value, String), AccessError> {
    let config = access.config();
    let me = config
        .user(user)
        .ok_or_else(|| AccessError::UnknownUser(user.to_string()))?;
    let mut rows = Vec::new();
    let mut text = Vec::new();
    for target in &config.targets {
        let can_request = policy::may_request(me, target);
        let can_approve = policy::is_approver(me, target);
        if !can_request && !can_approve {
            continue;
        }
        let grant = access.active_grant(user, &target.name)?;
        rows.push(json!({
            "name": target.name,
            "kind": target.kind.name(),
            "can_request": can_request,
            "can_approve": can_approve,
            "access_until": grant.as_ref().map(|grant| rfc3339(grant.ends_at)),
            "grant_id": grant.as_ref().map(|grant| grant.id.clone()),
            "max_duration_seconds": config.max_duration_for(target).as_secs(),
        }));
        let access_text = match (&grant, can_request) {
            (Some(grant), _) => format!("access until {} ({})", rfc3339(grant.ends_at), grant.id),
            (None, true) => format!(
                "no access (request up to {})",
                format_duration(config.max_duration_for(target))
            ),
            (None, false) => "you approve requests for it".to_string(),
        };
        text.push(format!(
            "{}  {}  {access_text}",
            target.name,
            target.kind.name()
        ));
    }
    let text = if text.is_empty() {
        "you may neither request nor approve any target".to_string()
    } else {
        text.join("\n")
    };
    Ok((json!({ "targets": rows }), text))
}

/// A request the user may look at: their own, or one they may decide.
fn visible_request(access: &Access, user: &str, id: &str) -> Result<AccessRequest, AccessError> {
    let request = access
        .request_by_id(id)?
        .ok_or_else(|| AccessError::UnknownRequest(id.to_string()))?;
    let config = access.config();
    let may_see = request.requester == user
        || config
            .user(user)
            .zip(config.target(&request.target))
            .is_some_and(|(me, target)| policy::is_approver(me, target));
    if may_see {
        Ok(request)
    } else {
        // The same answer as for a request that does not exist: ids are not an oracle.
        Err(AccessError::UnknownRequest(id.to_string()))
    }
}

fn describe_request(request: &AccessRequest) -> String {
    let mut text = format!(
        "{}  {} → {}  {}  for {}  ({})",
        request.id,
        request.requester,
        request.target,
        request.state,
        format_duration(request.duration),
        request.reason
    );
    if !request.approvals.is_empty() {
        let approvers: Vec<&str> = request
            .approvals
            .iter()
            .map(|approval| approval.approver.as_str())
            .collect();
        text.push_str(&format!("  approved by {}", approvers.join(", ")));
    }
    if request.state == RequestState::Approved
        && let Some(grant) = &request.grant_id
    {
        text.push_str(&format!("  grant {grant}"));
    }
    text
}
