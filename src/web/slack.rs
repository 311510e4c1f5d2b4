//! Slack's requests to the bastion (issue #5): clicks on the buttons of approval messages.
//!
//! Every request is verified before anything in it is parsed: the body is read up to
//! `MAX_BODY` (413 past it), then slack-morphism's verifier checks the `X-Slack-Signature` v0
//! HMAC-SHA256 over `v0:{timestamp}:{body}` with the signing secret, in constant time, and that
//! `X-Slack-Request-Timestamp` is within 5 minutes of now; a byte-identical request seen before
//! (same timestamp and signature) is a replay. Each failure answers 401 and is audited as
//! `webhook.rejected`; nothing else happens.
//!
//! A verified click names its Slack user, mapped to the bastion user whose `slack_user_id` it
//! is, and goes through the same `Access` calls as the SSH commands, so the same rules apply (no
//! self-approval, approver role required) and refusals are audited by the core. A refused click
//! is answered 200 with the reason: Slack shows nothing for a non-200 answer to a click.
//!
//! Deny opens a modal (`views.open`) that asks for the reason; its submission denies. A refused
//! click is also told to the clicker alone (`chat.postEphemeral`). Messages themselves are
//! posted and updated by `slack_notify.rs` from the outbox.
//!
//! Answers are Slack mrkdwn: whatever in them came from a click, a command or the store (request
//! ids, names, refusals, command output) goes through `slack_notify::mrkdwn` first (issue #17).
//! The deny modal has only `plain_text` fields, which Slack shows literally, so it is not escaped.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use slack_morphism::blocks::SlackView;
use slack_morphism::events::{
    SlackInteractionActionInfo, SlackInteractionEvent, SlackInteractionViewSubmissionEvent,
};
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;

use crate::access::{Access, Approved};
use crate::audit::Actor;
use crate::web::slack_notify::{Api, mrkdwn};

/// Slack's requests are small; anything larger is refused before any verification work.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a signature is remembered: twice the timestamp window, so a replay is caught for as
/// long as its timestamp could still pass.
const REPLAY_WINDOW_SECONDS: i64 = 2 * SlackEventSignatureVerifier::MAX_TIMESTAMP_AGE_SECONDS;

/// The action ids of the message's buttons; each button's value is the request id.
pub const APPROVE: &str = "approve";
pub const REVOKE: &str = "revoke";

/// What the Slack endpoints share.
#[derive(Clone)]
pub struct Slack {
    inner: Arc<Inner>,
}

struct Inner {
    access: Access,
    /// `None` when Slack is configured but the signing secret could not be read: every request
    /// is then refused (fail closed), and the start said why.
    verifier: Option<SlackEventSignatureVerifier>,
    seen: Mutex<Seen>,
    /// The Web API, for the deny modal and the answers only the clicker sees; `None` when the bot
    /// token cannot be read (clicks are still decided, their answers go unsent).
    api: Option<Arc<Api>>,
}

impl Slack {
    /// The Slack endpoints' state, or `None` when the config has no `[slack]`.
    pub fn new(access: Access) -> Option<Slack> {
        let config = access.config().slack.as_ref()?;
        let verifier = match config.signing_secret.read() {
            Ok(secret) => Some(SlackEventSignatureVerifier::new(
                &secret.expose().clone().into(),
            )),
            Err(error) => {
                tracing::error!(%error, "slack signing secret unavailable: every slack request will be refused");
                None
            }
        };
        let api = match Api::connect(&access) {
            Ok(api) => Some(Arc::new(api)),
            Err(why) => {
                tracing::error!(
                    why,
                    "slack web api unavailable: no deny dialog or private answers"
                );
                None
            }
        };
        Some(Slack {
            inner: Arc::new(Inner {
                access,
                verifier,
                seen: Mutex::new(Seen::default()),
                api,
            }),
        })
    }
}

