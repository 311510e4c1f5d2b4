//! `portcullis serve`: prepares the state dir, binds the listeners, runs the expiry task, and shuts
//! everything down cleanly on SIGTERM or SIGINT.
//!
//! `Server::start` binds and spawns, then returns the bound addresses, so tests run the real server
//! in-process on `127.0.0.1:0`; `run_until_signal` is what the binary does with it.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::Access;
use crate::audit::AuditEvent;
use crate::clock::Clock;
use crate::config::Config;
use crate::keys;
use crate::ssh;
use crate::store::Store;
use crate::store::search::SearchIndex;
use crate::web;

/// The state database's file name inside the state dir.
pub const DATABASE_FILE: &str = "portcullis.db";

/// The search index's file name inside the state dir (issue #19): a file of its own, so
/// indexing and searching never hold the state database's write lock.
pub const INDEX_FILE: &str = "index.sqlite";

/// How often the server looks for kills asked from another process (issue #19: a live
/// session ends within a second of `portcullis kill`).
const KILL_POLL: Duration = Duration::from_millis(250);

/// How often the expiry task looks for requests and grants that are due.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often the retention task looks at the clock; it runs the job once a day.
const RETENTION_CHECK: Duration = Duration::from_secs(5);

/// A bastion that never ran retention runs it this long after it starts (not at once, so a
/// restart loop does not run it each time).
const RETENTION_FIRST_RUN: time::Duration = time::Duration::HOUR;

/// Opens the state dir (creating it, mode 0700) and its database; shared by `serve` and the CLI.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    let state_dir = &config.server.state_dir;
    create_private_dir(state_dir)?;
    Ok(Store::open(&state_dir.join(DATABASE_FILE))
        .context("cannot open the state database")?
        .with_notifications(config.slack.is_some())
        .with_alerts(
            config
                .slack
                .as_ref()
                .is_some_and(|slack| slack.alerts_channel.is_some()),
        ))
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// A running bastion.
pub struct Server {
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub ssh_addr: SocketAddr,
    pub postgres_addr: SocketAddr,
    pub access: Access,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Prepares state, binds every listener and starts serving.
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Server> {
        let store = open_store(&config)?;
        create_private_dir(&config.server.recordings_dir)?;
        let host_key = keys::load_or_create(
            &config.server.state_dir.join(keys::HOST_KEY_FILE),
            "portcullis host key",
        )?;
        let client_key = keys::load_or_create(
            &config.server.state_dir.join(keys::CLIENT_KEY_FILE),
            "portcullis",
        )?;
        tracing::info!(fingerprint = %keys::fingerprint(&host_key), "ssh host key");
        tracing::info!(public_key = %keys::public_line(&client_key),
            "client key (put it in the authorized_keys of targets without a credential)");

        let token_key = crate::tokens::TokenKey::load_or_create(&config.server.state_dir)?;
        let tls = crate::postgres::tls::server_config(&config)
            .context("cannot set up TLS for the postgres listener")?;

        let config = Arc::new(config);
        let index = SearchIndex::open(&config.server.state_dir.join(INDEX_FILE))
            .context("cannot open the search index")?;
        let access = Access::new(config.clone(), store, clock)
            .with_token_key(token_key)
            .with_search_index(index.clone());
        let version = env!("CARGO_PKG_VERSION").to_string();
        access.record(&AuditEvent::ServerStarted { version })?;

        let http = tokio::net::TcpListener::bind(config.server.http_listen)
            .await
            .with_context(|| format!("cannot listen on {} (http)", config.server.http_listen))?;
        let http_addr = http.local_addr()?;
        tracing::info!(address = %http_addr, "http listening");
        let metrics = tokio::net::TcpListener::bind(config.server.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (metrics)",
                    config.server.metrics_listen
                )
            })?;
        let metrics_addr = metrics.local_addr()?;
        tracing::info!(address = %metrics_addr, "metrics listening");

        let ssh = tokio::net::TcpListener::bind(config.server.ssh_listen)
            .await
            .with_context(|| format!("cannot listen on {} (ssh)", config.server.ssh_listen))?;
        let ssh_addr = ssh.local_addr()?;
        tracing::info!(address = %ssh_addr, "ssh listening");

        let postgres = tokio::net::TcpListener::bind(config.server.postgres_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (postgres)",
                    config.server.postgres_listen
                )
            })?;
        let postgres_addr = postgres.local_addr()?;
        tracing::info!(address = %postgres_addr, "postgres listening");

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut http_shutdown = shutdown_rx.clone();
        let web_access = access.clone();
        tasks.push(tokio::spawn(async move {
            let graceful = async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            };
            if let Err(error) = web::serve(http, web_access, graceful).await {
                tracing::error!(%error, "http listener failed");
            }
        }));
        let mut ssh_shutdown = shutdown_rx.clone();
        let ssh_access = access.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = ssh_shutdown.wait_for(|stop| *stop).await;
            };
            if let Err(error) = ssh::serve(ssh, ssh_access, host_key, client_key, stop).await {
                tracing::error!(%error, "ssh listener failed");
            }
        }));
        let mut postgres_shutdown = shutdown_rx.clone();
        let postgres_access = access.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = postgres_shutdown.wait_for(|stop| *stop).await;
            };
            if let Err(error) = crate::postgres::serve(postgres, postgres_access, tls, stop).await {
                tracing::error!(%error, "postgres listener failed");
            }
        }));
        tasks.push(tokio::spawn(web::slack_notify::run(
            access.clone(),
            shutdown_rx.clone(),
        )));
        tasks.extend(crate::sinks::start(&access, shutdown_rx.clone()));
        let mut metrics_shutdown = shutdown_rx.clone();
        let metrics_access = access.clone();
        tasks.push(tokio::spawn(async move {
            let graceful = async move {
                let _ = metrics_shutdown.wait_for(|stop| *stop).await;
            };
            if let Err(error) = web::metrics::serve(metrics, metrics_access, graceful).await {
                tracing::error!(%error, "metrics listener failed");
            }
        }));
        tasks.push(tokio::spawn(retention_task(
            access.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::review::indexer::run(
            access.clone(),
            index,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(kill_task(access.clone(), shutdown_rx.clone())));
        tasks.push(tokio::spawn(expiry_task(access.clone(), shutdown_rx)));
        Ok(Server {
            http_addr,
            metrics_addr,
            ssh_addr,
            postgres_addr,
            access,
            shutdown,
            tasks,
        })
    }

    /// Stops the listeners and background tasks and waits for them (bounded).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // Live sessions end first, like a revoke would end them (a final notice, recordings
        // finalized, `session.ended` with reason `shutdown`); wait for them, bounded. A session
        // opened meanwhile ends at once. Then the listeners close their connections.
        self.access.stop_sessions();
        let timeout = self.access.config().limits.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let live = || {
            self.access
                .live_sessions()
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        while live() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(live = live(), "sessions still open at shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.shutdown.send(true);
        // One deadline for all the tasks, not one each: the whole stop stays within twice the
        // timeout, which the service manager's stop timeout must exceed.
        let deadline = tokio::time::Instant::now() + timeout;
        for task in self.tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(?timeout, "a task did not stop in time");
            }
        }
        let access = self.access.clone();
        tokio::task::spawn_blocking(move || {
            // Refusals counted in the last minute are not lost with the process.
            access.flush_failures(true)?;
            access.record(&AuditEvent::ServerStopped)
        })
        .await??;
        tracing::info!("stopped");
        Ok(())
    }

    /// Serves until SIGTERM or SIGINT, then shuts down cleanly.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
        self.shutdown().await
    }
}

