//! The PostgreSQL front end (issue #4): a wire-protocol proxy that speaks to `psql` and any
//! libpq/JDBC client, checks the engineer's grant-bound token, and relays to the target over the
//! bastion's own authenticated connection, recording every statement.
//!
//! A connection moves through typed stages: `startup` (TLS, cancel, startup packet) →
//! `authenticate` (token, grant, session) → `open_upstream` (credential injected) → `relay`.
//! Only a `Ready` value can relay, and it exists only after all checks passed. Every refusal is
//! an ErrorResponse with the SQLSTATE outside tools rely on, audited, and the connection closed.
//! `access/`, `session/` and `recording/` do the protocol-blind work; this module only maps the
//! wire to them.

pub mod codec;
mod observe;
mod scram;
mod startup;
pub mod tls;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::access::Access;
use crate::access::lockout::ConnectionRefusal;
use crate::access::lockout::Failure;
use crate::config::TargetKind;
use crate::recording::FLUSH_INTERVAL;
use crate::recording::querylog::{QueryLog, Statement, StatementDetail, StatementProtocol};
use crate::session::admit::{self, LoginRefusal, Proof, Protocol, Refused};
use crate::session::queries::{QueryRecording, QueryWriter};
use crate::session::{EndReason, Notice, Session, SessionRefusal};
use codec::{CodecError, MAX_MESSAGE, MAX_STARTUP, Startup, backend};
use observe::Tracker;
use upstream::Stream;

/// Live sessions' cancel keys: (upstream pid, proxy secret) → where to send the cancel.
type Cancels = Arc<Mutex<HashMap<(i32, i32), CancelTarget>>>;

#[derive(Debug, Clone)]
struct CancelTarget {
    address: String,
    pid: i32,
    secret: i32,
}

/// Accepts PostgreSQL clients until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    access: Access,
    tls: Arc<rustls::ServerConfig>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let cancels = Cancels::default();
    let writer = QueryWriter::start()?;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "postgres accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !crate::session::admit::accepted(
            &access,
            peer.ip(),
            crate::session::admit::Protocol::Postgres,
        ) {
            // Issue #17: `[access] ip_allow` is checked before anything is read.
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let (access, acceptor, cancels, writer) = (
            access.clone(),
            acceptor.clone(),
            cancels.clone(),
            writer.clone(),
        );
        tokio::spawn(async move {
            let deadline = access.config().limits.handshake_timeout;
            let client = Client {
                access,
                source: peer.ip().to_string(),
                peer,
                cancels,
                writer,
            };
            // Issue #17: the handshake deadline covers only what the client controls before it
            // is authenticated; the upstream login has its own (`upstream_connect_timeout`), so
            // a slow target still ends the session it opened, audited.
            if let Some(authenticated) = client.admit(Box::new(tcp), &acceptor, deadline).await
                && let Some(ready) = client.open_upstream(authenticated).await
            {
                client.relay(ready).await;
            }
        });
    }
}

/// One client connection's context.
struct Client {
    access: Access,
    source: String,
    peer: SocketAddr,
    cancels: Cancels,
    writer: QueryWriter,
}

/// A client stream and what was read past the last message.
struct Wire {
    stream: Box<dyn Stream>,
    buffer: BytesMut,
}

/// The startup packet was read; nobody is authenticated yet.
struct Started {
    wire: Wire,
    parameters: Vec<(String, String)>,
    tls: bool,
}

/// The client said who it is, which target, and presented its token; nothing is checked yet.
struct Presented {
    wire: Wire,
    parameters: Vec<(String, String)>,
    user: String,
    target_name: String,
    token: String,
    /// The command that gets a token, for the refusal.
    token_hint: String,
}

/// Authenticated, with an open session on the target's grant.
struct Authenticated {
    wire: Wire,
    session: Session,
    parameters: Vec<(String, String)>,
}

/// Relaying: client and upstream connected, the query log open, the cancel key registered.
struct Ready {
    wire: Wire,
    session: Session,
    /// The startup parameters sent to the target, for the query log's first record.
    forwarded: Vec<(String, String)>,
    upstream: upstream::Upstream,
    log: QueryLog,
    cancel_key: (i32, i32),
    cancel: CancelTarget,
}

