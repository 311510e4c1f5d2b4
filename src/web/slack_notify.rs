//! Request messages in Slack (issue #5): the worker that drains the notification outbox.
//!
//! Every request change writes a row to the store's `notifications` table in the change's own
//! transaction (`Store::with_notifications`), so nothing is lost across a Slack outage or a
//! restart. This worker renders each request's *current* state as one Block Kit message, posts
//! it to the target's channel (`chat.postMessage`) the first time and updates it in place
//! (`chat.update`) after that, keeping the message's (channel, ts) in the store; only then are
//! the request's rows deleted. A failure leaves the rows and retries the request with backoff
//! (1 s doubling to 30 s, or Slack's `Retry-After` on a 429), so notifications go out within
//! 30 s of Slack answering again. Nothing here decides anything: a Slack outage never blocks a
//! request, an approval over SSH or a session.
//!
//! Every message text is Slack mrkdwn, so each piece that came from a user or the network (names,
//! reasons, targets, audit details) goes through `mrkdwn` before it is placed in one (issue #17):
//! a reason must not ping `<!channel>` or show a `<https://...|link>`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use slack_morphism::api::{
    SlackApiChatPostEphemeralRequest, SlackApiChatPostMessageRequest, SlackApiChatUpdateRequest,
    SlackApiViewsOpenRequest,
};
use slack_morphism::blocks::SlackView;
use slack_morphism::errors::SlackClientError;
use slack_morphism::hyper_tokio::{SlackClientHyperConnector, SlackClientHyperHttpsConnector};
use slack_morphism::{SlackApiToken, SlackApiTokenValue, SlackClient, SlackMessageContent};
use tokio::sync::watch;

use crate::access::Access;
use crate::access::model::{AccessRequest, Grant, GrantState, RequestState};
use crate::web::slack::{APPROVE, REVOKE};

/// How often the outbox is looked at.
const POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until `stop` turns true. Does nothing without `[slack]`.
pub async fn run(access: Access, mut stop: watch::Receiver<bool>) {
    if access.config().slack.is_none() {
        return;
    }
    match Api::connect(&access) {
        Ok(api) => drain(access, api, &mut stop).await,
        Err(why) => tracing::error!(why, "request messages are queued, not sent"),
    }
}

/// The Slack Web API as the bot: plain HTTP only where the config names an http:// API (the
/// tests' loopback Slack), HTTPS with the system's roots otherwise.
pub struct Api {
    client: Client,
    token: SlackApiToken,
}

enum Client {
    Http(SlackClient<SlackClientHyperConnector<HttpConnector>>),
    Https(SlackClient<SlackClientHyperHttpsConnector>),
}

/// Runs `$body` with `$session` opened on whichever client `$api` has.
macro_rules! with_session {
    ($api:expr, $session:ident => $body:expr) => {
        match &$api.client {
            Client::Http(client) => {
                let $session = client.open_session(&$api.token);
                $body
            }
            Client::Https(client) => {
                let $session = client.open_session(&$api.token);
                $body
            }
        }
    };
}

impl Api {
    pub fn connect(access: &Access) -> Result<Api, &'static str> {
        let slack = access
            .config()
            .slack
            .as_ref()
            .ok_or("slack is not configured")?;
        let token = slack
            .bot_token
            .read()
            .map_err(|_| "the slack bot token is unavailable")?;
        let token = SlackApiToken::new(SlackApiTokenValue::new(token.expose().clone()));
        let client = if slack.api_url.starts_with("http://") {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            Client::Http(SlackClient::new(
                SlackClientHyperConnector::with_connector(http).with_slack_api_url(&slack.api_url),
            ))
        } else {
            let connector = SlackClientHyperConnector::new()
                .map_err(|_| "cannot set up https to slack (no system roots?)")?;
            Client::Https(SlackClient::new(
                connector.with_slack_api_url(&slack.api_url),
            ))
        };
        Ok(Api { client, token })
    }

    /// `chat.postMessage`; the (channel, ts) of the new message.
    pub async fn post_message(
        &self,
        channel: &str,
        content: SlackMessageContent,
    ) -> Result<(String, String), SlackClientError> {
        let request = SlackApiChatPostMessageRequest::new(channel.to_string().into(), content);
        let response = with_session!(self, session => session.chat_post_message(&request).await)?;
        Ok((response.channel.to_string(), response.ts.to_string()))
    }

    /// `chat.update` of the message at (channel, ts).
    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), SlackClientError> {
        let request = SlackApiChatUpdateRequest::new(
            channel.to_string().into(),
            content,
            ts.to_string().into(),
        );
        with_session!(self, session => session.chat_update(&request).await).map(|_| ())
    }

    /// `views.open` of a modal for the click that carried `trigger_id`.
    pub async fn open_view(
        &self,
        trigger_id: &str,
        view: SlackView,
    ) -> Result<(), SlackClientError> {
        let request = SlackApiViewsOpenRequest::new(trigger_id.to_string().into(), view);
        with_session!(self, session => session.views_open(&request).await).map(|_| ())
    }

    /// `chat.postEphemeral`: `text` to `user` alone, in `channel`.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
    ) -> Result<(), SlackClientError> {
        let content = SlackMessageContent::new().with_text(text.to_string());
        let request = SlackApiChatPostEphemeralRequest::new(
            channel.to_string().into(),
            user.to_string().into(),
            content,
        );
        with_session!(self, session => session.chat_post_ephemeral(&request).await).map(|_| ())
    }
}

