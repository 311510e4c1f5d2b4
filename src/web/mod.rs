//! The HTTP listener: the only module that knows HTTP.
//!
//! It serves `GET /healthz` and, when `[slack]` is configured, `POST /slack/interactions`
//! (`slack.rs`); the review pages come in a later issue and are routed here.

pub mod metrics;
pub mod slack;
pub mod slack_notify;
pub mod webhook_sink;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::access::Access;

/// Serves HTTP on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    access: Access,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(access))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The router for the HTTP listener.
pub fn router(access: Access) -> Router {
    let health = Router::new()
        .route("/healthz", get(healthz))
        .with_state(access.clone());
    match slack::Slack::new(access) {
        Some(state) => health.merge(
            Router::new()
                .route("/slack/interactions", post(slack::interactions))
                .route("/slack/commands", post(slack::commands))
                // Past this, 413 before any verification work.
                .layer(DefaultBodyLimit::max(slack::MAX_BODY))
                .with_state(state),
        ),
        None => health,
    }
}

/// 200 when the state database answers, 503 otherwise, so a load balancer stops sending engineers
/// to a bastion that could not check a grant.
async fn healthz(State(access): State<Access>) -> (StatusCode, Json<Value>) {
    let store = access.store().clone();
    let ping = tokio::task::spawn_blocking(move || store.ping()).await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Ok(Err(error)) => {
            tracing::error!(%error, "health check: state database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "error": "state database unavailable" })),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable" })),
        ),
    }
}