impl Client {
    /// TLS, the startup packet and the token within `deadline` (what a client controls before
    /// it is authenticated), then the checks, which the deadline does not cut: a session they
    /// open is always ended and audited.
    async fn admit(
        &self,
        stream: Box<dyn Stream>,
        acceptor: &TlsAcceptor,
        deadline: Duration,
    ) -> Option<Authenticated> {
        let presented = tokio::time::timeout(deadline, async {
            let started = self.startup(stream, acceptor).await?;
            self.present(started).await
        })
        .await;
        match presented {
            Ok(Some(presented)) => self.authenticate(presented).await,
            Ok(None) => None,
            Err(_) => {
                tracing::info!(peer = %self.peer, "postgres startup timed out");
                None
            }
        }
    }

    /// TLS, GSS refusal, cancel requests, and the startup packet.
    async fn startup(&self, stream: Box<dyn Stream>, acceptor: &TlsAcceptor) -> Option<Started> {
        let mut wire = Wire {
            stream,
            buffer: BytesMut::with_capacity(1024),
        };
        let mut tls = false;
        loop {
            let packet = match read_startup(&mut wire).await {
                Ok(packet) => packet,
                Err(Some(error)) => {
                    let message = format!("invalid startup packet: {error}");
                    refuse(&mut wire, "08P01", &message).await;
                    return None;
                }
                Err(None) => return None,
            };
            match packet {
                Startup::Ssl if !tls => {
                    // Bytes sent after SSLRequest but before the handshake would be read as if
                    // they came over TLS: refuse them.
                    if !wire.buffer.is_empty() {
                        return None;
                    }
                    wire.stream.write_all(b"S").await.ok()?;
                    let secured = acceptor.accept(wire.stream).await.ok()?;
                    wire = Wire {
                        stream: Box::new(secured),
                        buffer: BytesMut::with_capacity(1024),
                    };
                    tls = true;
                }
                Startup::Gss if !tls => wire.stream.write_all(b"N").await.ok()?,
                Startup::Ssl | Startup::Gss => return None,
                Startup::Cancel { pid, secret } => {
                    self.cancel(pid, secret).await;
                    return None;
                }
                Startup::Startup { parameters } => {
                    return Some(Started {
                        wire,
                        parameters,
                        tls,
                    });
                }
            }
        }
    }

    /// A CancelRequest on its own connection: forwarded only for a key this bastion issued.
    async fn cancel(&self, pid: i32, secret: i32) {
        let target = self
            .cancels
            .lock()
            .ok()
            .and_then(|cancels| cancels.get(&(pid, secret)).cloned());
        match target {
            Some(target) => upstream::cancel(&target.address, target.pid, target.secret).await,
            None => {
                // Issue #17: guessing keys is audited (folded per address and minute) and slowed.
                let (access, source) = (self.access.clone(), admit::source_key(self.peer.ip()));
                let counted = tokio::task::spawn_blocking(move || {
                    access.connection_refused(
                        &source,
                        "postgres",
                        ConnectionRefusal::UnknownCancelKey,
                    )
                })
                .await;
                match counted {
                    Ok(Ok(delay)) => tokio::time::sleep(delay).await,
                    _ => tracing::error!("cannot audit a refused cancel request"),
                }
            }
        }
    }