/// `POST /slack/interactions`: block actions (button clicks).
pub async fn interactions(State(slack): State<Slack>, headers: HeaderMap, body: Bytes) -> Response {
    let text = match verify(&slack, "/slack/interactions", &headers, &body).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let Some(payload) = form_field(&text, "payload") else {
        return (StatusCode::BAD_REQUEST, "no payload field").into_response();
    };
    let event: SlackInteractionEvent = match serde_json::from_str(&payload) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, "a verified slack interaction did not parse");
            return (StatusCode::BAD_REQUEST, "unreadable interaction payload").into_response();
        }
    };
    let actions = match event {
        SlackInteractionEvent::BlockActions(actions) => actions,
        SlackInteractionEvent::ViewSubmission(submission) => {
            return submitted(&slack, submission).await;
        }
        _ => return answer("this interaction is not one the bastion offers"),
    };
    let (Some(user), Some(action)) = (
        actions.user,
        actions
            .actions
            .and_then(|actions| actions.into_iter().next()),
    ) else {
        return answer("the click named no user or action");
    };
    let slack_id = user.id.to_string();
    let channel = actions.channel.map(|channel| channel.id.to_string());
    // Deny asks for a reason first: a modal whose submission decides (`submitted`).
    if action.action_id.to_string() == DENY {
        let request_id = action.value.clone().unwrap_or_default();
        let opened = match (&slack.inner.api, deny_modal(&request_id)) {
            (Some(api), Some(modal)) => api
                .open_view(actions.trigger_id.as_ref(), modal)
                .await
                .is_ok(),
            _ => false,
        };
        if !opened {
            tracing::warn!("cannot open the deny dialog");
            tell(
                &slack,
                channel,
                &slack_id,
                "the deny dialog could not open; nothing was changed",
            );
        }
        return answer("asking for a reason");
    }
    let access = slack.inner.access.clone();
    let clicker = slack_id.clone();
    let decided = tokio::task::spawn_blocking(move || click(&access, &clicker, &action)).await;
    match decided {
        Ok((refused, message)) => {
            if refused {
                tell(&slack, channel, &slack_id, &message);
            }
            answer(&message)
        }
        // Fail closed: a decision whose outcome is unknown is reported as not made.
        Err(_) => answer("the bastion could not decide this click; nothing was changed"),
    }
}

/// `POST /slack/commands`: `/access request TARGET DURATION REASON...`, `/access status [ID]`,
/// `/access pending`, run as the mapped bastion user through the same commands as over SSH.
pub async fn commands(State(slack): State<Slack>, headers: HeaderMap, body: Bytes) -> Response {
    let text = match verify(&slack, "/slack/commands", &headers, &body).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let (Some(slack_id), Some(line)) = (form_field(&text, "user_id"), form_field(&text, "text"))
    else {
        return (StatusCode::BAD_REQUEST, "not a slash command").into_response();
    };
    let access = slack.inner.access.clone();
    let ran = tokio::task::spawn_blocking(move || {
        let user = bastion_user(&access, &slack_id);
        if access.config().user(&user).is_none() {
            return format!(
                "no bastion user has the slack id {}; ask the operator to add it",
                mrkdwn(&slack_id)
            );
        }
        match slash_words(&line) {
            // The output holds reasons, names and targets and no markup of ours: escaped whole.
            Ok(words) => {
                let output = crate::commands::run(&access, &user, &words);
                mrkdwn(format!("{}{}", output.stdout, output.stderr).trim_end())
            }
            Err(usage) => usage,
        }
    })
    .await
    .unwrap_or_else(|_| "the bastion could not run this command; nothing was changed".to_string());
    answer(&ran)
}

/// The command words of a slash command's text: `request TARGET DURATION REASON...` becomes
/// the SSH command's `request TARGET --for DURATION --reason REASON...`; `status` and `pending`
/// pass as they are.
fn slash_words(line: &str) -> Result<Vec<String>, String> {
    const USAGE: &str = "usage: /access request TARGET DURATION REASON... | /access status [REQUEST] | /access pending";
    let words = shell_words::split(line).map_err(|_| USAGE.to_string())?;
    match words.first().map(String::as_str) {
        Some("request") if words.len() >= 4 => {
            let mut command = vec![
                "request".to_string(),
                words[1].clone(),
                "--for".to_string(),
                words[2].clone(),
                "--reason".to_string(),
            ];
            command.extend(words[3..].iter().cloned());
            Ok(command)
        }
        Some("status" | "pending") => Ok(words),
        _ => Err(USAGE.to_string()),
    }
}

/// The action id of the Deny button, and the modal's callback id and input ids.
pub const DENY: &str = "deny";
const REASON: &str = "reason";

/// The modal that asks a denier for the reason; its private metadata is the request id.
fn deny_modal(request_id: &str) -> Option<SlackView> {
    serde_json::from_value(json!({
        "type": "modal",
        "callback_id": DENY,
        "private_metadata": request_id,
        "title": { "type": "plain_text", "text": "Deny access" },
        "submit": { "type": "plain_text", "text": "Deny" },
        "close": { "type": "plain_text", "text": "Cancel" },
        "blocks": [{
            "type": "input",
            "block_id": REASON,
            "label": { "type": "plain_text", "text": format!("Why deny {request_id}?") },
            "element": { "type": "plain_text_input", "action_id": REASON },
        }],
    }))
    .ok()
}

