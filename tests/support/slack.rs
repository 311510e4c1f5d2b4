//! A loopback stand-in for the Slack Web API (issue #5): it answers like Slack (`ok`, `channel`,
//! `ts`, `message`; a 500 when down; a 429 with `Retry-After` when rate-limited) and records
//! every call it answered with `ok: true`, and every attempt.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Every call is a 500.
    Down,
    /// The next call is a 429 with `Retry-After: 1`, then up.
    RateLimitedOnce,
}

#[derive(Default)]
struct Recorded {
    /// (method, JSON body) of calls answered ok.
    calls: Vec<(String, Value)>,
    attempts: usize,
    authorizations: Vec<String>,
}

struct Shared {
    mode: Mutex<Mode>,
    recorded: Mutex<Recorded>,
}

pub struct FakeSlack {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeSlack {
    /// The `ts` of every message it posts.
    pub const TS: &'static str = "1700000000.000100";

    pub fn start() -> FakeSlack {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Up),
            recorded: Mutex::new(Recorded::default()),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new()
            .route("/api/{method}", axum::routing::post(answer))
            .with_state(shared.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeSlack {
            addr,
            shared,
            _runtime: runtime,
        }
    }

    /// The `api_url` for the bastion's `[slack]`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
    }

    /// The bodies of the successful calls to `method`, in order.
    pub fn calls(&self, method: &str) -> Vec<Value> {
        self.shared
            .recorded
            .lock()
            .expect("recorded")
            .calls
            .iter()
            .filter(|(name, _)| name == method)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Every request it received, answered ok or not.
    pub fn attempts(&self) -> usize {
        self.shared.recorded.lock().expect("recorded").attempts
    }

    /// Whether every call carried `Authorization: Bearer token`.
    pub fn authorized_with(&self, token: &str) -> bool {
        let recorded = self.shared.recorded.lock().expect("recorded");
        !recorded.authorizations.is_empty()
            && recorded
                .authorizations
                .iter()
                .all(|header| header == &format!("Bearer {token}"))
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = {
        let mut mode = shared.mode.lock().expect("mode");
        let now = *mode;
        if now == Mode::RateLimitedOnce {
            *mode = Mode::Up;
        }
        now
    };
    let mut recorded = shared.recorded.lock().expect("recorded");
    recorded.attempts += 1;
    if let Some(authorization) = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
    {
        recorded.authorizations.push(authorization.to_string());
    }
    match mode {
        Mode::Down => return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        Mode::RateLimitedOnce => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                axum::Json(json!({ "ok": false, "error": "ratelimited" })),
            )
                .into_response();
        }
        Mode::Up => {}
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let channel = body["channel"].clone();
    let view = body["view"].clone();
    let opened = method == "views.open";
    recorded.calls.push((method, body));
    if opened {
        let mut view = view;
        view["id"] = json!("V1");
        view["team_id"] = json!("T1");
        view["hash"] = json!("h1");
        return axum::Json(json!({ "ok": true, "view": view })).into_response();
    }
    axum::Json(json!({
        "ok": true,
        "channel": channel,
        "ts": FakeSlack::TS,
        "message": { "ts": FakeSlack::TS, "text": "ok" },
    }))
    .into_response()
}