    /// Who the client says it is, which target, and its token: everything read from the client
    /// before the bastion checks anything.
    async fn present(&self, started: Started) -> Option<Presented> {
        let Started {
            mut wire,
            parameters,
            tls,
        } = started;
        let parameter = |name: &str| {
            parameters
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let Some(user) = parameter("user") else {
            refuse(&mut wire, "08P01", "the startup packet names no user").await;
            return None;
        };
        let target_name = parameter("database").unwrap_or_else(|| user.clone());
        let config = self.access.config();
        let token_hint = format!(
            "ssh -p {} {user}@{} token {target_name}",
            config.server.ssh_listen.port(),
            config.server.public_host()
        );
        if !tls && !config.server.postgres_allow_plaintext {
            self.failed(&user, "plaintext startup refused").await;
            let message = "this bastion requires TLS: connect with sslmode=require \
                           (or sslmode=verify-full with the CA from portcullis tls-ca)";
            refuse(&mut wire, "28000", message).await;
            return None;
        }
        match config.target(&target_name).map(|target| &target.kind) {
            Some(TargetKind::Postgres(_)) => {}
            Some(_) => {
                self.failed(&user, "not a database target").await;
                let message = format!("{target_name} is not a database target");
                refuse(&mut wire, "3D000", &message).await;
                return None;
            }
            None => {
                self.failed(&user, "unknown database target").await;
                let message = format!("unknown target {target_name:?}");
                refuse(&mut wire, "3D000", &message).await;
                return None;
            }
        }
        if wire
            .stream
            .write_all(&backend::authentication_cleartext())
            .await
            .is_err()
        {
            return None;
        }
        let token = match read_message(&mut wire, MAX_STARTUP).await {
            Ok(message) if message.tag == b'p' => codec::password(&message.body).ok()?,
            Ok(_) => {
                refuse(&mut wire, "08P01", "expected a password message").await;
                return None;
            }
            Err(_) => return None,
        };
        Some(Presented {
            wire,
            parameters,
            user,
            target_name,
            token,
            token_hint,
        })
    }

    /// The token, the admission gate, the grant and the session: the security sequence, run
    /// once the client has said everything (no client stall can interrupt it).
    async fn authenticate(&self, presented: Presented) -> Option<Authenticated> {
        let Presented {
            mut wire,
            parameters,
            user,
            target_name,
            token,
            token_hint,
        } = presented;
        let config = self.access.config();
        let checked = {
            let (access, user, target, source, parameters) = (
                self.access.clone(),
                user.clone(),
                target_name.clone(),
                self.peer.ip(),
                parameters.clone(),
            );
            tokio::task::spawn_blocking(move || {
                check_token(&access, &user, &target, &token, source, &parameters)
            })
            .await
        };
        match checked {
            Ok(Ok(session)) => Some(Authenticated {
                wire,
                session,
                parameters,
            }),
            Ok(Err(refusal)) => {
                let (code, message) = match refusal {
                    TokenRefusal::Login(Refused { refusal, delay }) => {
                        // Repeated failures from one address are answered later and later.
                        tokio::time::sleep(delay).await;
                        match refusal {
                            LoginRefusal::UnknownUser(_) | LoginRefusal::BadProof(_) => (
                                "28P01",
                                format!(
                                    "invalid or expired access token; get one with: {token_hint}"
                                ),
                            ),
                            LoginRefusal::Bastion => ("58000", refusal.to_string()),
                            other => ("28000", other.to_string()),
                        }
                    }
                    TokenRefusal::NoGrant(why) => {
                        self.audit_refused(&user, &target_name, &why).await;
                        let hint = crate::commands::request_hint(
                            &self.access,
                            &user,
                            &target_name,
                            config.server.ssh_listen.port(),
                        );
                        ("28000", format!("{why}; request access with: {hint}"))
                    }
                    TokenRefusal::Startup(refusal) => {
                        let why = refusal.to_string();
                        self.audit_refused(&user, &target_name, &why).await;
                        ("42501", why)
                    }
                    TokenRefusal::Bastion => (
                        "58000",
                        "the bastion failed to check the token; nothing was opened".to_string(),
                    ),
                };
                refuse(&mut wire, code, &message).await;
                None
            }
            Err(_) => {
                refuse(&mut wire, "58000", "the bastion failed to check the token").await;
                None
            }
        }
    }

    /// Audits a refusal before any credential was checked (plaintext, unknown target) as a
    /// failed login from this address, and waits as long as the gate says.
    async fn failed(&self, user: &str, why: &str) {
        let (access, user, source, why) = (
            self.access.clone(),
            user.to_string(),
            self.source.clone(),
            why.to_string(),
        );
        let counted = tokio::task::spawn_blocking(move || {
            access.login_failed(&user, &source, "postgres", &why, Failure::Other)
        })
        .await;
        match counted {
            Ok(Ok(delay)) => tokio::time::sleep(delay).await,
            _ => tracing::error!("cannot audit a failed postgres authentication"),
        }
    }

    /// Audits a session refused after the login (no grant, a refused startup parameter).
    async fn audit_refused(&self, user: &str, target: &str, why: &str) {
        admit::session_refused(&self.access, user, target, &self.source, why).await;
    }

    /// Connects upstream with the injected credential and hands the client its session start.
    async fn open_upstream(&self, authenticated: Authenticated) -> Option<Ready> {
        let Authenticated {
            mut wire,
            session,
            parameters,
        } = authenticated;
        let TargetKind::Postgres(target) = &session.target().kind else {
            return None;
        };
        let target = target.clone();
        let forwarded = forwarded_parameters(&parameters, session.id());
        let deadline = self.access.config().limits.upstream_connect_timeout;
        let upstream = match upstream::connect(&target, &forwarded, deadline).await {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::warn!(target = %session.target().name, %error, "cannot open the database session");
                let why = format!(
                    "target {} refused the bastion: {error}",
                    session.target().name
                );
                self.audit_refused(session.user(), &session.target().name, &why)
                    .await;
                end_session(&session, EndReason::TargetUnreachable).await;
                refuse(&mut wire, "08001", &why).await;
                return None;
            }
        };
        let opening = session.clone();
        let log = match tokio::task::spawn_blocking(move || opening.start_query_log()).await {
            Ok(Ok(log)) => log,
            Ok(Err(error)) => {
                // Fail closed: a database session that cannot be recorded does not run. The
                // `continue` policy is not offered here: the query log is the session record.
                let _ = session.recording_failed(&error);
                end_session(&session, EndReason::RecordingFailed).await;
                let message =
                    "this session cannot be recorded, so it cannot run; tell the bastion operators";
                refuse(&mut wire, "58030", message).await;
                return None;
            }
            Err(_) => return None,
        };
        let proxy_secret = loop {
            let secret = rand::random::<i32>();
            let Ok(cancels) = self.cancels.lock() else {
                // A poisoned map would make this loop forever; end the session instead.
                end_session(&session, EndReason::BastionError).await;
                refuse(&mut wire, "58000", "the bastion failed to open the session").await;
                return None;
            };
            if !cancels.contains_key(&(upstream.pid, secret)) {
                break secret;
            }
        };
        let cancel = CancelTarget {
            address: target.address.clone(),
            pid: upstream.pid,
            secret: upstream.secret,
        };
        let cancel_key = (upstream.pid, proxy_secret);
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.insert(cancel_key, cancel.clone());
        }
        let mut hello = BytesMut::new();
        hello.put_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        hello.put_slice(&upstream.parameters);
        hello.put_slice(&backend::backend_key_data(upstream.pid, proxy_secret));
        hello.put_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        if wire.stream.write_all(&hello).await.is_err() {
            self.forget(cancel_key);
            end_session(&session, EndReason::Closed).await;
            return None;
        }
        Some(Ready {
            wire,
            session,
            forwarded,
            upstream,
            log,
            cancel_key,
            cancel,
        })
    }

    fn forget(&self, key: (i32, i32)) {
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.remove(&key);
        }
    }

    /// Relays until either side closes or the grant ends, then finalizes the session.
    async fn relay(&self, ready: Ready) {
        let Ready {
            wire,
            session,
            forwarded,
            upstream,
            log,
            cancel_key,
            cancel,
        } = ready;
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let recording = Arc::new(self.writer.recording(session.clone(), log));
        // Issue #17: what the client changed in the target session is the log's first record.
        let unrecorded: Arc<Mutex<Vec<Statement>>> = Arc::new(Mutex::new(vec![Statement {
            protocol: StatementProtocol::Startup,
            started: Some(std::time::Instant::now()),
            finished: Some(std::time::Instant::now()),
            detail: Some(Box::new(StatementDetail::Startup {
                parameters: forwarded,
            })),
            ..Statement::default()
        }]));
        let (client_read, client_write) = tokio::io::split(wire.stream);
        let (upstream_read, upstream_write) = tokio::io::split(upstream.stream);
        let (control, controls) = mpsc::channel(4);
        let ticking = Arc::new(AtomicBool::new(false));
        // Both directions run in this one task, polled together: no wake-ups across threads
        // between them (measured: context switches were the relay's largest cost), and neither
        // can block the other, since a pending write leaves the other direction polled.
        let up = client_to_upstream(
            client_read,
            wire.buffer,
            upstream_write,
            tracker.clone(),
            session.clone(),
        );
        let down = upstream_to_client(
            upstream_read,
            upstream.buffer,
            client_write,
            controls,
            Recording {
                session: session.clone(),
                tracker: tracker.clone(),
                recording: recording.clone(),
                unrecorded: unrecorded.clone(),
                ticking: ticking.clone(),
            },
        );
        tokio::pin!(up, down);
        let mut notices = watch_grant(&session);
        let reason = loop {
            // `biased`: polled in this order, without drawing a random one at every packet.
            // Neither direction ends but with the session, so neither starves the other.
            tokio::select! {
                biased;
                watched = notices.recv() => match watched.unwrap_or_else(|| Watched::Notice(watch_lost(&session))) {
                    Watched::Tick => {
                        // At most one queued (a client that stops reading leaves them queued),
                        // so a Warn or End always finds room.
                        if !ticking.swap(true, Ordering::AcqRel) {
                            let _ = control.try_send(Control::Tick);
                        }
                    }
                    Watched::Notice(Notice::Warning(warning)) => {
                        // Never wait here: the directions are not polled meanwhile.
                        let _ = control.try_send(Control::Warn(warning.seconds_text()));
                    }
                    Watched::Notice(Notice::Message(text)) => {
                        let _ = control.try_send(Control::Warn(text));
                    }
                    Watched::Notice(Notice::Ended { message, reason }) => {
                        // Tell the client why first (so the FATAL is what it sees, not the
                        // cancel's error), then stop what runs upstream and close both sides.
                        let _ = control.try_send(Control::End(message));
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut down).await;
                        upstream::cancel(&cancel.address, cancel.pid, cancel.secret).await;
                        break reason;
                    }
                },
                tracked = &mut up => match tracked {
                    Ok(()) => break EndReason::Closed,
                    Err(limit) => {
                        // Fail closed (issue #17): a message past the tracking limits is not
                        // forwarded, so nothing runs that the log would show as unknown.
                        let _ = control
                            .try_send(Control::Refuse(limit.sqlstate(), limit.to_string()));
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut down).await;
                        upstream::cancel(&cancel.address, cancel.pid, cancel.secret).await;
                        break if limit.is_limit() {
                            EndReason::TrackingLimit
                        } else {
                            EndReason::Untracked
                        };
                    }
                },
                ended = &mut down => match ended {
                    Ok(()) => break EndReason::Closed,
                    Err(reason) => {
                        // A statement may still run upstream: it must not finish unrecorded.
                        upstream::cancel(&cancel.address, cancel.pid, cancel.secret).await;
                        break reason;
                    }
                },
            }
        };
        self.forget(cancel_key);
        let unfinished = tracker
            .lock()
            .map(|mut tracker| tracker.unfinished())
            .unwrap_or_default();
        let mut rest = unrecorded
            .lock()
            .map(|mut batch| std::mem::take(&mut *batch))
            .unwrap_or_default();
        rest.extend(unfinished);
        recording.hand_over(rest).await;
        let log = recording.finish().await;
        let finishing = session.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(log) = log
                && let Err(error) = finishing.finish_query_log(log)
            {
                finishing.recording_failed(&error);
            }
            finishing.end(reason);
        })
        .await;
    }
}