/// Per request: when it may be tried again, and the last wait.
struct Backoff {
    next: Instant,
    wait: Duration,
}

async fn drain(access: Access, api: Api, stop: &mut watch::Receiver<bool>) {
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut alerts_wait = Backoff {
        next: Instant::now(),
        wait: Duration::ZERO,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if Instant::now() >= alerts_wait.next {
            match send_alerts(&access, &api).await {
                Ok(()) => alerts_wait.wait = Duration::ZERO,
                Err(retry_after) => {
                    let wait = retry_after.unwrap_or_else(|| {
                        (alerts_wait.wait * 2).clamp(Duration::from_secs(1), MAX_BACKOFF)
                    });
                    alerts_wait = Backoff {
                        next: Instant::now() + wait,
                        wait,
                    };
                }
            }
        }
        let store = access.store().clone();
        let pending =
            tokio::task::spawn_blocking(move || store.read(|tx| tx.pending_notifications(100)))
                .await;
        let Ok(Ok(pending)) = pending else {
            tracing::error!("cannot read the notification outbox");
            continue;
        };
        for (up_to, request_id) in pending {
            if backoff
                .get(&request_id)
                .is_some_and(|wait| Instant::now() < wait.next)
            {
                continue;
            }
            match deliver(&access, &api, &request_id).await {
                Ok(()) => {
                    backoff.remove(&request_id);
                    let id = request_id.clone();
                    write(&access, move |tx| tx.clear_notifications(&id, up_to)).await;
                }
                Err(retry_after) => {
                    let previous = backoff
                        .get(&request_id)
                        .map_or(Duration::ZERO, |wait| wait.wait);
                    let wait = retry_after.unwrap_or_else(|| {
                        (previous * 2).clamp(Duration::from_secs(1), MAX_BACKOFF)
                    });
                    backoff.insert(
                        request_id,
                        Backoff {
                            next: Instant::now() + wait,
                            wait,
                        },
                    );
                }
            }
        }
    }
}

/// Posts queued security alerts to the alerts channel, oldest first, each removed once sent.
async fn send_alerts(access: &Access, api: &Api) -> Result<(), Option<Duration>> {
    let Some(channel) = access
        .config()
        .slack
        .as_ref()
        .and_then(|slack| slack.alerts_channel.clone())
    else {
        return Ok(());
    };
    let store = access.store().clone();
    let pending = tokio::task::spawn_blocking(move || store.read(|tx| tx.pending_alerts(50))).await;
    let Ok(Ok(pending)) = pending else {
        tracing::error!("cannot read the alert queue");
        return Err(None);
    };
    for (id, record) in pending {
        let text = alert_text(access, &record);
        let Ok(content) = serde_json::from_value::<SlackMessageContent>(json!({ "text": text }))
        else {
            continue;
        };
        if let Err(error) = api.post_message(&channel, content).await {
            return Err(failed("alerts", error));
        }
        write(access, move |tx| tx.clear_alert(id)).await;
    }
    Ok(())
}

