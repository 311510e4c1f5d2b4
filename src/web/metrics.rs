//! `GET /metrics` in the Prometheus text format (issue #18), on a listener of its own
//! (`[server] metrics_listen`, loopback by default) so it is never exposed where Slack reaches
//! the bastion. Counts come from the store at each scrape: sink lag and errors, live sessions by
//! protocol, requests by state, failed authentications and recording failures.

use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::access::Access;

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    access: Access,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .with_state(access);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(access): State<Access>) -> impl IntoResponse {
    let rendered = tokio::task::spawn_blocking(move || render(&access)).await;
    match rendered {
        Ok(Some(text)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the store cannot be read\n",
        )
            .into_response(),
    }
}

/// The exposition text, or `None` when the store cannot be read.
fn render(access: &Access) -> Option<String> {
    let now = access.now();
    let (counts, sinks) = access
        .store()
        .read(|tx| {
            let mut sinks = Vec::new();
            for sink in &access.config().audit.sinks {
                let lag = tx.sink_lag(&sink.name)?;
                let age = lag
                    .oldest
                    .map_or(0, |oldest| (now - oldest).whole_seconds().max(0));
                let failing = lag.cursor.last_error.is_some();
                sinks.push((sink.name.clone(), lag.events, age, failing));
            }
            Ok((tx.metrics()?, sinks))
        })
        .ok()?;
    let mut text = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(text, "{name}{labels} {value}");
        }
    };
    let labelled = |label: &str, pairs: &[(String, u64)]| -> Vec<(String, u64)> {
        pairs
            .iter()
            .map(|(value, count)| (format!("{{{label}=\"{}\"}}", escape(value)), *count))
            .collect()
    };
    family(
        "portcullis_sessions_live",
        "gauge",
        "Target sessions not ended, by protocol.",
        &labelled("protocol", &counts.live_sessions),
    );
    family(
        "portcullis_requests",
        "gauge",
        "Access requests, by state.",
        &labelled("state", &counts.requests),
    );
    family(
        "portcullis_failed_authentications_total",
        "counter",
        "Failed logins, every front end.",
        &[(String::new(), counts.failed_authentications)],
    );
    family(
        "portcullis_recording_failures_total",
        "counter",
        "Recordings and query logs that could not be written.",
        &[(String::new(), counts.recording_failures)],
    );
    let per_sink = |pick: fn(&(String, u64, i64, bool)) -> u64| -> Vec<(String, u64)> {
        sinks
            .iter()
            .map(|sink| (format!("{{sink=\"{}\"}}", escape(&sink.0)), pick(sink)))
            .collect()
    };
    family(
        "portcullis_sink_lag_events",
        "gauge",
        "Audit records a sink does not hold yet.",
        &per_sink(|sink| sink.1),
    );
    family(
        "portcullis_sink_lag_seconds",
        "gauge",
        "Age of the oldest audit record a sink does not hold yet.",
        &per_sink(|sink| sink.2 as u64),
    );
    family(
        "portcullis_sink_failing",
        "gauge",
        "1 while a sink's last delivery failed.",
        &per_sink(|sink| u64::from(sink.3)),
    );
    Some(text)
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