/// What the watch task hands the relay.
enum Watched {
    Notice(Notice),
    /// Every `FLUSH_INTERVAL`.
    Tick,
}

/// Runs the session's grant watch and its once-a-second tick on a task of their own and hands
/// what they see over a channel. The relay task wakes for every packet and polls all its
/// branches each time; the watch (a broadcast, a watch channel and a timer) cost 3% of the
/// relay's user time there under `pgbench -S`, and a timer of its own 4% of its instructions;
/// a channel costs next to nothing. The task ends when the receiver is dropped.
fn watch_grant(session: &Session) -> mpsc::Receiver<Watched> {
    let (notify, notices) = mpsc::channel(2);
    let mut watch = session.watch();
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + FLUSH_INTERVAL, FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        loop {
            let notice = tokio::select! {
                notice = watch.next() => notice,
                _ = tick.tick() => {
                    // Never behind a notice: a full channel drops the tick.
                    let _ = notify.try_send(Watched::Tick);
                    continue;
                }
                () = notify.closed() => return,
            };
            let ended = matches!(notice, Notice::Ended { .. });
            if notify.send(Watched::Notice(notice)).await.is_err() || ended {
                return;
            }
        }
    });
    notices
}

/// The watch's task ended without saying the grant ended (it cannot, short of a panic): the
/// session can no longer be time-boxed, so it ends (fail closed).
fn watch_lost(session: &Session) -> Notice {
    tracing::error!(session = %session.id(), "the grant watch stopped; ending the session");
    Notice::Ended {
        message: format!(
            "access to {} ended: the bastion cannot check the grant",
            session.target().name
        ),
        reason: EndReason::BastionError,
    }
}