/// A submitted deny modal: denies with the typed reason, or shows the refusal in the modal.
async fn submitted(slack: &Slack, submission: SlackInteractionViewSubmissionEvent) -> Response {
    let SlackView::Modal(modal) = &submission.view.view else {
        return answer("this view is not one the bastion offers");
    };
    if modal
        .callback_id
        .as_ref()
        .map(ToString::to_string)
        .as_deref()
        != Some(DENY)
    {
        return answer("this view is not one the bastion offers");
    }
    let request_id = modal.private_metadata.clone().unwrap_or_default();
    let reason = submission
        .view
        .state_params
        .state
        .as_ref()
        .and_then(|state| state.values.get(&REASON.to_string().into()))
        .and_then(|block| block.get(&REASON.to_string().into()))
        .and_then(|input| input.value.clone())
        .unwrap_or_default();
    let access = slack.inner.access.clone();
    let slack_id = submission.user.id.to_string();
    let denied = tokio::task::spawn_blocking(move || {
        let user = bastion_user(&access, &slack_id);
        access.deny(&user, &request_id, &reason).map(|_| ())
    })
    .await;
    let refusal = match denied {
        Ok(Ok(())) => return StatusCode::OK.into_response(),
        Ok(Err(refusal)) => refusal.to_string(),
        Err(_) => "the bastion could not decide; nothing was changed".to_string(),
    };
    // Slack shows these errors under the input and keeps the modal open.
    (
        StatusCode::OK,
        Json(json!({ "response_action": "errors", "errors": { REASON: refusal } })),
    )
        .into_response()
}

/// Sends `text` to the clicker alone, without holding up the answer to Slack. `text` is mrkdwn:
/// what came from users or the store in it is already escaped.
fn tell(slack: &Slack, channel: Option<String>, user: &str, text: &str) {
    let (Some(api), Some(channel)) = (slack.inner.api.clone(), channel) else {
        return;
    };
    let (user, text) = (user.to_string(), text.to_string());
    tokio::spawn(async move {
        if let Err(error) = api.post_ephemeral(&channel, &user, &text).await {
            tracing::warn!(%error, "cannot send a slack answer");
        }
    });
}

/// The bastion user whose `slack_user_id` this is, or a name no user can have, so a stranger's
/// click still goes through the core and its refusal is audited like any other.
fn bastion_user(access: &Access, slack_id: &str) -> String {
    access
        .config()
        .users
        .iter()
        .find(|user| user.slack_user_id.as_deref() == Some(slack_id))
        .map(|user| user.name.clone())
        .unwrap_or_else(|| format!("slack:{slack_id}"))
}

/// Applies one verified click as the bastion user behind `slack_id`: whether it was refused,
/// and the answer for the clicker, ready for mrkdwn (every piece from the click or the store is
/// escaped, refusals whole since they quote what was asked for).
fn click(access: &Access, slack_id: &str, action: &SlackInteractionActionInfo) -> (bool, String) {
    let request_id = action.value.clone().unwrap_or_default();
    let user = bastion_user(access, slack_id);
    let shown = mrkdwn(&request_id);
    match action.action_id.to_string().as_str() {
        APPROVE => match access.approve(&user, &request_id) {
            Ok(Approved::Granted { grant, .. }) => (
                false,
                format!(
                    "approved {shown}: {} has {} until {}",
                    mrkdwn(&grant.user),
                    mrkdwn(&grant.target),
                    crate::clock::rfc3339(grant.ends_at)
                ),
            ),
            Ok(Approved::Waiting {
                approvals,
                required,
                ..
            }) => (
                false,
                format!("approved {shown}: {approvals} of {required} approvals"),
            ),
            Err(refusal) => (
                true,
                format!("not approved: {}", mrkdwn(&refusal.to_string())),
            ),
        },
        REVOKE => {
            let grant = match crate::commands::grant_of(access, &request_id) {
                Ok(grant) => grant,
                Err(refusal) => {
                    return (
                        true,
                        format!("not revoked: {}", mrkdwn(&refusal.to_string())),
                    );
                }
            };
            match access.revoke(&Actor::User(user), &grant, "revoked in slack") {
                Ok(grant) => (
                    false,
                    format!(
                        "revoked {} ({} on {})",
                        mrkdwn(&grant.id),
                        mrkdwn(&grant.user),
                        mrkdwn(&grant.target)
                    ),
                ),
                Err(refusal) => (
                    true,
                    format!("not revoked: {}", mrkdwn(&refusal.to_string())),
                ),
            }
        }
        other => (
            true,
            format!("unknown action {}; nothing was changed", mrkdwn(other)),
        ),
    }
}

