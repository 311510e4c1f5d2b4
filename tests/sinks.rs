//! Audit sinks that speak HTTP (issue #18): the webhook sink against a real HTTP receiver on
//! loopback that checks every request's Standard Webhooks signature, fails for a while, refuses
//! for good. (The file and postgres sinks are tested in tests/postgres.rs, where database
//! sessions make statements.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::bastion::{Bastion, UNREACHED_TARGETS};
use support::wait_for;

/// The key behind `whsec_...`.
const KEY: &[u8] = b"a webhook key of 32 bytes, test!";

/// One request as the receiver saw it, with whether its signature held.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    signed: bool,
    siem_header: Option<String>,
    authorization: Option<String>,
    body: Value,
    answered: u16,
}

struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

struct Shared {
    /// Statuses to answer, in order; 200 once used up.
    script: Mutex<Vec<u16>>,
    received: Mutex<Vec<Received>>,
}

impl Receiver {
    fn start(script: Vec<u16>) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into_iter().rev().collect()),
            received: Mutex::new(Vec::new()),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver {
            addr,
            shared,
            _runtime: runtime,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let id = header("webhook-id").unwrap_or_default();
    let timestamp = header("webhook-timestamp").unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let signed = header("webhook-signature")
        .is_some_and(|signatures| signatures.split(' ').any(|one| one == expected));
    let answered = shared.script.lock().unwrap().pop().unwrap_or(200);
    shared.received.lock().unwrap().push(Received {
        id,
        signed,
        siem_header: header("x-siem"),
        authorization: header("authorization"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// A bastion with one webhook sink to `receiver`, control events only.
fn bastion_to(receiver: &Receiver) -> (Bastion, tempfile::TempDir) {
    bastion_to_as(receiver, "json")
}

fn bastion_to_as(receiver: &Receiver, format: &str) -> (Bastion, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("webhook-secret");
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    );
    std::fs::write(&secret_file, secret).unwrap();
    let token_file = secrets.path().join("siem-token");
    std::fs::write(&token_file, "Bearer siem-token-123").unwrap();
    let sink = format!(
        "[[audit.sinks]]\nname = \"siem\"\nkind = \"webhook\"\nurl = \"http://{}/hook\"\n\
         secret_file = \"{}\"\nauthorization_file = \"{}\"\nevents = [\"control\"]\n\
         format = \"{format}\"\nheaders = {{ x-siem = \"portcullis\" }}\n",
        receiver.addr,
        secret_file.display(),
        token_file.display()
    );
    let bastion = Bastion::start(&format!("{UNREACHED_TARGETS}\n{sink}"));
    (bastion, secrets)
}

/// Issue #18: batches are signed the Standard Webhooks way, carry the chain head, and a 5xx is
/// retried (same `webhook-id`) until the receiver takes it: every event arrives, in order, once
/// among the accepted batches.
#[test]
fn issue_18_a_webhook_gets_every_event_signed_and_retried_through_5xx() {
    let receiver = Receiver::start(vec![500, 503]);
    let (bastion, _secrets) = bastion_to(&receiver);
    bastion.grant("alice", "web-1", Duration::from_secs(3600));
    wait_for("the webhook to catch up", Duration::from_secs(30), || {
        (bastion.sink_status()["lag_events"] == 0).then_some(())
    });
    let received = receiver.received();
    assert!(received.len() >= 3, "{received:?}");
    assert!(
        received.iter().all(|request| request.signed),
        "{received:?}"
    );
    assert!(received.iter().all(
        |request| request.siem_header.as_deref() == Some("portcullis")
            && request.authorization.as_deref() == Some("Bearer siem-token-123")
    ));
    // The failed attempts and the one that was taken carry the same batch id.
    assert_eq!(received[0].id, received[1].id);
    assert_eq!(received[1].id, received[2].id);
    let delivered: Vec<String> = received
        .iter()
        .filter(|request| request.answered == 200)
        .flat_map(|request| {
            request.body["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|event| event["id"].as_str().unwrap().to_string())
        .collect();
    let chain: Vec<String> = bastion
        .access()
        .store()
        .read(|tx| tx.audit_tail(1000))
        .unwrap()
        .into_iter()
        .map(|record| record.id)
        .collect();
    assert_eq!(delivered, chain, "every event once, in order");
    let head = &received.last().unwrap().body["chain_head"];
    assert!(head["seq"].as_i64().unwrap() > 0, "{head}");
    assert_eq!(bastion.sink_status()["last_error"], Value::Null);
}

/// Issue #18: `format = "ocsf"`: every event arrives as an OCSF 1.3.0 event of the class the
/// mapping names, with the base attributes every class requires, and our own record (hashes
/// included) in `unmapped`, in chain order.
#[test]
fn issue_18_a_webhook_in_ocsf_gets_each_event_in_its_class() {
    let receiver = Receiver::start(Vec::new());
    let (bastion, _secrets) = bastion_to_as(&receiver, "ocsf");
    bastion.grant("alice", "web-1", Duration::from_secs(3600));
    let (code, _, stderr) = bastion.ssh("alice", &["targets"]);
    assert_eq!(code, 0, "{stderr}");
    bastion.wait_for_event("logged_in");
    wait_for("the webhook to catch up", Duration::from_secs(30), || {
        (bastion.sink_status()["lag_events"] == 0).then_some(())
    });
    let events: Vec<Value> = receiver
        .received()
        .iter()
        .flat_map(|request| {
            request.body["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let chain = bastion
        .access()
        .store()
        .read(|tx| tx.audit_tail(1000))
        .unwrap();
    assert_eq!(events.len(), chain.len());
    for (event, record) in events.iter().zip(&chain) {
        let class = event["class_uid"].as_u64().unwrap();
        let activity = event["activity_id"].as_u64().unwrap();
        assert_eq!(
            event["category_uid"].as_u64().unwrap(),
            class / 1000,
            "{event}"
        );
        assert_eq!(event["type_uid"].as_u64().unwrap(), class * 100 + activity);
        assert_eq!(
            event["time"].as_i64().unwrap(),
            record.ts.unix_timestamp() * 1000
        );
        assert!(event["severity_id"].as_u64().is_some());
        assert_eq!(event["metadata"]["version"], "1.3.0");
        assert_eq!(event["metadata"]["product"]["name"], "portcullis");
        assert_eq!(event["metadata"]["uid"], record.id.as_str());
        let ours = &event["unmapped"]["portcullis"];
        assert_eq!(ours["hash"], record.hash.as_str(), "our record rides along");
        assert_eq!(ours["type"], record.event_type.as_str());
    }
    let of = |kind: &str| {
        events
            .iter()
            .find(|event| event["unmapped"]["portcullis"]["type"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let granted = of("granted");
    assert_eq!(
        (
            granted["class_uid"].as_u64(),
            granted["activity_id"].as_u64()
        ),
        (Some(3005), Some(1))
    );
    assert_eq!(granted["user"]["name"], "alice");
    assert_eq!(granted["resources"][0]["name"], "web-1");
    assert_eq!(of("requested")["class_uid"], 6003);
    let login = of("logged_in");
    assert_eq!(login["class_uid"], 3002);
    assert_eq!(login["status_id"], 1);
    assert_eq!(login["user"]["name"], "alice");
    assert_eq!(login["src_endpoint"]["ip"], "127.0.0.1", "{login}");
}

/// Issue #18: a 4xx is not retried: the refusal is audited (`sink.refused`), the sink holds at
/// that batch and `audit sinks` says why.
#[test]
fn issue_18_a_webhook_that_refuses_a_batch_is_not_retried_and_is_audited() {
    let receiver = Receiver::start(vec![400, 400, 400]);
    let (bastion, _secrets) = bastion_to(&receiver);
    let refused = bastion.wait_for_event("sink.refused");
    assert_eq!(refused["detail"]["sink"], "siem", "{refused}");
    assert!(
        refused["detail"]["why"].as_str().unwrap().contains("400"),
        "{refused}"
    );
    let status = bastion.sink_status();
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("not retried"),
        "{status}"
    );
    assert!(status["lag_events"].as_u64() > Some(0), "{status}");
    // New events do not make it try again.
    bastion.grant("alice", "web-1", Duration::from_secs(3600));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        assert_eq!(
            receiver.received().len(),
            1,
            "a refused batch was sent again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /metrics` from the metrics listener, as text.
fn scrape(bastion: &Bastion) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(bastion.metrics_addr()).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// One sample: its name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses the Prometheus text format strictly enough to catch a malformed line: every sample's
/// family has HELP and TYPE, names and label names follow the conventions, values are numbers.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let name_ok = |name: &str| {
        name.chars().enumerate().all(|(index, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (index > 0 && c.is_ascii_digit())
        }) && !name.is_empty()
    };
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                name_ok(name) && ["counter", "gauge"].contains(&kind),
                "{line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "a counter ends in _total: {line}");
            }
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let labels = rest
                    .split("\",")
                    .map(|pair| {
                        let (label, value) = pair.split_once("=\"").unwrap();
                        assert!(name_ok(label), "{line}");
                        (label.to_string(), value.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(name_ok(&name) && name.starts_with("portcullis_"), "{line}");
        assert!(typed.contains(&name), "no TYPE before {line}");
        samples.push((name, labels, value));
    }
    samples
}

/// Issue #18: `/metrics`, on its own listener, shows a failing sink's lag, requests by state
/// and failed authentications, in the Prometheus text format.
#[test]
fn issue_18_metrics_show_sink_lag_and_errors_requests_and_failures() {
    let receiver = Receiver::start(vec![500; 1000]);
    let (bastion, _secrets) = bastion_to(&receiver);
    bastion.grant("alice", "web-1", Duration::from_secs(3600));
    // A login with a key nobody configured: a failed authentication.
    let stranger = tempfile::tempdir().unwrap();
    let _ = support::run(
        &mut bastion.ssh_command(&support::ssh_keygen(stranger.path(), "mallory").0, "alice"),
    );
    let samples = wait_for("the failures in /metrics", Duration::from_secs(30), || {
        let samples = parse_metrics(&scrape(&bastion));
        let value = |name: &str, label: Option<(&str, &str)>| {
            samples
                .iter()
                .find(|(sample, labels, _)| {
                    sample == name
                        && label.is_none_or(|(key, value)| {
                            labels.iter().any(|(k, v)| k == key && v == value)
                        })
                })
                .map(|(_, _, value)| *value)
        };
        (value("portcullis_sink_failing", Some(("sink", "siem"))) == Some(1.0)
            && value("portcullis_failed_authentications_total", None) >= Some(1.0))
        .then_some(samples)
    });
    let find = |name: &'static str| samples.iter().filter(move |(sample, _, _)| sample == name);
    assert!(find("portcullis_sink_lag_events").any(|(_, _, value)| *value > 0.0));
    assert!(
        find("portcullis_requests").any(|(_, labels, value)| labels
            .contains(&("state".into(), "approved".into()))
            && *value >= 1.0),
        "{samples:?}"
    );
}