/// Why a token did not open a session.
enum TokenRefusal {
    /// The admission gate refused the login (bad token, address, lock): 28P01 or 28000.
    Login(Refused),
    /// A valid login whose grant is not active, or a token for another target: 28000.
    NoGrant(String),
    /// A startup parameter that changes identity or auditing: 42501.
    Startup(startup::StartupRefusal),
    Bastion,
}

/// Checks the token (the credential), runs the admission gate, then the target, the live grant
/// and the startup parameters, and opens the session. Runs on a blocking thread.
fn check_token(
    access: &Access,
    user: &str,
    target: &str,
    token: &str,
    source: std::net::IpAddr,
    parameters: &[(String, String)],
) -> Result<Session, TokenRefusal> {
    let key = access.token_key().ok_or(TokenRefusal::Bastion)?;
    let claims = key.verify_signature(token);
    let proof = match &claims {
        Err(_) => Proof::Invalid("invalid token"),
        Ok(claims) if claims.sub != user => Proof::Invalid("token of another user"),
        Ok(_) => Proof::Valid,
    };
    admit::login(
        access,
        user,
        source,
        Protocol::Postgres,
        proof,
        Some(target),
    )
    .map_err(TokenRefusal::Login)?;
    let claims = claims.map_err(|_| TokenRefusal::Bastion)?;
    if claims.exp <= access.now().unix_timestamp() {
        return Err(TokenRefusal::NoGrant(format!(
            "this token expired with its grant ({})",
            claims.grant
        )));
    }
    if claims.target != target {
        return Err(TokenRefusal::NoGrant(format!(
            "this token is for {}, not {target}",
            claims.target
        )));
    }
    let active = access
        .active_grant(user, target)
        .map_err(|_| TokenRefusal::Bastion)?;
    if active.as_ref().map(|grant| grant.id.as_str()) != Some(claims.grant.as_str()) {
        return Err(TokenRefusal::NoGrant(format!(
            "the grant of this token ({}) is no longer active",
            claims.grant
        )));
    }
    let allowed = match access.config().target(target).map(|target| &target.kind) {
        Some(TargetKind::Postgres(postgres)) => postgres.allowed_startup_parameters.as_slice(),
        _ => &[],
    };
    startup::check(parameters, allowed).map_err(TokenRefusal::Startup)?;
    let asked = client_parameters(parameters).cloned().collect();
    match Session::open(access, user, target, "postgres", &source.to_string(), asked) {
        Ok(session) => Ok(session),
        Err(SessionRefusal::NoGrant { target }) => Err(TokenRefusal::NoGrant(format!(
            "no active grant for {target}"
        ))),
        Err(_) => Err(TokenRefusal::Bastion),
    }
}