/// A 200 answer carrying `text` for the clicker; mrkdwn, like `tell`'s.
fn answer(text: &str) -> Response {
    (
        StatusCode::OK,
        Json(json!({ "response_type": "ephemeral", "replace_original": false, "text": text })),
    )
        .into_response()
}

/// Checks the signature, the timestamp and replays; the body as text, or the 401 to send.
async fn verify(
    slack: &Slack,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Response> {
    let checked = check(slack, headers, body);
    match checked {
        Ok(text) => Ok(text),
        Err(why) => {
            let refusal = crate::session::admit::Refusal::Webhook {
                path: path.to_string(),
                why: why.to_string(),
            };
            crate::session::admit::refused(&slack.inner.access, refusal).await;
            tracing::warn!(path, why, "slack request rejected");
            Err((StatusCode::UNAUTHORIZED, why).into_response())
        }
    }
}

fn check(slack: &Slack, headers: &HeaderMap, body: &[u8]) -> Result<String, &'static str> {
    let Some(verifier) = &slack.inner.verifier else {
        return Err("the signing secret is unavailable");
    };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header(SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER),
        header(SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP),
    ) else {
        return Err("missing signature or timestamp header");
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return Err("the body is not UTF-8");
    };
    verifier
        .verify(signature, text, timestamp)
        .map_err(|_| "bad signature or timestamp")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let fresh = slack
        .inner
        .seen
        .lock()
        .map(|mut seen| seen.first_time(timestamp, signature, now))
        .unwrap_or(false);
    if !fresh {
        return Err("replayed request");
    }
    Ok(text.to_string())
}

/// Verified signatures of the last `REPLAY_WINDOW_SECONDS`. Only verified requests get in, so it
/// grows with Slack's real traffic, never with an attacker's.
#[derive(Default)]
struct Seen {
    order: VecDeque<(i64, String)>,
    keys: HashSet<String>,
}

impl Seen {
    /// Remembers this request; false if it was seen before.
    fn first_time(&mut self, timestamp: &str, signature: &str, now: i64) -> bool {
        while let Some((at, key)) = self.order.front() {
            if *at >= now - REPLAY_WINDOW_SECONDS {
                break;
            }
            self.keys.remove(key);
            self.order.pop_front();
        }
        let key = format!("{timestamp}:{signature}");
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back((now, key));
        true
    }
}

/// The decoded value of `name` in an `application/x-www-form-urlencoded` body.
fn form_field(body: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(body.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's documented example ("Verifying requests from Slack"). Its timestamp is from 2018,
    /// so the verifier refuses it for age; it checks the signature first, and a wrong signature
    /// is a different error, so the example's signature is proven to verify.
    #[test]
    fn slacks_documented_example_signature_verifies() {
        let verifier = SlackEventSignatureVerifier::new(
            &"8f742231b10e8888abcd99yyyzzz85a5".to_string().into(),
        );
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        let outcome = verifier.verify(signature, body, "1531420618");
        assert!(
            matches!(
                outcome,
                Err(slack_morphism::signature_verifier::SlackEventSignatureVerifierError::IncorrectOrExpiredTimestampError(_))
            ),
            "{outcome:?}"
        );
        let altered = verifier.verify(signature, &body.replace("foobar", "foobaz"), "1531420618");
        assert!(
            matches!(
                altered,
                Err(slack_morphism::signature_verifier::SlackEventSignatureVerifierError::WrongSignatureError(_))
            ),
            "{altered:?}"
        );
    }

    #[test]
    fn a_request_is_fresh_once_and_forgotten_after_the_window() {
        let mut seen = Seen::default();
        assert!(seen.first_time("100", "v0=aa", 100));
        assert!(!seen.first_time("100", "v0=aa", 101));
        assert!(seen.first_time("100", "v0=bb", 101));
        assert!(seen.first_time("100", "v0=aa", 100 + REPLAY_WINDOW_SECONDS + 1));
    }

    #[test]
    fn slash_command_text_becomes_command_words() {
        assert_eq!(
            slash_words("request prod-db 2h INC-123 fix stuck migration"),
            Ok([
                "request",
                "prod-db",
                "--for",
                "2h",
                "--reason",
                "INC-123",
                "fix",
                "stuck",
                "migration"
            ]
            .map(String::from)
            .to_vec())
        );
        assert_eq!(slash_words("pending"), Ok(vec!["pending".to_string()]));
        for bad in [
            "",
            "request prod-db 2h",
            "approve r-1",
            "revoke g-1",
            "\"unclosed",
        ] {
            assert!(slash_words(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_field("a=1&payload=%7B%22x%22%3A+1%7D", "payload").as_deref(),
            Some("{\"x\": 1}")
        );
        assert_eq!(form_field("a=1", "payload"), None);
    }
}