/// Expires due requests and grants every second and announces grants that ended elsewhere (an
/// operator's `portcullis revoke` runs in another process).
async fn expiry_task(access: Access, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since: OffsetDateTime = access.now() - Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let worker = access.clone();
        let scan_from = since;
        let result = tokio::task::spawn_blocking(move || {
            let now = worker.now();
            worker.sweep()?;
            worker.announce_ended_since(scan_from)?;
            worker.flush_failures(false)?;
            Ok::<_, crate::access::AccessError>(now)
        })
        .await;
        match result {
            // Overlap the windows by two seconds: `ended_at` has whole-second precision.
            Ok(Ok(now)) => since = now - Duration::from_secs(2),
            Ok(Err(error)) => tracing::error!(%error, "expiry task failed; retrying"),
            Err(error) => tracing::error!(%error, "expiry task panicked; retrying"),
        }
    }
}

/// Hands kills asked from another process to the live sessions they name.
async fn kill_task(access: Access, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(KILL_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let worker = access.clone();
        match tokio::task::spawn_blocking(move || worker.announce_kills()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "kill poll failed; retrying"),
            Err(error) => tracing::error!(%error, "kill poll panicked; retrying"),
        }
    }
}

/// Runs the retention job (issue #18) once a day by the bastion's clock: a day after the last
/// run, which the chain remembers across restarts, or an hour after start if there was none.
async fn retention_task(access: Access, mut shutdown: watch::Receiver<bool>) {
    let worker = access.clone();
    let last =
        tokio::task::spawn_blocking(move || crate::audit::retention::last_run(worker.store()))
            .await;
    let mut next = match last {
        Ok(Ok(Some(last))) => last + crate::audit::retention::INTERVAL,
        _ => access.now() + RETENTION_FIRST_RUN,
    };
    let mut interval = tokio::time::interval(RETENTION_CHECK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let now = access.now();
        if now < next {
            continue;
        }
        let worker = access.clone();
        let result = tokio::task::spawn_blocking(move || {
            crate::audit::retention::run(
                worker.store(),
                &worker.config().audit,
                &worker.config().server.recordings_dir,
                now,
                crate::audit::Actor::System,
                worker.search_index(),
            )
        })
        .await;
        match result {
            Ok(Ok(report)) => {
                tracing::info!(
                    removed_events = report.removed_events,
                    removed_recordings = report.removed_recordings,
                    "retention ran"
                );
                next = now + crate::audit::retention::INTERVAL;
            }
            // A failed run removed nothing (one transaction): tried again in a minute.
            Ok(Err(error)) => {
                tracing::error!(%error, "retention failed; retrying in a minute");
                next = now + time::Duration::MINUTE;
            }
            Err(error) => {
                tracing::error!(%error, "retention panicked; retrying in a minute");
                next = now + time::Duration::MINUTE;
            }
        }
    }
}