/// The startup parameters that change the target session: all but who and where (`user`,
/// `database`) and `replication`, which the bastion never forwards.
fn client_parameters(parameters: &[(String, String)]) -> impl Iterator<Item = &(String, String)> {
    parameters
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "user" | "database" | "replication"))
}

/// The client's startup parameters for the target, without identity, and with the session id
/// added to `application_name` so DBAs see it in pg_stat_activity.
fn forwarded_parameters(
    parameters: &[(String, String)],
    session_id: &str,
) -> Vec<(String, String)> {
    let mut forwarded: Vec<(String, String)> = client_parameters(parameters)
        .filter(|(name, _)| name != "application_name")
        .cloned()
        .collect();
    let application = parameters
        .iter()
        .find(|(name, _)| name == "application_name")
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty());
    let named = match application {
        Some(name) => format!("{name} (portcullis {session_id})"),
        None => format!("portcullis {session_id}"),
    };
    forwarded.push(("application_name".to_string(), named));
    forwarded
}

/// What the server-to-client task records with: statements finish on the server's answers.
struct Recording {
    session: Session,
    tracker: Arc<Mutex<Tracker>>,
    recording: Arc<QueryRecording>,
    /// Finished statements not yet handed to the query writer (handed over each second, or
    /// sooner once `HAND_OVER` are waiting).
    unrecorded: Arc<Mutex<Vec<Statement>>>,
    /// Set while a `Control::Tick` is queued.
    ticking: Arc<AtomicBool>,
}