/// One line for reviewers: what happened, who, where, why. Never a secret: audit details carry
/// none (tokens, passwords and session content are never audited). Every field of the record can
/// hold what a stranger typed (a user name tried at login, a target, a why-string), so each is
/// escaped (issue #17).
fn alert_text(access: &Access, record: &crate::audit::AuditRecord) -> String {
    let who = record
        .actor
        .as_deref()
        .map_or_else(|| "-".to_string(), |actor| mention(access, actor));
    let detail: Value = serde_json::from_str(&record.detail).unwrap_or(Value::Null);
    if let (Some(source), Some(failures)) = (detail["source"].as_str(), detail["failures"].as_u64())
        && record.event_type == "source.refused"
    {
        let names: Vec<String> = detail["names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(mrkdwn_line)
            .collect();
        return format!(
            ":warning: {failures} refused logins from {} in a minute, as: {} (audit #{})",
            mrkdwn_line(source),
            names.join(", "),
            record.seq
        );
    }
    if record.event_type == "sources.refused" {
        return format!(
            ":warning: {} refused logins from {} more addresses in a minute (audit #{})",
            detail["failures"], detail["addresses"], record.seq
        );
    }
    let why = detail["why"]
        .as_str()
        .or_else(|| detail["error"].as_str())
        .or_else(|| detail["reason"].as_str())
        .unwrap_or("");
    format!(
        ":warning: {} by {who}{}{}{} (audit #{})",
        mrkdwn(&record.event_type),
        record
            .target
            .as_deref()
            .map_or_else(String::new, |target| format!(" on {}", mrkdwn_line(target))),
        record
            .request_id
            .as_deref()
            .map_or_else(String::new, |request| format!(
                " for {}",
                mrkdwn_line(request)
            )),
        if why.is_empty() {
            String::new()
        } else {
            format!(": {}", mrkdwn_line(why))
        },
        record.seq
    )
}

/// Posts or updates the request's message. `Err` carries Slack's `Retry-After`, if it sent one.
async fn deliver(access: &Access, api: &Api, request_id: &str) -> Result<(), Option<Duration>> {
    let lookup = {
        let access = access.clone();
        let id = request_id.to_string();
        tokio::task::spawn_blocking(move || {
            let request = access.request_by_id(&id).ok().flatten()?;
            let grant = request
                .grant_id
                .as_deref()
                .and_then(|grant| access.grant_by_id(grant).ok().flatten());
            let posted = access
                .store()
                .read(|tx| tx.slack_message(&id))
                .ok()
                .flatten();
            Some((request, grant, posted))
        })
        .await
    };
    let Ok(Some((request, grant, posted))) = lookup else {
        // A request that is gone has nothing to show.
        return Ok(());
    };
    let rendered = message(access, &request, grant.as_ref());
    let Ok(content) = serde_json::from_value::<SlackMessageContent>(rendered) else {
        tracing::error!(request = %request_id, "cannot build the slack message");
        return Ok(());
    };
    let channel = channel_of(access, &request.target);
    let result = match &posted {
        Some(row) => api
            .update(&row.channel, &row.ts, content)
            .await
            .map(|()| None),
        None => api.post_message(&channel, content).await.map(Some),
    };
    match result {
        Ok(Some((channel, ts))) => {
            let saved = write(access, move |tx| {
                tx.set_slack_message(&request.id, &channel, &ts)
            })
            .await;
            // Not stored: the next delivery would post a second message, so retry instead.
            if !saved {
                return Err(None);
            }
        }
        Ok(None) => {}
        Err(error) => return Err(failed(request_id, error)),
    }
    tell_requester(
        access,
        api,
        request_id,
        posted.and_then(|row| row.requester_told),
    )
    .await
}

/// Sends the requester a direct message once their request is decided: the decision and, when
/// approved, the exact line to connect with.
async fn tell_requester(
    access: &Access,
    api: &Api,
    request_id: &str,
    told: Option<String>,
) -> Result<(), Option<Duration>> {
    let lookup = {
        let access = access.clone();
        let id = request_id.to_string();
        tokio::task::spawn_blocking(move || access.request_by_id(&id)).await
    };
    let Ok(Ok(Some(request))) = lookup else {
        return Ok(());
    };
    let state = request.state;
    if !matches!(state, RequestState::Approved | RequestState::Denied)
        || told.as_deref() == Some(state.as_str())
    {
        return Ok(());
    }
    let Some(slack_id) = access
        .config()
        .user(&request.requester)
        .and_then(|user| user.slack_user_id.clone())
    else {
        return Ok(());
    };
    let text = decision_text(access, &request);
    let Ok(content) = serde_json::from_value::<SlackMessageContent>(json!({ "text": text })) else {
        return Ok(());
    };
    // Slack takes a user id as the channel of a direct message.
    let sent = api.post_message(&slack_id, content).await;
    match sent {
        Ok(_) => {
            let id = request_id.to_string();
            write(access, move |tx| tx.set_requester_told(&id, state.as_str())).await;
            Ok(())
        }
        Err(error) => Err(failed(request_id, error)),
    }
}

/// What the requester is told: the decision, and how to connect once approved. The connect line
/// is escaped whole: it holds no markup of ours, and its `>>` must show as typed.
fn decision_text(access: &Access, request: &AccessRequest) -> String {
    let server = &access.config().server;
    let host = server.public_host();
    let by = mrkdwn(request.decided_by.as_deref().unwrap_or("an approver"));
    let target = &request.target;
    let user = &request.requester;
    match request.state {
        RequestState::Approved => {
            let ssh_port = server.ssh_listen.port();
            let database =
                access.config().targets.iter().any(|candidate| {
                    &candidate.name == target && candidate.kind.name() == "postgres"
                });
            let connect = if database {
                format!(
                    "ssh -p {ssh_port} {user}@{host} token {target} --pgpass >> ~/.pgpass\npsql \"host={host} port={} user={user} dbname={target} sslmode=verify-full sslrootcert=bastion-ca.pem\"",
                    server.postgres_listen.port()
                )
            } else {
                format!("ssh -p {ssh_port} {user}+{target}@{host}")
            };
            format!(
                "{} approved by {by}: connect with\n```{}```",
                mrkdwn(&request.id),
                mrkdwn(&connect)
            )
        }
        _ => format!(
            "{} denied by {by}: {}",
            mrkdwn(&request.id),
            mrkdwn(request.decision_reason.as_deref().unwrap_or(""))
        ),
    }
}

/// A failed call's retry delay: Slack's `Retry-After` on a 429, the backoff otherwise.
fn failed(request_id: &str, error: SlackClientError) -> Option<Duration> {
    match error {
        SlackClientError::RateLimitError(limited) => {
            tracing::warn!(request = %request_id, "slack rate limit");
            Some(limited.retry_after.unwrap_or(Duration::from_secs(1)))
        }
        error => {
            tracing::warn!(request = %request_id, %error, "slack delivery failed; will retry");
            None
        }
    }
}

/// Runs a store write on a blocking thread; whether it committed.
async fn write(
    access: &Access,
    work: impl FnOnce(&crate::store::Tx<'_>) -> Result<(), crate::store::StoreError> + Send + 'static,
) -> bool {
    let store = access.store().clone();
    let written = tokio::task::spawn_blocking(move || store.write(work)).await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::error!("cannot store slack delivery state");
        return false;
    }
    true
}

/// The target's own channel, or the default one.
fn channel_of(access: &Access, target: &str) -> String {
    let config = access.config();
    config
        .targets
        .iter()
        .find(|candidate| candidate.name == target)
        .and_then(|target| target.slack_channel.clone())
        .or_else(|| config.slack.as_ref().map(|slack| slack.channel.clone()))
        .unwrap_or_default()
}

/// `<@U…>` for a user with a Slack id, the name otherwise, escaped: a name that is no configured
/// user's (one tried at login) is whatever the stranger typed. Ready for mrkdwn as it is.
fn mention(access: &Access, user: &str) -> String {
    access
        .config()
        .user(user)
        .and_then(|user| user.slack_user_id.as_ref())
        .map_or_else(|| mrkdwn_line(user), |id| format!("<@{id}>"))
}

/// `mrkdwn` for a one-line field (a name tried at login, a reason): control characters are
/// shown as escapes too, so a newline in a name cannot forge a line of the alert.
pub fn mrkdwn_line(text: &str) -> String {
    mrkdwn(&crate::text::visible(text))
}

/// `text` made inert for Slack mrkdwn, by Slack's rule: `&`, `<` and `>` become `&amp;`, `&lt;`
/// and `&gt;`, so it can neither ping (`<!channel>`, `<!here>`) nor show a link
/// (`<https://...|click>`) (issue #17). Only for pieces from users or the network, never for the
/// mentions the bastion builds itself, and never for `plain_text` fields, which Slack shows
/// literally.
pub fn mrkdwn(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The request's message as Block Kit JSON: who, what, why, progress, and the buttons its
/// state allows (Approve/Deny while pending, Revoke while the grant is live).
pub fn message(access: &Access, request: &AccessRequest, grant: Option<&Grant>) -> Value {
    let config = access.config();
    let target = config
        .targets
        .iter()
        .find(|target| target.name == request.target);
    let required = target.map_or(1, |target| target.approvals_required);
    let approvers: Vec<String> = target
        .map(|target| {
            crate::access::policy::eligible_approvers(config, target, &request.requester)
                .iter()
                .map(|user| mention(access, &user.name))
                .collect()
        })
        .unwrap_or_default();
    let progress = format!("{} of {required} approvals", request.approvals.len());
    let approved_by: Vec<String> = request
        .approvals
        .iter()
        .map(|approval| {
            format!(
                "{} at {}",
                mention(access, &approval.approver),
                crate::clock::rfc3339(approval.at)
            )
        })
        .collect();
    let outcome = match (request.state, grant) {
        (RequestState::Pending, _) => format!("pending: {progress}"),
        (RequestState::Approved, Some(grant)) => match grant.state {
            GrantState::Active => format!(
                "approved: access until {}",
                crate::clock::rfc3339(grant.ends_at)
            ),
            GrantState::Expired => "approved; access expired".to_string(),
            GrantState::Revoked => format!(
                "approved; revoked by {}",
                grant
                    .revoked_by
                    .as_deref()
                    .map_or_else(|| "?".to_string(), |by| mention(access, by))
            ),
        },
        (RequestState::Approved, None) => "approved".to_string(),
        (RequestState::Denied, _) => format!(
            "denied by {}: {}",
            request
                .decided_by
                .as_deref()
                .map_or_else(|| "?".to_string(), |by| mention(access, by)),
            mrkdwn(request.decision_reason.as_deref().unwrap_or(""))
        ),
        (state, _) => state.as_str().to_string(),
    };
    let text = format!(
        "{} requests {} ({}) for {}: {}",
        mention(access, &request.requester),
        mrkdwn(&request.target),
        target.map_or("", |target| target.kind.name()),
        crate::config::format_duration(request.duration),
        mrkdwn(&request.reason)
    );
    let mut blocks = vec![
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } }),
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!(
            "*{}* · {progress} · approvers: {}\n{}{}",
            mrkdwn(&request.id),
            approvers.join(" "),
            outcome,
            if approved_by.is_empty() { String::new() } else { format!("\napproved by {}", approved_by.join(", ")) }
        ) } }),
    ];
    let button = |label: &str, action: &str, style: Option<&str>| {
        let mut button = json!({
            "type": "button",
            "action_id": action,
            "text": { "type": "plain_text", "text": label },
            "value": request.id,
        });
        if let Some(style) = style {
            button["style"] = json!(style);
        }
        button
    };
    let live = grant.is_some_and(|grant| grant.state == GrantState::Active);
    if request.state == RequestState::Pending {
        blocks.push(
            json!({ "type": "actions", "block_id": "decide", "elements": [
            button("Approve", APPROVE, Some("primary")),
            button("Deny", "deny", Some("danger")),
        ] }),
        );
    } else if live {
        blocks.push(
            json!({ "type": "actions", "block_id": "grant", "elements": [
            button("Revoke", REVOKE, Some("danger")),
        ] }),
        );
    }
    json!({ "text": format!("{text} ({outcome})"), "blocks": blocks })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use time::macros::datetime;

    use super::*;
    use crate::audit::AuditRecord;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::store::Store;

    /// What a stranger types to ping everyone and show a link of theirs (issue #17).
    const EVIL: &str = "<!channel> & <https://evil|click>";
    const EVIL_ESCAPED: &str = "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;";

    const CONFIG: &str = r#"
