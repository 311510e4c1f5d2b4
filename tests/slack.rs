//! Slack's requests to the bastion (issue #5): every request signed exactly as Slack signs it
//! (v0 HMAC-SHA256 over `v0:{timestamp}:{body}`), sent over real HTTP to the bastion's listener.
//! Requests are filed over real SSH; clicks decide them through the same core.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::bastion::{Bastion, UNREACHED_TARGETS};
use support::slack::{FakeSlack, Mode};
use support::wait_for;

const SECRET: &str = "test-signing-secret-0123456789abcdef";

/// A bastion with `[slack]` on, its secrets in files, talking to nothing.
fn bastion() -> (Bastion, tempfile::TempDir) {
    bastion_with_api("http://127.0.0.1:9/api")
}

/// A bastion with `[slack]` on, its Web API at `api_url`.
fn bastion_with_api(api_url: &str) -> (Bastion, tempfile::TempDir) {
    bastion_with_slack(&format!("api_url = \"{api_url}\"\n"))
}

/// A bastion with `[slack]` on and these extra `[slack]` lines.
fn bastion_with_slack(lines: &str) -> (Bastion, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("tempdir");
    let signing = secrets.path().join("signing_secret");
    let token = secrets.path().join("bot_token");
    std::fs::write(&signing, SECRET).expect("write secret");
    std::fs::write(&token, "xoxb-test").expect("write token");
    let bastion = Bastion::start_with(|_| {
        format!(
            "{UNREACHED_TARGETS}\n[slack]\nbot_token_file = \"{}\"\nsigning_secret_file = \"{}\"\nchannel = \"CAPPROVALS\"\n{lines}",
            token.display(),
            signing.display()
        )
    });
    (bastion, secrets)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// `v0=` and the hex HMAC-SHA256 of `v0:{timestamp}:{body}`, as Slack computes it.
fn sign(timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body` with `headers` over HTTP/1.1; the status and the response body.
fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send head");
    // A body past the limit may be refused before it is all read.
    let _ = stream.write_all(body.as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Request headers as (name, value).
type Headers = Vec<(&'static str, String)>;

/// A signed request with a fresh timestamp.
fn signed(body: &str) -> Headers {
    let timestamp = now().to_string();
    vec![
        ("X-Slack-Signature", sign(&timestamp, body)),
        ("X-Slack-Request-Timestamp", timestamp),
    ]
}

/// The form body of a block_actions click by `user` on the button `action` for `request`.
fn click(user: &str, action: &str, request: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "team": { "id": "T1", "domain": "example" },
        "user": { "id": user, "team_id": "T1" },
        "api_app_id": "A1",
        "container": { "type": "message", "message_ts": "1700000000.000100", "channel_id": "CAPPROVALS", "is_ephemeral": false },
        "trigger_id": "1.2.3",
        "channel": { "id": "CAPPROVALS", "name": "approvals" },
        "response_url": "http://127.0.0.1:9/response",
        "actions": [{
            "type": "button",
            "action_id": action,
            "block_id": "decide",
            "text": { "type": "plain_text", "text": "Approve" },
            "value": request,
            "action_ts": "1700000001.000200"
        }]
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

fn request_web_1(bastion: &Bastion) -> String {
    let (code, stdout, stderr) = bastion.ssh(
        "alice",
        &[
            "request", "web-1", "--for", "1h", "--reason", "INC-9", "--json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let request: Value = serde_json::from_str(stdout.trim()).expect("json");
    request["id"].as_str().expect("id").to_string()
}

fn state_of(bastion: &Bastion, request: &str) -> String {
    let request = bastion
        .access()
        .request_by_id(request)
        .expect("store")
        .expect("request");
    request.state.as_str().to_string()
}

#[test]
fn a_signed_approve_click_grants_and_refusals_change_nothing() {
    let (bastion, _secrets) = bastion();
    let addr = bastion.http_addr();
    let request = request_web_1(&bastion);

    // Refused clicks are answered 200 with the reason, and the request stays pending.
    let refused = [
        ("UALICE", "cannot approve your own request"),
        ("UNOBODY", "unknown user"),
    ];
    for (user, expected) in refused {
        let body = click(user, "approve", &request);
        let (status, answer) = post(addr, "/slack/interactions", &signed(&body), &body);
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains(expected), "{user}: {answer}");
        assert_eq!(state_of(&bastion, &request), "pending", "{user}");
    }

    let body = click("UBOB", "approve", &request);
    let (status, answer) = post(addr, "/slack/interactions", &signed(&body), &body);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("alice has web-1 until"), "{answer}");
    assert_eq!(state_of(&bastion, &request), "approved");
    let grant = bastion
        .access()
        .active_grant("alice", "web-1")
        .expect("store")
        .expect("an active grant");

    // A second click (fresh timestamp, so not a replay) changes nothing.
    let again = click("UCAROL", "approve", &request);
    let (status, answer) = post(addr, "/slack/interactions", &signed(&again), &again);
    assert_eq!(status, 200);
    assert!(answer.contains("not pending"), "{answer}");

    // Revoke from the message: the grant ends at once.
    let revoke = click("UBOB", "revoke", &request);
    let (status, answer) = post(addr, "/slack/interactions", &signed(&revoke), &revoke);
    assert_eq!(status, 200);
    assert!(
        answer.contains(&format!("revoked {}", grant.id)),
        "{answer}"
    );
    assert!(
        bastion
            .access()
            .active_grant("alice", "web-1")
            .expect("store")
            .is_none()
    );
    let types = bastion.audit_types();
    assert!(
        types.iter().any(|kind| kind == "decision_refused"),
        "{types:?}"
    );
}

#[test]
fn unverified_requests_are_401_audited_and_change_nothing() {
    let (bastion, _secrets) = bastion();
    let addr = bastion.http_addr();
    let request = request_web_1(&bastion);
    let body = click("UBOB", "approve", &request);
    let fresh = now().to_string();
    let old = (now() - 6 * 60).to_string();

    let mut cases: Vec<(&str, Headers, String)> = vec![
        (
            "wrong signature",
            vec![
                ("X-Slack-Signature", format!("v0={}", "0".repeat(64))),
                ("X-Slack-Request-Timestamp", fresh.clone()),
            ],
            body.clone(),
        ),
        (
            "missing signature",
            vec![("X-Slack-Request-Timestamp", fresh.clone())],
            body.clone(),
        ),
        (
            "missing timestamp",
            vec![("X-Slack-Signature", sign(&fresh, &body))],
            body.clone(),
        ),
        (
            "six minutes old",
            vec![
                ("X-Slack-Signature", sign(&old, &body)),
                ("X-Slack-Request-Timestamp", old.clone()),
            ],
            body.clone(),
        ),
        (
            "altered after signing",
            vec![
                ("X-Slack-Signature", sign(&fresh, &body)),
                ("X-Slack-Request-Timestamp", fresh.clone()),
            ],
            body.replace("UBOB", "UCAROL"),
        ),
    ];
    // A byte-identical request seen before is a replay, even though its signature is good.
    let other = click("UCAROL", "approve", "r-nosuchone");
    let replayed = signed(&other);
    let (status, _) = post(addr, "/slack/interactions", &replayed, &other);
    assert_eq!(status, 200, "the first delivery is accepted");
    cases.push(("replay", replayed, other));

    for (name, headers, body) in cases {
        let (status, answer) = post(addr, "/slack/interactions", &headers, &body);
        assert_eq!(status, 401, "{name}: {answer}");
        assert_eq!(state_of(&bastion, &request), "pending", "{name}");
    }
    let rejected = bastion
        .audit()
        .into_iter()
        .filter(|event| event["type"] == "webhook.rejected")
        .count();
    assert_eq!(rejected, 6);

    // Over 64 KiB: 413 before any verification.
    let huge = "a".repeat(65 * 1024);
    let (status, _) = post(addr, "/slack/interactions", &signed(&huge), &huge);
    assert_eq!(status, 413);

    // Still serving: a good click goes through.
    let (status, answer) = post(addr, "/slack/interactions", &signed(&body), &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state_of(&bastion, &request), "approved");
}

fn message_text(call: &Value) -> String {
    call["blocks"].to_string()
}

/// Waits for a `chat.update` whose message contains `text`.
fn updated_with(slack: &FakeSlack, text: &str, what: &str) -> Value {
    wait_for(what, Duration::from_secs(15), || {
        slack
            .calls("chat.update")
            .into_iter()
            .find(|call| message_text(call).contains(text))
    })
}

#[test]
fn a_request_is_posted_with_buttons_and_updated_in_place_as_it_is_decided() {
    let slack = FakeSlack::start();
    let (bastion, _secrets) = bastion_with_api(&slack.api_url());
    let request = request_web_1(&bastion);

    let posted = wait_for("the request message", Duration::from_secs(15), || {
        slack
            .calls("chat.postMessage")
            .into_iter()
            .find(|call| call["channel"] == "CAPPROVALS")
    });
    assert_eq!(posted["channel"], "CAPPROVALS");
    let blocks = message_text(&posted);
    for expected in [
        "<@UALICE>",
        "web-1",
        "INC-9",
        request.as_str(),
        "0 of 1 approvals",
        "<@UBOB>",
        "\"Approve\"",
        "\"Deny\"",
        "primary",
        "danger",
    ] {
        assert!(blocks.contains(expected), "{expected} in {blocks}");
    }

    let body = click("UBOB", "approve", &request);
    let (status, _) = post(
        bastion.http_addr(),
        "/slack/interactions",
        &signed(&body),
        &body,
    );
    assert_eq!(status, 200);
    let updated = updated_with(&slack, "access until", "the approved message");
    assert_eq!(updated["ts"], FakeSlack::TS);
    assert_eq!(updated["channel"], "CAPPROVALS");
    assert!(message_text(&updated).contains("\"Revoke\""), "{updated}");
    assert!(
        message_text(&updated).contains("approved by <@UBOB>"),
        "{updated}"
    );

    let (code, _, stderr) = bastion.ssh("bob", &["revoke", &request]);
    assert_eq!(code, 0, "{stderr}");
    let revoked = updated_with(&slack, "revoked by <@UBOB>", "the revoked message");
    assert!(!message_text(&revoked).contains("\"Revoke\""), "{revoked}");
    // One message for the request, updated in place, and one direct message to the requester
    // with the line to connect with.
    let posts = slack.calls("chat.postMessage");
    let in_channel = posts
        .iter()
        .filter(|call| call["channel"] == "CAPPROVALS")
        .count();
    assert_eq!(in_channel, 1, "{posts:?}");
    let direct: Vec<&Value> = posts
        .iter()
        .filter(|call| call["channel"] == "UALICE")
        .collect();
    assert_eq!(direct.len(), 1, "{posts:?}");
    let text = direct[0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("approved by bob"), "{text}");
    assert!(text.contains("alice+web-1@"), "{text}");
    assert!(slack.authorized_with("xoxb-test"));
}

#[test]
fn messages_wait_out_a_slack_outage_and_a_rate_limit_and_none_is_lost_or_doubled() {
    let slack = FakeSlack::start();
    slack.set_mode(Mode::Down);
    let (bastion, _secrets) = bastion_with_api(&slack.api_url());

    // Slack is down: requests and approvals over SSH work all the same.
    let first = request_web_1(&bastion);
    let (code, _, stderr) = bastion.ssh("bob", &["approve", &first]);
    assert_eq!(code, 0, "{stderr}");
    wait_for(
        "attempts against the outage",
        Duration::from_secs(15),
        || (slack.attempts() >= 2).then_some(()),
    );
    assert!(slack.calls("chat.postMessage").is_empty());

    // Then rate-limited once (429 with Retry-After), then up.
    slack.set_mode(Mode::RateLimitedOnce);
    let posted = wait_for(
        "the message after the outage",
        Duration::from_secs(45),
        || slack.calls("chat.postMessage").into_iter().next(),
    );
    // What is posted is the request's state now: approved, not the pending it was when filed.
    assert!(message_text(&posted).contains("access until"), "{posted}");
    assert!(message_text(&posted).contains(first.as_str()));
    wait_for("the outbox to drain", Duration::from_secs(15), || {
        let pending = bastion
            .access()
            .store()
            .read(|tx| tx.pending_notifications(10))
            .expect("outbox");
        pending.is_empty().then_some(())
    });
    let posts = slack.calls("chat.postMessage");
    let in_channel = posts
        .iter()
        .filter(|call| call["channel"] == "CAPPROVALS")
        .count();
    let direct = posts
        .iter()
        .filter(|call| call["channel"] == "UALICE")
        .count();
    assert_eq!(
        (in_channel, direct),
        (1, 1),
        "posted once, told once: {posts:?}"
    );
}

#[test]
fn messages_queued_while_slack_was_down_go_out_after_a_restart() {
    let slack = FakeSlack::start();
    slack.set_mode(Mode::Down);
    let (mut bastion, _secrets) = bastion_with_api(&slack.api_url());
    let request = request_web_1(&bastion);
    wait_for(
        "an attempt against the outage",
        Duration::from_secs(15),
        || (slack.attempts() >= 1).then_some(()),
    );
    bastion.restart();
    slack.set_mode(Mode::Up);
    let posted = wait_for(
        "the message after the restart",
        Duration::from_secs(45),
        || slack.calls("chat.postMessage").into_iter().next(),
    );
    assert!(message_text(&posted).contains(request.as_str()), "{posted}");
}

/// The form body of a submitted deny modal for `request` with `reason`.
fn deny_submission(user: &str, request: &str, reason: &str) -> String {
    let payload = json!({
        "type": "view_submission",
        "team": { "id": "T1", "domain": "example" },
        "user": { "id": user, "team_id": "T1" },
        "api_app_id": "A1",
        "trigger_id": "4.5.6",
        "view": {
            "id": "V1", "team_id": "T1", "hash": "h1", "type": "modal",
            "callback_id": "deny", "private_metadata": request,
            "title": { "type": "plain_text", "text": "Deny access" },
            "blocks": [],
            "state": { "values": { "reason": { "reason": { "type": "plain_text_input", "value": reason } } } }
        }
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

#[test]
fn deny_asks_a_reason_in_a_modal_and_refusals_are_told_to_the_clicker_alone() {
    let slack = FakeSlack::start();
    let (bastion, _secrets) = bastion_with_api(&slack.api_url());
    let addr = bastion.http_addr();
    let request = request_web_1(&bastion);

    // Self-approval: refused, and the clicker alone is told why.
    let body = click("UALICE", "approve", &request);
    let (status, _) = post(addr, "/slack/interactions", &signed(&body), &body);
    assert_eq!(status, 200);
    let told = wait_for("the private answer", Duration::from_secs(15), || {
        slack.calls("chat.postEphemeral").into_iter().next()
    });
    assert_eq!(told["user"], "UALICE");
    assert_eq!(told["channel"], "CAPPROVALS");
    assert!(
        told["text"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot approve your own request"),
        "{told}"
    );

    // Deny opens a modal for the reason; nothing is decided yet.
    let body = click("UBOB", "deny", &request);
    let (status, _) = post(addr, "/slack/interactions", &signed(&body), &body);
    assert_eq!(status, 200);
    let opened = slack.calls("views.open");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["trigger_id"], "1.2.3");
    assert_eq!(opened[0]["view"]["callback_id"], "deny");
    assert_eq!(opened[0]["view"]["private_metadata"], request.as_str());
    assert_eq!(state_of(&bastion, &request), "pending");

    // The requester's own submission is refused inside the modal.
    let own = deny_submission("UALICE", &request, "no");
    let (status, answer) = post(addr, "/slack/interactions", &signed(&own), &own);
    assert_eq!(status, 200);
    assert!(
        answer.contains("\"response_action\":\"errors\""),
        "{answer}"
    );
    assert_eq!(state_of(&bastion, &request), "pending");

    let submitted = deny_submission("UBOB", &request, "use the staging replica");
    let (status, answer) = post(addr, "/slack/interactions", &signed(&submitted), &submitted);
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.contains("errors"), "{answer}");
    assert_eq!(state_of(&bastion, &request), "denied");
    // The message shows the request as it is now: posted denied if it had not gone out yet,
    // updated to denied otherwise.
    let updated = wait_for("the denied message", Duration::from_secs(15), || {
        let mut shown = slack.calls("chat.update");
        shown.extend(
            slack
                .calls("chat.postMessage")
                .into_iter()
                .filter(|call| call["channel"] == "CAPPROVALS"),
        );
        shown
            .into_iter()
            .find(|call| message_text(call).contains("denied by <@UBOB>: use the staging replica"))
    });
    assert!(!message_text(&updated).contains("\"Approve\""), "{updated}");
    wait_for(
        "the requester's direct message",
        Duration::from_secs(15),
        || {
            slack.calls("chat.postMessage").into_iter().find(|call| {
                call["channel"] == "UALICE"
                    && call["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("denied by bob")
            })
        },
    );
}

#[test]
fn the_slash_command_files_and_lists_requests_as_the_mapped_user() {
    let (bastion, _secrets) = bastion();
    let addr = bastion.http_addr();
    let command = |user: &str, text: &str| {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("command", "/access")
            .append_pair("text", text)
            .append_pair("user_id", user)
            .append_pair("channel_id", "CAPPROVALS")
            .finish();
        let (status, answer) = post(addr, "/slack/commands", &signed(&body), &body);
        assert_eq!(status, 200, "{answer}");
        let answer: Value = serde_json::from_str(&answer).expect("json answer");
        answer["text"].as_str().unwrap_or_default().to_string()
    };
    let filed = command("UALICE", "request web-1 2h INC-123 fix stuck migration");
    assert!(filed.contains("r-"), "{filed}");
    let request = bastion
        .access()
        .requests(portcullis::store::RequestFilter {
            pending_only: true,
            limit: Some(10),
        })
        .expect("store")
        .into_iter()
        .next()
        .expect("the request");
    assert_eq!(request.requester, "alice");
    assert_eq!(request.reason, "INC-123 fix stuck migration");
    assert_eq!(request.duration, Duration::from_secs(7_200));

    let pending = command("UBOB", "pending");
    assert!(pending.contains(&request.id), "{pending}");
    let status = command("UALICE", &format!("status {}", request.id));
    assert!(status.contains("pending"), "{status}");
    // Decisions are buttons, not commands; strangers are told to get mapped.
    assert!(command("UBOB", &format!("approve {}", request.id)).starts_with("usage"));
    assert!(command("UNOBODY", "pending").contains("no bastion user"));
    assert_eq!(state_of(&bastion, &request.id), "pending");

    // Unsigned: 401, as for clicks.
    let body = "command=%2Faccess&text=pending&user_id=UBOB";
    let (status, _) = post(addr, "/slack/commands", &[], body);
    assert_eq!(status, 401);
}

#[test]
fn security_events_go_to_the_alerts_channel() {
    let slack = FakeSlack::start();
    let (bastion, _secrets) = bastion_with_slack(&format!(
        "api_url = \"{}\"\nalerts_channel = \"CALERTS\"\n",
        slack.api_url()
    ));
    let addr = bastion.http_addr();
    let request = request_web_1(&bastion);
    let body = click("UALICE", "approve", &request);
    let (status, _) = post(addr, "/slack/interactions", &signed(&body), &body);
    assert_eq!(status, 200);
    let (status, _) = post(addr, "/slack/interactions", &[], &body);
    assert_eq!(status, 401);

    let alerts = wait_for("two alerts", Duration::from_secs(15), || {
        let alerts: Vec<String> = slack
            .calls("chat.postMessage")
            .into_iter()
            .filter(|call| call["channel"] == "CALERTS")
            .map(|call| call["text"].as_str().unwrap_or_default().to_string())
            .collect();
        (alerts.len() >= 2).then_some(alerts)
    });
    assert!(
        alerts[0].contains("decision_refused by <@UALICE> on web-1")
            && alerts[0].contains(&request)
            && alerts[0].contains("cannot approve your own request"),
        "{alerts:?}"
    );
    assert!(alerts[1].contains("webhook.rejected"), "{alerts:?}");
}

#[test]
fn an_expiring_grant_updates_its_message() {
    let slack = FakeSlack::start();
    let (bastion, _secrets) = bastion_with_api(&slack.api_url());
    let request = request_web_1(&bastion);
    let (code, _, stderr) = bastion.ssh("bob", &["approve", &request]);
    assert_eq!(code, 0, "{stderr}");
    wait_for("the approved message", Duration::from_secs(15), || {
        slack.calls("chat.postMessage").into_iter().find(|call| {
            call["channel"] == "CAPPROVALS" && message_text(call).contains("access until")
        })
    });
    bastion.advance(Duration::from_secs(2 * 3_600));
    let expired = updated_with(&slack, "access expired", "the expired message");
    assert!(!message_text(&expired).contains("\"Revoke\""), "{expired}");
}

/// Two approvers in Slack, then the engineer's real ssh session, then a Revoke click that cuts
/// it: the whole path against a real sshd.
#[test]
fn two_slack_approvals_open_a_real_session_and_a_revoke_click_cuts_it() {
    let slack = FakeSlack::start();
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::write(secrets.path().join("signing"), SECRET).expect("write secret");
    std::fs::write(secrets.path().join("token"), "xoxb-test").expect("write token");
    let mut sshd = None;
    let bastion = Bastion::start_with(|client_key| {
        let server = support::Sshd::start_with_config(&[client_key.to_string()], "");
        let text = format!(
            "[[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"127.0.0.1:{}\"\n\
             login = \"{}\"\nhost_key = \"{}\"\nrequestable_by = [\"engineer\"]\n\
             approvers = [\"leader\"]\napprovals_required = 2\n\n\
             [slack]\nbot_token_file = \"{}\"\nsigning_secret_file = \"{}\"\n\
             channel = \"CAPPROVALS\"\napi_url = \"{}\"\n",
            server.port,
            server.user,
            server.host_key,
            secrets.path().join("token").display(),
            secrets.path().join("signing").display(),
            slack.api_url()
        );
        sshd = Some(server);
        text
    });
    let _sshd = sshd.expect("sshd started");
    let addr = bastion.http_addr();
    let request = request_web_1(&bastion);

    let body = click("UBOB", "approve", &request);
    let (_, answer) = post(addr, "/slack/interactions", &signed(&body), &body);
    assert!(answer.contains("1 of 2 approvals"), "{answer}");
    assert_eq!(state_of(&bastion, &request), "pending");
    wait_for("the message at 1 of 2", Duration::from_secs(15), || {
        let mut shown = slack.calls("chat.update");
        shown.extend(slack.calls("chat.postMessage"));
        shown
            .into_iter()
            .find(|call| message_text(call).contains("1 of 2 approvals"))
    });
    let body = click("UCAROL", "approve", &request);
    let (_, answer) = post(addr, "/slack/interactions", &signed(&body), &body);
    assert!(answer.contains("alice has web-1 until"), "{answer}");

    let (code, stdout, stderr) = bastion.ssh_with(
        &bastion.key("alice"),
        "alice+web-1",
        &["echo reached-$((40+2))"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "reached-42\n");

    let mut live = bastion
        .ssh_command(&bastion.key("alice"), "alice+web-1")
        .arg("echo running; sleep 60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ssh");
    // Revoke only once the command runs on the target.
    let mut stdout = std::io::BufReader::new(live.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("read");
    assert_eq!(first, "running\n");
    let body = click("UBOB", "revoke", &request);
    let (_, answer) = post(addr, "/slack/interactions", &signed(&body), &body);
    assert!(answer.contains("revoked"), "{answer}");
    let output = live.wait_with_output().expect("ssh ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(stderr.contains("grant revoked by bob"), "{stderr}");
}

#[test]
fn issue_17_failed_logins_alert_once_a_minute_per_address_escaped() {
    let slack = FakeSlack::start();
    let (bastion, _secrets) = bastion_with_slack(&format!(
        "api_url = \"{}\"\nalerts_channel = \"CALERTS\"\n",
        slack.api_url()
    ));
    // Names chosen to ping the channel and show a link, were they not escaped (stock ssh
    // refuses such names, so a russh client sends them).
    for name in [
        "<!channel>",
        "<https://evil.example|click>",
        "mallory",
        "mallory",
    ] {
        let refused = bastion
            .runtime
            .block_on(async { bastion.russh_client("bob", name).await.is_none() });
        assert!(refused, "{name}");
    }
    wait_for("the failures counted", Duration::from_secs(10), || {
        (bastion
            .audit_types()
            .iter()
            .filter(|kind| *kind == "auth_failed")
            .count()
            == 4)
            .then_some(())
    });
    assert!(
        slack.calls("chat.postMessage").is_empty(),
        "not one alert each"
    );
    bastion.advance(Duration::from_secs(61));
    let alert = wait_for("the folded alert", Duration::from_secs(15), || {
        slack
            .calls("chat.postMessage")
            .into_iter()
            .find(|call| call["channel"] == "CALERTS")
    });
    let text = alert["text"].as_str().unwrap();
    assert!(text.contains("4 refused logins from 127.0.0.1"), "{text}");
    assert!(text.contains("&lt;!channel&gt;"), "{text}");
    assert!(
        !text.contains("<!channel>") && !text.contains("<https://"),
        "{text}"
    );
    assert_eq!(slack.calls("chat.postMessage").len(), 1);
}