/// Finished statements handed to the query writer without waiting for the next second.
const HAND_OVER: usize = 4096;

/// What the session supervisor tells the client-facing task.
enum Control {
    Warn(String),
    End(String),
    /// A client message passed a tracking limit (54000) or cannot be followed (08P01): end the
    /// session with this error.
    Refuse(&'static str, String),
    /// A second passed: hand the finished statements to the query writer, and end the session
    /// if its recording failed.
    Tick,
}

/// Reads the client and forwards whole messages upstream after the tracker saw them. Ends with
/// the limit a message would have passed (that message is not forwarded; the relay tells the
/// client and ends the session), or `Ok` when either side closed.
async fn client_to_upstream(
    mut client: tokio::io::ReadHalf<Box<dyn Stream>>,
    mut buffer: BytesMut,
    mut upstream: tokio::io::WriteHalf<Box<dyn Stream>>,
    tracker: Arc<Mutex<Tracker>>,
    session: Session,
) -> Result<(), observe::Limit> {
    loop {
        // Whole messages go on as they came, read in place: nothing is copied or allocated per
        // message (what the tracker keeps aside).
        let Ok(whole) = codec::whole_messages(&buffer, MAX_MESSAGE) else {
            return Ok(());
        };
        if whole > 0 {
            let (passed, refused) = match tracker.lock() {
                Ok(mut tracker) => track_client(&mut tracker, &buffer[..whole]),
                Err(_) => (0, Some(observe::Limit::Held)),
            };
            session.count_in(passed);
            if upstream.write_all(&buffer[..passed]).await.is_err() {
                return Ok(());
            }
            if let Some(limit) = refused {
                return Err(limit);
            }
            buffer.advance(whole);
        }
        match client.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// Feeds whole client messages to the tracker: how many bytes may go on, and the limit the
/// next message would pass, if one would.
fn track_client(tracker: &mut Tracker, messages: &[u8]) -> (usize, Option<observe::Limit>) {
    let mut passed = 0;
    for message in codec::frames(messages) {
        if let Err(limit) = tracker.client_sent(&message) {
            return (passed, Some(limit));
        }
        passed += 5 + message.body.len();
    }
    (passed, None)
}

async fn upstream_to_client(
    mut upstream: tokio::io::ReadHalf<Box<dyn Stream>>,
    mut buffer: BytesMut,
    mut client: tokio::io::WriteHalf<Box<dyn Stream>>,
    mut controls: mpsc::Receiver<Control>,
    recording: Recording,
) -> Result<(), EndReason> {
    let Recording {
        session,
        tracker,
        recording,
        unrecorded,
        ticking,
    } = recording;
    loop {
        let Ok(whole) = codec::whole_messages(&buffer, MAX_MESSAGE) else {
            return Err(EndReason::TargetProtocolError);
        };
        // Only tracking here, before the answer goes on: the query writer serializes, hashes,
        // writes and audits off this path (`session::queries`).
        let (full, lost) = match (tracker.lock(), unrecorded.lock()) {
            (Ok(mut tracker), Ok(mut batch)) => {
                for message in codec::frames(&buffer[..whole]) {
                    tracker.server_sent(&message, &mut batch);
                }
                (
                    (batch.len() >= HAND_OVER).then(|| take_batch(&mut batch)),
                    tracker.lost(),
                )
            }
            _ => return Err(EndReason::RecordingFailed),
        };
        if let Some(why) = lost {
            // Fail closed (issue #17): the log could no longer say which SQL these answers are
            // for, so they are not forwarded and the session ends.
            tracing::warn!(session = %session.id(), why, "postgres statement tracking lost");
            let message = "the bastion lost track of this session's statements, so it was ended";
            let _ = client
                .write_all(&backend::error("FATAL", "08P01", message))
                .await;
            if let Some(batch) = full {
                recording.hand_over(batch).await;
            }
            return Err(EndReason::Untracked);
        }
        if whole > 0 {
            session.count_out(whole);
            if client.write_all(&buffer[..whole]).await.is_err() {
                return Ok(());
            }
            buffer.advance(whole);
        }
        if let Some(batch) = full {
            recording.hand_over(batch).await;
        }
        // `biased`: the rare controls first, then the answers, without drawing a random order
        // at every packet.
        tokio::select! {
            biased;
            control = controls.recv() => match control {
                Some(Control::Warn(message)) => {
                    // Issue #4 fixes the wording: severity WARNING, the message alone.
                    let _ = client.write_all(&backend::notice("01000", &message)).await;
                }
                Some(Control::End(message)) => {
                    let _ = client.write_all(&backend::error("FATAL", "57P01", &message)).await;
                    let _ = client.shutdown().await;
                    return Ok(());
                }
                Some(Control::Refuse(code, message)) => {
                    let _ = client.write_all(&backend::error("FATAL", code, &message)).await;
                    let _ = client.shutdown().await;
                    return Ok(());
                }
                Some(Control::Tick) => {
                    ticking.store(false, Ordering::Release);
                    if recording.must_end() {
                        let message = "recording failed; the session was ended";
                        let _ = client.write_all(&backend::error("FATAL", "58030", message)).await;
                        return Err(EndReason::RecordingFailed);
                    }
                    let batch = unrecorded
                        .lock()
                        .map(|mut batch| take_batch(&mut batch))
                        .unwrap_or_default();
                    recording.hand_over(batch).await;
                }
                None => {}
            },
            read = upstream.read_buf(&mut buffer) => match read {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            },
        }
    }
}

/// The finished statements, leaving room for as many as the next batch (the last one's size):
/// a batch grown from nothing would be copied at each doubling.
fn take_batch(batch: &mut Vec<Statement>) -> Vec<Statement> {
    let room = batch.len();
    std::mem::replace(batch, Vec::with_capacity(room))
}

/// Reads one startup packet. `Err(Some)` for a malformed packet with a readable length (answer
/// 08P01), `Err(None)` to just close (unreadable length, EOF).
async fn read_startup(wire: &mut Wire) -> Result<Startup, Option<CodecError>> {
    loop {
        match codec::decode_startup(&mut wire.buffer) {
            Ok(Some(packet)) => return Ok(packet),
            Ok(None) => {}
            Err(CodecError::BadLength(_)) => return Err(None),
            Err(error) => return Err(Some(error)),
        }
        match wire.stream.read_buf(&mut wire.buffer).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

async fn read_message(wire: &mut Wire, max: usize) -> Result<codec::Message, ()> {
    loop {
        match codec::decode_message(&mut wire.buffer, max) {
            Ok(Some(message)) => return Ok(message),
            Ok(None) => {}
            Err(_) => return Err(()),
        }
        match wire.stream.read_buf(&mut wire.buffer).await {
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => {}
        }
    }
}

/// Sends a FATAL ErrorResponse and closes.
async fn refuse(wire: &mut Wire, code: &str, message: &str) {
    let _ = wire
        .stream
        .write_all(&backend::error("FATAL", code, message))
        .await;
    let _ = wire.stream.shutdown().await;
}

async fn end_session(session: &Session, reason: EndReason) {
    let session = session.clone();
    let _ = tokio::task::spawn_blocking(move || session.end(reason)).await;
}