[server]
state_dir = "state"
recordings_dir = "recordings"

[roles]
engineer = "requests"
leader = "approves"

[[users]]
name = "alice"
roles = ["engineer"]
slack_user_id = "UALICE"

[[users]]
name = "bob"
roles = ["leader"]
slack_user_id = "UBOB"

[[targets]]
name = "web-1"
kind = "ssh"
address = "10.0.1.5:22"
login = "deploy"
host_key = "accept-first"
requestable_by = ["engineer"]
approvers = ["leader"]
"#;

    fn access(dir: &Path) -> Access {
        let config = Config::parse(CONFIG, Path::new("test.toml"), Path::new("/tmp"))
            .unwrap_or_else(|error| panic!("test config is invalid: {error}"));
        let store = Store::open(&dir.join("state.db")).unwrap_or_else(|error| panic!("{error}"));
        let clock = Arc::new(ManualClock::new(datetime!(2026-11-22 12:00:00 UTC)));
        Access::new(Arc::new(config), store, clock)
    }

    fn record(actor: &str, detail: Value) -> AuditRecord {
        AuditRecord {
            seq: 7,
            id: "a-1".to_string(),
            ts: datetime!(2026-11-22 12:00:00 UTC),
            event_type: "login.failed".to_string(),
            actor: Some(actor.to_string()),
            target: Some(EVIL.to_string()),
            request_id: None,
            grant_id: None,
            session_id: None,
            detail: detail.to_string(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn mrkdwn_escapes_exactly_slacks_three_characters() {
        for (text, expected) in [
            ("", ""),
            ("INC-9 fix the thing", "INC-9 fix the thing"),
            ("a & b", "a &amp; b"),
            ("&lt;", "&amp;lt;"),
            ("<!here>", "&lt;!here&gt;"),
            ("<@U123>", "&lt;@U123&gt;"),
            ("@channel *bold* `code`", "@channel *bold* `code`"),
            (EVIL, EVIL_ESCAPED),
        ] {
            assert_eq!(mrkdwn(text), expected, "{text}");
        }
    }

    #[test]
    fn issue_17_alerts_escape_what_users_typed_and_keep_our_mentions() {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
        let access = access(dir.path());

        // A name tried at login is no user's: it is shown, escaped, instead of a mention.
        let stranger = alert_text(&access, &record(EVIL, json!({ "why": EVIL })));
        assert_eq!(
            stranger,
            format!(
                ":warning: login.failed by {EVIL_ESCAPED} on {EVIL_ESCAPED}: {EVIL_ESCAPED} (audit #7)"
            )
        );

        let known = alert_text(&access, &record("bob", json!({ "reason": EVIL })));
        assert!(known.contains("by <@UBOB> on "), "{known}");
        assert!(
            known.ends_with(&format!(": {EVIL_ESCAPED} (audit #7)")),
            "{known}"
        );
        assert!(
            !known.contains("<!channel>") && !known.contains("<https:"),
            "{known}"
        );
    }

    #[test]
    fn issue_17_request_messages_escape_reasons_and_keep_our_mentions() {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
        let access = access(dir.path());
        let request = access
            .request("alice", "web-1", Some(Duration::from_secs(3_600)), EVIL)
            .unwrap_or_else(|error| panic!("request refused: {error}"));

        let pending = message(&access, &request, None);
        let first = pending["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(
            first.starts_with("<@UALICE> requests web-1 (ssh)"),
            "{first}"
        );
        assert!(first.ends_with(&format!(": {EVIL_ESCAPED}")), "{first}");
        let second = pending["blocks"][1]["text"]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(second.contains("approvers: <@UBOB>"), "{second}");
        let top = pending["text"].as_str().unwrap_or_default();
        assert!(top.contains(EVIL_ESCAPED), "{top}");
        assert!(!pending.to_string().contains("<!channel>"), "{pending}");

        let denied = access
            .deny("bob", &request.id, EVIL)
            .unwrap_or_else(|error| panic!("deny refused: {error}"));
        let updated = message(&access, &denied, None);
        let outcome = updated["blocks"][1]["text"]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(
            outcome.contains(&format!("denied by <@UBOB>: {EVIL_ESCAPED}")),
            "{outcome}"
        );
        assert!(!updated.to_string().contains("<!channel>"), "{updated}");

        let told = decision_text(&access, &denied);
        assert_eq!(
            told,
            format!("{} denied by bob: {EVIL_ESCAPED}", request.id)
        );
    }
}
