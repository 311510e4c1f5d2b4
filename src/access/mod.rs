//! The access lifecycle, protocol-blind: requests, approvals, grants, revokes and expiry.
//!
//! `Access` is the one place these rules live; SSH commands, Slack buttons and the host CLI all call
//! it, each supplying only who is acting. Every transition and every refusal is written in one store
//! transaction together with its audit event, so the state and the audit log cannot disagree, and a
//! check-then-write cannot race (the transaction holds SQLite's write lock).
//!
//! **Architecture Invariant:** nothing here knows SSH, PostgreSQL, Slack, HTTP or SQL.

pub mod lockout;
pub mod model;
pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::audit::{Actor, AuditEvent};
use crate::clock::Clock;
use crate::config::{Config, MIN_REQUEST_DURATION, Target, format_duration};
use crate::ids::IdKind;
use crate::store::search::SearchIndex;
use crate::store::{
    GrantFilter, RequestFilter, SessionFilter, SessionRow, SessionSummary, Store, StoreError, Tx,
};
use model::{AccessRequest, Approval, Grant, GrantEnded, GrantState, RequestState};

/// The longest reason accepted; reasons are shown in tables and Slack messages.
pub const MAX_REASON_CHARS: usize = 500;

/// An active grant as `access now` shows it: its request (reason, approvals) and the ids of
/// its live sessions.
#[derive(Debug, Clone)]
pub struct ActiveGrant {
    pub grant: Grant,
    pub request: Option<AccessRequest>,
    pub live_sessions: Vec<String>,
}

/// Hits a search reads from the index, over all sessions, and shows a session.
const MAX_HITS: u32 = 5_000;
const MAX_HITS_SHOWN: usize = 20;
/// Sessions a scoped search looks within, at most (the newest).
const MAX_SCOPE: u32 = 100_000;
/// The longest text `--grep` takes.
const MAX_SEARCH: usize = 1_000;

/// Who looks at sessions and recordings: the operator on the bastion host, or a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// The host CLI, with the OS user that ran it.
    Operator(String),
    User(String),
}

impl Viewer {
    pub fn actor(&self) -> Actor {
        match self {
            Viewer::Operator(os_user) => Actor::Operator(os_user.clone()),
            Viewer::User(name) => Actor::User(name.clone()),
        }
    }
}

/// A refusal, worded for the person who asked. Store failures are separate: they deny too, but
/// they are the bastion's problem, not the user's.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// The same answer whether the session does not exist or the viewer may not see it.
    #[error("no session {0} that you may see; find one with: sessions")]
    NoSession(String),
    #[error("session {0} has ended; replay it with: replay {0}")]
    NotLive(String),
    #[error("only a reviewer or an approver of {0} may watch or end its sessions")]
    NotReviewer(String),
    #[error(
        "session {0} has no terminal to watch (a database session or a file transfer); follow it with: sessions"
    )]
    NothingToWatch(String),
    #[error("{0}")]
    Recording(String),
    #[error("unknown target {0}; list the ones you may request with: targets")]
    UnknownTarget(String),
    #[error("{user} may not request access to {target}")]
    NotRequestable { user: String, target: String },
    #[error("a reason is required (say why you need access, e.g. a ticket id)")]
    EmptyReason,
    #[error("the reason is too long ({0} characters; at most {MAX_REASON_CHARS})")]
    ReasonTooLong(usize),
    #[error("the reason may not contain control characters")]
    ReasonControlCharacters,
    #[error("{requested} is longer than the {max} allowed for {target}")]
    TooLong {
        requested: String,
        max: String,
        target: String,
    },
    #[error("{0}")]
    BadDuration(String),
    #[error("{0}")]
    BadFilter(String),
    #[error("{0} is shorter than the 1m minimum")]
    TooShort(String),
    #[error("no request {0}")]
    UnknownRequest(String),
    #[error("request {id} is {state}, not pending; nothing was changed")]
    NotPending { id: String, state: RequestState },
    #[error("you cannot approve your own request {0}; another approver must")]
    SelfApproval(String),
    #[error("{user} is not an approver for {target}")]
    NotApprover { user: String, target: String },
    #[error("{user} has already approved request {id}")]
    AlreadyApproved { user: String, id: String },
    #[error("only {requester} can cancel request {id}")]
    NotRequester { requester: String, id: String },
    #[error("no grant {0}")]
    UnknownGrant(String),
    #[error("grant {id} is {state}, not active; nothing was changed")]
    GrantNotActive { id: String, state: GrantState },
    #[error("{user} may not revoke grant {id} (only its holder or an approver of {target} may)")]
    NotAllowedToRevoke {
        user: String,
        id: String,
        target: String,
    },
    #[error("no active grant for {0}; request one with: request {0} --for 1h --reason \"...\"")]
    NoActiveGrant(String),
    #[error("{0} is not a database target: tokens are for psql and other PostgreSQL clients")]
    NotADatabase(String),
    #[error("this bastion cannot issue tokens")]
    NoTokenKey,
    #[error("user {0} is locked by an operator; nothing was changed")]
    Locked(String),
    #[error("user {0} is locked already")]
    AlreadyLocked(String),
    #[error("user {0} is not locked")]
    NotLocked(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an approval led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approved {
    /// Recorded; more approvals are needed.
    Waiting {
        request: AccessRequest,
        approvals: u32,
        required: u32,
    },
    /// The last approval needed: the request is approved and this grant is active.
    Granted {
        request: AccessRequest,
        grant: Grant,
    },
}

/// What one run of the expiry task changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    pub expired_requests: Vec<AccessRequest>,
    pub expired_grants: Vec<Grant>,
}

/// The access core. Cheap to clone; clones share the store, clock and grant-end channel.
#[derive(Clone)]
pub struct Access {
    config: Arc<Config>,
    store: Store,
    clock: Arc<dyn Clock>,
    ended: broadcast::Sender<GrantEnded>,
    /// Grants already announced as ended, with when they ended, so a revoke seen both in-process
    /// and by the store scan is announced once.
    announced: Arc<Mutex<HashMap<String, OffsetDateTime>>>,
    /// Signs database access tokens; set by the server once it has read the key.
    token_key: Option<crate::tokens::TokenKey>,
    /// Set once the bastion is shutting down: every live session's watch ends it.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Sessions opened and not yet dropped, so shutdown can wait for them to finish.
    live_sessions: Arc<std::sync::atomic::AtomicUsize>,
    /// Failed logins by source address, in memory (`lockout`).
    sources: Arc<Mutex<lockout::Sources>>,
    /// The search index (issue #19), in its own file; `None` where none was opened.
    search: Option<SearchIndex>,
    /// What reviewers tell live sessions in this process: a kill, a watcher (issue #19).
    notices: broadcast::Sender<SessionNotice>,
    /// The terminals of live sessions a reviewer may watch, by session id.
    screens: Arc<Mutex<HashMap<String, Vec<LiveScreen>>>>,
    /// Replays and exports running at once, at most: each reads its recording whole (issue
    /// #19 review: any user can replay their own sessions, and memory would have no bound).
    /// Reviewers and the operator have slots of their own, so users replaying their own
    /// sessions cannot take them all; a user has one at a time.
    review_slots: Arc<tokio::sync::Semaphore>,
    user_slots: Arc<tokio::sync::Semaphore>,
    slot_holders: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Pending kills the server has told, with when it first saw each.
    kills_seen: Arc<Mutex<HashMap<String, std::time::Instant>>>,
}

/// How long a pending kill is told to this process's sessions (four times a second).
const KILL_ANNOUNCED_FOR: Duration = Duration::from_secs(10);

/// Replays and exports that may run at once: for reviewers and the operator, and for the
/// other users together.
const REVIEW_SLOTS: usize = 4;
const USER_SLOTS: usize = 2;

/// A running replay's or export's place; the slot frees when this is dropped.
pub struct ReviewSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    holder: Option<(String, Arc<Mutex<std::collections::HashSet<String>>>)>,
}

impl Drop for ReviewSlot {
    fn drop(&mut self) {
        if let Some((user, holders)) = &self.holder
            && let Ok(mut holders) = holders.lock()
        {
            holders.remove(user);
        }
    }
}

/// What a reviewer tells a live session (issue #19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionNotice {
    Kill {
        session_id: String,
        by: String,
        reason: String,
    },
    Watched {
        session_id: String,
        by: String,
    },
}

impl SessionNotice {
    pub fn session_id(&self) -> &str {
        match self {
            SessionNotice::Kill { session_id, .. } | SessionNotice::Watched { session_id, .. } => {
                session_id
            }
        }
    }
}

/// What a watcher attaches to: the current screen drawn as escape sequences, and the output
/// from then on. `None` once the channel is gone.
pub type Attach =
    Arc<dyn Fn() -> Option<(String, broadcast::Receiver<bytes::Bytes>)> + Send + Sync>;

/// A live terminal channel a reviewer may watch.
#[derive(Clone)]
pub struct LiveScreen {
    pub channel: u32,
    pub attach: Attach,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Access")
            .field("store", &self.store)
            .finish()
    }
}

/// The refusal or the value of one decision, after its transaction committed.
type Decided<T> = Result<Result<T, AccessError>, StoreError>;

impl Access {
    pub fn new(config: Arc<Config>, store: Store, clock: Arc<dyn Clock>) -> Access {
        let (ended, _) = broadcast::channel(1024);
        Access {
            config,
            store,
            clock,
            ended,
            announced: Arc::new(Mutex::new(HashMap::new())),
            token_key: None,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            live_sessions: Arc::default(),
            sources: Arc::default(),
            search: None,
            notices: broadcast::channel(256).0,
            screens: Arc::default(),
            review_slots: Arc::new(tokio::sync::Semaphore::new(REVIEW_SLOTS)),
            user_slots: Arc::new(tokio::sync::Semaphore::new(USER_SLOTS)),
            slot_holders: Arc::default(),
            kills_seen: Arc::default(),
        }
    }

    /// The same, able to issue and check database access tokens.
    pub fn with_token_key(mut self, key: crate::tokens::TokenKey) -> Access {
        self.token_key = Some(key);
        self
    }

    /// Searches with `--grep` use this index.
    pub fn with_search_index(mut self, index: SearchIndex) -> Access {
        self.search = Some(index);
        self
    }

    pub fn search_index(&self) -> Option<&SearchIndex> {
        self.search.as_ref()
    }

    pub fn token_key(&self) -> Option<&crate::tokens::TokenKey> {
        self.token_key.as_ref()
    }

    /// A database access token for `user`'s active grant on `target`, audited as
    /// `token.issued` with its id (issue #17); a token that cannot be audited is not issued.
    pub fn issue_token(&self, user: &str, target: &str) -> Result<(String, Grant), AccessError> {
        let key = self.token_key().ok_or(AccessError::NoTokenKey)?;
        let grant = self
            .active_grant(user, target)?
            .ok_or_else(|| AccessError::NoActiveGrant(target.to_string()))?;
        let (token, jti) = key
            .issue_with_id(&grant, self.now())
            .map_err(|_| AccessError::NoTokenKey)?;
        self.record(&AuditEvent::TokenIssued {
            user: user.to_string(),
            target: target.to_string(),
            grant_id: grant.id.clone(),
            jti,
            expires_at: grant.ends_at,
        })?;
        Ok((token, grant))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Files a request. `duration` defaults to `access.default_duration`, capped by the target.
    pub fn request(
        &self,
        requester: &str,
        target: &str,
        duration: Option<Duration>,
        reason: &str,
    ) -> Result<AccessRequest, AccessError> {
        let now = self.now();
        let checked = self.check_request(requester, target, duration, reason);
        let outcome: Decided<AccessRequest> = self.store.write(|tx| {
            let checked = match self.ensure_unlocked(tx, requester)? {
                Ok(()) => checked,
                Err(refusal) => Err(refusal),
            };
            let (duration, reason) = match checked {
                Ok(valid) => valid,
                Err(refusal) => {
                    tx.append_audit(
                        &AuditEvent::RequestRefused {
                            requester: requester.to_string(),
                            target: target.to_string(),
                            why: refusal.to_string(),
                        },
                        now,
                    )?;
                    return Ok(Err(refusal));
                }
            };
            let request = AccessRequest {
                id: tx.fresh_id(IdKind::Request)?,
                requester: requester.to_string(),
                target: target.to_string(),
                duration,
                reason,
                state: RequestState::Pending,
                created_at: now,
                decided_at: None,
                decided_by: None,
                decision_reason: None,
                approvals: Vec::new(),
                grant_id: None,
            };
            tx.insert_request(&request)?;
            tx.append_audit(
                &AuditEvent::Requested {
                    request_id: request.id.clone(),
                    requester: request.requester.clone(),
                    target: request.target.clone(),
                    duration: request.duration,
                    reason: request.reason.clone(),
                },
                now,
            )?;
            Ok(Ok(request))
        });
        outcome?
    }

    fn check_request(
        &self,
        requester: &str,
        target_name: &str,
        duration: Option<Duration>,
        reason: &str,
    ) -> Result<(Duration, String), AccessError> {
        let user = self
            .config
            .user(requester)
            .ok_or_else(|| AccessError::UnknownUser(requester.to_string()))?;
        let target = self
            .config
            .target(target_name)
            .ok_or_else(|| AccessError::UnknownTarget(target_name.to_string()))?;
        if !policy::may_request(user, target) {
            return Err(AccessError::NotRequestable {
                user: requester.to_string(),
                target: target_name.to_string(),
            });
        }
        let reason = check_reason(reason)?;
        let max = self.config.max_duration_for(target);
        let duration = duration.unwrap_or(self.config.access.default_duration.min(max));
        if duration < MIN_REQUEST_DURATION {
            return Err(AccessError::TooShort(format_duration(duration)));
        }
        if duration > max {
            return Err(AccessError::TooLong {
                requested: format_duration(duration),
                max: format_duration(max),
                target: target_name.to_string(),
            });
        }
        Ok((duration, reason))
    }

    /// Records `approver`'s approval; the last one needed turns the request into a grant.
    pub fn approve(&self, approver: &str, request_id: &str) -> Result<Approved, AccessError> {
        let now = self.now();
        let outcome: Decided<Approved> = self.store.write(|tx| {
            if let Err(refusal) = self.ensure_unlocked(tx, approver)? {
                return self.refuse_decision(tx, approver, request_id, None, refusal, now);
            }
            let request = match self.pending_request(tx, request_id, now)? {
                Ok(request) => request,
                Err(refusal) => {
                    return self.refuse_decision(tx, approver, request_id, None, refusal, now);
                }
            };
            let target = match self.check_approver(approver, &request) {
                Ok(target) => target,
                Err(refusal) => {
                    let target = Some(request.target.clone());
                    return self.refuse_decision(tx, approver, request_id, target, refusal, now);
                }
            };
            // A locked user's pending request never becomes a grant (issue #17 review).
            if let Err(refusal) = self.ensure_unlocked(tx, &request.requester)? {
                let target = Some(request.target.clone());
                return self.refuse_decision(tx, approver, request_id, target, refusal, now);
            }
            let approval = Approval {
                approver: approver.to_string(),
                at: now,
            };
            tx.add_approval(&request.id, &approval)?;
            let approvals = request.approvals.len() as u32 + 1;
            let required = target.approvals_required;
            tx.append_audit(
                &AuditEvent::Approved {
                    request_id: request.id.clone(),
                    approver: approver.to_string(),
                    target: request.target.clone(),
                    approvals,
                    required,
                },
                now,
            )?;
            if approvals < required {
                let request = tx.request(&request.id)?.ok_or(StoreError::Corrupt {
                    column: "requests.id",
                    value: request.id.clone(),
                })?;
                return Ok(Ok(Approved::Waiting {
                    request,
                    approvals,
                    required,
                }));
            }
            // The config may have tightened since the request was filed: never grant more than
            // the target allows now.
            let duration = request.duration.min(self.config.max_duration_for(target));
            let grant = Grant {
                id: tx.fresh_id(IdKind::Grant)?,
                request_id: request.id.clone(),
                user: request.requester.clone(),
                target: request.target.clone(),
                state: GrantState::Active,
                starts_at: now,
                ends_at: now + duration,
                ended_at: None,
                revoked_by: None,
                revoke_reason: None,
            };
            tx.insert_grant(&grant)?;
            if !tx.decide_request(
                &request.id,
                RequestState::Approved,
                now,
                approver,
                None,
                Some(&grant.id),
            )? {
                // Unreachable while the transaction holds the write lock; fail closed if not.
                return Err(StoreError::Corrupt {
                    column: "requests.state",
                    value: request.id.clone(),
                });
            }
            tx.append_audit(
                &AuditEvent::Granted {
                    request_id: request.id.clone(),
                    grant_id: grant.id.clone(),
                    user: grant.user.clone(),
                    target: grant.target.clone(),
                    ends_at: grant.ends_at,
                },
                now,
            )?;
            let request = tx.request(&request.id)?.ok_or(StoreError::Corrupt {
                column: "requests.id",
                value: request.id.clone(),
            })?;
            Ok(Ok(Approved::Granted { request, grant }))
        });
        outcome?
    }

    /// Denies a pending request; any eligible approver's deny ends it.
    pub fn deny(
        &self,
        approver: &str,
        request_id: &str,
        reason: &str,
    ) -> Result<AccessRequest, AccessError> {
        let now = self.now();
        let outcome: Decided<AccessRequest> = self.store.write(|tx| {
            if let Err(refusal) = self.ensure_unlocked(tx, approver)? {
                return self.refuse_decision(tx, approver, request_id, None, refusal, now);
            }
            let request = match self.pending_request(tx, request_id, now)? {
                Ok(request) => request,
                Err(refusal) => {
                    return self.refuse_decision(tx, approver, request_id, None, refusal, now);
                }
            };
            let checked = self
                .check_approver(approver, &request)
                .and_then(|_| check_reason(reason));
            let reason = match checked {
                Ok(reason) => reason,
                Err(refusal) => {
                    let target = Some(request.target.clone());
                    return self.refuse_decision(tx, approver, request_id, target, refusal, now);
                }
            };
            tx.decide_request(
                &request.id,
                RequestState::Denied,
                now,
                approver,
                Some(&reason),
                None,
            )?;
            tx.append_audit(
                &AuditEvent::Denied {
                    request_id: request.id.clone(),
                    approver: approver.to_string(),
                    target: request.target.clone(),
                    reason,
                },
                now,
            )?;
            self.reload(tx, &request.id).map(Ok)
        });
        outcome?
    }

    /// Withdraws a pending request; only its requester may.
    pub fn cancel(&self, requester: &str, request_id: &str) -> Result<AccessRequest, AccessError> {
        let now = self.now();
        let outcome: Decided<AccessRequest> = self.store.write(|tx| {
            if let Err(refusal) = self.ensure_unlocked(tx, requester)? {
                return self.refuse_decision(tx, requester, request_id, None, refusal, now);
            }
            let request = match self.pending_request(tx, request_id, now)? {
                Ok(request) => request,
                Err(refusal) => {
                    return self.refuse_decision(tx, requester, request_id, None, refusal, now);
                }
            };
            if request.requester != requester {
                let refusal = AccessError::NotRequester {
                    requester: request.requester.clone(),
                    id: request.id.clone(),
                };
                let target = Some(request.target.clone());
                return self.refuse_decision(tx, requester, request_id, target, refusal, now);
            }
            tx.decide_request(
                &request.id,
                RequestState::Cancelled,
                now,
                requester,
                None,
                None,
            )?;
            tx.append_audit(
                &AuditEvent::Cancelled {
                    request_id: request.id.clone(),
                    requester: requester.to_string(),
                    target: request.target.clone(),
                },
                now,
            )?;
            self.reload(tx, &request.id).map(Ok)
        });
        outcome?
    }

    /// Ends an active grant at once. Users may revoke their own grants and the grants of targets
    /// they approve; the operator on the bastion host may revoke any.
    pub fn revoke(
        &self,
        actor: &Actor,
        grant_id: &str,
        reason: &str,
    ) -> Result<Grant, AccessError> {
        let now = self.now();
        let outcome: Decided<Grant> = self.store.write(|tx| {
            let refuse = |refusal: AccessError| -> Decided<Grant> {
                tx.append_audit(
                    &AuditEvent::RevokeRefused {
                        actor: actor.clone(),
                        grant_id: grant_id.to_string(),
                        why: refusal.to_string(),
                    },
                    now,
                )?;
                Ok(Err(refusal))
            };
            let reason = match check_reason(reason) {
                Ok(reason) => reason,
                Err(refusal) => return refuse(refusal),
            };
            if let Actor::User(name) = actor
                && let Err(refusal) = self.ensure_unlocked(tx, name)?
            {
                return refuse(refusal);
            }
            let Some(grant) = tx.grant(grant_id)? else {
                return refuse(AccessError::UnknownGrant(grant_id.to_string()));
            };
            if grant.state == GrantState::Active && !grant.is_active_at(now) {
                self.expire_grant(tx, &grant, now)?;
                return refuse(AccessError::GrantNotActive {
                    id: grant.id.clone(),
                    state: GrantState::Expired,
                });
            }
            if grant.state != GrantState::Active {
                return refuse(AccessError::GrantNotActive {
                    id: grant.id.clone(),
                    state: grant.state,
                });
            }
            if let Actor::User(name) = actor {
                let approver = self
                    .config
                    .user(name)
                    .zip(self.config.target(&grant.target));
                let allowed = *name == grant.user
                    || approver.is_some_and(|(user, target)| policy::is_approver(user, target));
                if !allowed {
                    return refuse(AccessError::NotAllowedToRevoke {
                        user: name.clone(),
                        id: grant.id.clone(),
                        target: grant.target.clone(),
                    });
                }
            }
            let label = actor.label();
            tx.end_grant(
                &grant.id,
                GrantState::Revoked,
                now,
                Some(&label),
                Some(&reason),
            )?;
            tx.append_audit(
                &AuditEvent::Revoked {
                    grant_id: grant.id.clone(),
                    request_id: grant.request_id.clone(),
                    actor: actor.clone(),
                    user: grant.user.clone(),
                    target: grant.target.clone(),
                    reason,
                },
                now,
            )?;
            let grant = tx.grant(&grant.id)?.ok_or(StoreError::Corrupt {
                column: "grants.id",
                value: grant.id.clone(),
            })?;
            Ok(Ok(grant))
        });
        let grant = outcome??;
        self.announce(&grant);
        Ok(grant)
    }

    /// Appends an event that is not a lifecycle transition (server start and stop, and later the
    /// session and authentication events of the front ends).
    pub fn record(&self, event: &AuditEvent) -> Result<(), AccessError> {
        let now = self.now();
        self.store.write(|tx| tx.append_audit(event, now))?;
        Ok(())
    }

    /// Audits that an audit sink refused a batch for good (issue #18).
    pub fn sink_refused(&self, sink: &str, why: &str) -> Result<(), AccessError> {
        self.record(&AuditEvent::SinkRefused {
            sink: sink.to_string(),
            why: why.to_string(),
        })
    }

    /// Audits a successful login and resets the failure counter of that user and source.
    pub fn record_login(
        &self,
        user: &str,
        source: &str,
        protocol: &'static str,
        target: Option<&str>,
    ) -> Result<(), AccessError> {
        let now = self.now();
        self.store.write(|tx| {
            tx.clear_failed_auth(user, source)?;
            tx.append_audit(
                &AuditEvent::LoggedIn {
                    user: user.to_string(),
                    source: source.to_string(),
                    protocol,
                    target: target.map(str::to_string),
                },
                now,
            )
        })?;
        Ok(())
    }

    /// The grant that lets `user` reach `target` now, if any. Decided by time as well as state.
    pub fn active_grant(&self, user: &str, target: &str) -> Result<Option<Grant>, AccessError> {
        let now = self.now();
        Ok(self.store.read(|tx| tx.active_grant(user, target, now))?)
    }

    pub fn request_by_id(&self, id: &str) -> Result<Option<AccessRequest>, AccessError> {
        Ok(self.store.read(|tx| tx.request(id))?)
    }

    pub fn grant_by_id(&self, id: &str) -> Result<Option<Grant>, AccessError> {
        Ok(self.store.read(|tx| tx.grant(id))?)
    }

    pub fn requests(&self, filter: RequestFilter) -> Result<Vec<AccessRequest>, AccessError> {
        Ok(self.store.read(|tx| tx.requests(filter))?)
    }

    /// The sessions `viewer` may see that match `filter` (issue #19): a holder of a reviewer
    /// role or the operator sees every session, an approver the sessions on the targets they
    /// approve, everyone their own. Every search is audited (`sessions.searched`), a refused
    /// one with why; results are returned only once their record is written. The listing runs
    /// on a read snapshot, so a slow search never holds the write lock logins and approvals
    /// wait for; the lock of a locked user is checked again in the audit's transaction.
    pub fn find_sessions(
        &self,
        viewer: &Viewer,
        filter: SessionFilter,
        grep: Option<&str>,
    ) -> Result<Vec<SessionSummary>, AccessError> {
        let limit = filter.limit;
        let mut scoped = filter.clone();
        let mut outcome = self.search_sessions(viewer, &mut scoped, grep);
        let refused = match &outcome {
            Ok(_) => None,
            Err(AccessError::Store(_)) => return outcome,
            Err(refusal) => Some(refusal.to_string()),
        };
        let now = self.now();
        let results = outcome.as_ref().map_or(0, |found| found.len() as u64);
        let locked = self.store.write(|tx| {
            let mut refused = refused.clone();
            let mut locked = None;
            if refused.is_none()
                && let Viewer::User(name) = viewer
                && let Err(refusal) = self.ensure_unlocked(tx, name)?
            {
                refused = Some(refusal.to_string());
                locked = Some(refusal);
            }
            tx.append_audit(
                &AuditEvent::SessionsSearched {
                    actor: viewer.actor(),
                    user: filter.user.clone(),
                    target: filter.target.clone(),
                    since: filter.since,
                    until: filter.until,
                    grep: grep.map(str::to_string),
                    limit,
                    everything: scoped.visible_to.is_none(),
                    results: if locked.is_some() { 0 } else { results },
                    refused,
                },
                now,
            )?;
            Ok(locked)
        })?;
        if let Some(refusal) = locked {
            outcome = Err(refusal);
        }
        outcome
    }

    /// `find_sessions` without its audit: the listing, and the search when there is one.
    fn search_sessions(
        &self,
        viewer: &Viewer,
        filter: &mut SessionFilter,
        grep: Option<&str>,
    ) -> Result<Vec<SessionSummary>, AccessError> {
        // What the viewer may see first: a refused search is audited with its scope too.
        filter.visible_to = self.visibility(viewer)?;
        for (flag, name) in [("--user", &filter.user), ("--target", &filter.target)] {
            if let Some(name) = name
                && !crate::config::is_valid_name(name)
            {
                return Err(AccessError::BadFilter(format!(
                    "{flag} takes a user or target name (a-z, 0-9, '.', '_', '-')"
                )));
            }
        }
        if let Viewer::User(name) = viewer
            && self.store.read(|tx| tx.user_lock(name))?.is_some()
        {
            return Err(AccessError::Locked(name.clone()));
        }
        // The index is searched outside the state database, within the sessions the filters
        // and the viewer's visibility allow (so others' hits cannot crowd out the viewer's own
        // under the hit cap); the listing then applies the same filter once more.
        let hits = match grep {
            Some(text) => {
                let scoped = filter.visible_to.is_some()
                    || filter.user.is_some()
                    || filter.target.is_some()
                    || filter.since.is_some()
                    || filter.until.is_some();
                let within = match scoped {
                    true => Some(
                        self.store
                            .read(|tx| tx.find_session_ids(filter, MAX_SCOPE))?,
                    ),
                    false => None,
                };
                Some(self.search(text, within.as_deref())?)
            }
            None => None,
        };
        if let Some(hits) = &hits {
            let mut ids: Vec<String> = hits.iter().map(|hit| hit.session_id.clone()).collect();
            ids.sort();
            ids.dedup();
            filter.ids = Some(ids);
        }
        let found = self.store.read(|tx| tx.find_sessions(filter))?;
        let Some(hits) = hits else {
            return Ok(found);
        };
        let mut by_session: HashMap<String, Vec<crate::store::search::Entry>> = HashMap::new();
        for hit in hits {
            let kept = by_session.entry(hit.session_id.clone()).or_default();
            if kept.len() < MAX_HITS_SHOWN {
                kept.push(hit);
            }
        }
        Ok(found
            .into_iter()
            .map(|mut summary| {
                summary.hits = by_session.remove(&summary.session.id).unwrap_or_default();
                summary
            })
            .collect())
    }

    /// Ends a live session for `viewer`, an operator or a reviewer or an approver of its
    /// target (issue #19): the request is stored with its audit event, so the server's watch
    /// of the session sees it within a second even when asked from another process, and is
    /// told at once in this one.
    pub fn kill_session(
        &self,
        viewer: &Viewer,
        session_id: &str,
        reason: &str,
    ) -> Result<SessionRow, AccessError> {
        let reason = check_reason(reason)?;
        let (found, _) = self.session_for_reviewer(viewer, session_id)?;
        let by = viewer.actor().label();
        let now = self.now();
        let killed = self.store.write(|tx| {
            if let Viewer::User(name) = viewer
                && let Err(refusal) = self.ensure_unlocked(tx, name)?
            {
                return Ok(Err(refusal));
            }
            if !tx.request_kill(session_id, &by, &reason)? {
                return Ok(Err(AccessError::NotLive(session_id.to_string())));
            }
            tx.append_audit(
                &AuditEvent::SessionKillRequested {
                    actor: viewer.actor(),
                    session_id: session_id.to_string(),
                    user: found.session.user.clone(),
                    target: found.session.target.clone(),
                    reason: reason.clone(),
                },
                now,
            )?;
            Ok(Ok(found.session.clone()))
        })??;
        let _ = self.notices.send(SessionNotice::Kill {
            session_id: session_id.to_string(),
            by,
            reason,
        });
        Ok(killed)
    }

    /// A session `viewer` may intervene in (watch it live, kill it): the operator, a reviewer,
    /// or an approver of its target; its own user is not enough. Not audited here: the caller's
    /// action is.
    fn session_for_reviewer(
        &self,
        viewer: &Viewer,
        session_id: &str,
    ) -> Result<(SessionSummary, Vec<crate::store::RecordingRow>), AccessError> {
        if !crate::ids::is_id(IdKind::Session, session_id) {
            return Err(AccessError::NoSession(crate::text::visible(session_id)));
        }
        let visible = self.visibility(viewer)?;
        let filter = SessionFilter {
            limit: 1,
            visible_to: visible.clone(),
            ids: Some(vec![session_id.to_string()]),
            ..SessionFilter::default()
        };
        let found = self.store.read(|tx| {
            let found = tx.find_sessions(&filter)?.into_iter().next();
            let recordings = tx.recordings(session_id)?;
            Ok(found.map(|found| (found, recordings)))
        })?;
        let Some((found, recordings)) = found else {
            return Err(AccessError::NoSession(session_id.to_string()));
        };
        if let Some((_, targets)) = &visible
            && !targets.contains(&found.session.target)
        {
            return Err(AccessError::NotReviewer(found.session.target.clone()));
        }
        Ok((found, recordings))
    }

    /// A session's audit records, for its exported timeline (the caller has checked the
    /// viewer may see the session).
    pub fn session_events(
        &self,
        session_id: &str,
    ) -> Result<Vec<crate::audit::AuditRecord>, AccessError> {
        Ok(self
            .store
            .read(|tx| tx.audit_of_session(session_id, 100_000))?)
    }

    /// The access review data of [from, to) and each of its sessions' command count (from the
    /// search index; zero where there is none), audited as `report.generated`.
    pub fn access_report(
        &self,
        viewer: &Viewer,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<(crate::store::ReportData, HashMap<String, u64>), AccessError> {
        if to <= from {
            return Err(AccessError::BadFilter(
                "--to must be after --from".to_string(),
            ));
        }
        if self.visibility(viewer)?.is_some() {
            return Err(AccessError::BadFilter(
                "the access report is for reviewers and the operator".to_string(),
            ));
        }
        let now = self.now();
        let data = self.store.write(|tx| {
            let data = tx.report_data(from, to)?;
            tx.append_audit(
                &AuditEvent::ReportGenerated {
                    actor: viewer.actor(),
                    from,
                    to,
                },
                now,
            )?;
            Ok(data)
        })?;
        let ids: Vec<String> = data.sessions.iter().map(|(id, ..)| id.clone()).collect();
        let commands = match &self.search {
            Some(index) => index.command_counts(&ids)?,
            None => HashMap::new(),
        };
        Ok((data, commands))
    }

    /// A place for `viewer`'s replay or export, or a refusal when the slots are taken (or,
    /// for a user without a reviewer role, when they hold one already).
    pub fn review_slot(&self, viewer: &Viewer) -> Result<ReviewSlot, AccessError> {
        let busy = || {
            AccessError::Recording(
                "as many replays and exports as the bastion allows are running; try again when \
                 one ends"
                    .to_string(),
            )
        };
        let restricted = match viewer {
            Viewer::User(name) if self.visibility(viewer)?.is_some() => Some(name.clone()),
            _ => None,
        };
        let Some(user) = restricted else {
            let permit = self
                .review_slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| busy())?;
            return Ok(ReviewSlot {
                _permit: permit,
                holder: None,
            });
        };
        let mut holders = self
            .slot_holders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if holders.contains(&user) {
            return Err(AccessError::Recording(
                "one replay or export at a time; end the one running first".to_string(),
            ));
        }
        let permit = self
            .user_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        holders.insert(user.clone());
        Ok(ReviewSlot {
            _permit: permit,
            holder: Some((user, self.slot_holders.clone())),
        })
    }

    /// Sessions' notices (kills, watchers) told in this process.
    pub fn subscribe_notices(&self) -> broadcast::Receiver<SessionNotice> {
        self.notices.subscribe()
    }

    /// Tells this process's live sessions of the kills in the store: those asked from another
    /// process (the host CLI) reach the sessions this way. Run by the server four times a second.
    /// A kill is told for `KILL_ANNOUNCED_FOR` after it is first seen: a session left open by
    /// a crash (its row never ended) is not told again and again.
    pub fn announce_kills(&self) -> Result<(), AccessError> {
        let pending = self.store.read(|tx| tx.pending_kills())?;
        let now = std::time::Instant::now();
        let mut seen = self
            .kills_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.retain(|id, _| pending.iter().any(|(pending, ..)| pending == id));
        for (session_id, by, reason) in pending {
            let first = *seen.entry(session_id.clone()).or_insert(now);
            if now.duration_since(first) < KILL_ANNOUNCED_FOR {
                let _ = self.notices.send(SessionNotice::Kill {
                    session_id,
                    by,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Who asked for `session_id` to end, and why, if anyone did (the store is the truth for
    /// kills asked from another process).
    pub fn kill_request(&self, session_id: &str) -> Result<Option<(String, String)>, AccessError> {
        Ok(self.store.read(|tx| tx.kill_request(session_id))?)
    }

    /// Makes a live terminal channel watchable; `unregister_screen` when it ends.
    pub fn register_screen(&self, session_id: &str, screen: LiveScreen) {
        if let Ok(mut screens) = self.screens.lock() {
            screens
                .entry(session_id.to_string())
                .or_default()
                .push(screen);
        }
    }

    pub fn unregister_screen(&self, session_id: &str, channel: u32) {
        if let Ok(mut screens) = self.screens.lock()
            && let Some(list) = screens.get_mut(session_id)
        {
            list.retain(|screen| screen.channel != channel);
            if list.is_empty() {
                screens.remove(session_id);
            }
        }
    }

    /// Opens a live watch of `session_id` for `viewer` (an operator, a reviewer, an approver of
    /// its target): audited as `recording.viewed` (`watch`), the watched user told who watches.
    /// Returns the channel's current screen and its output from then on.
    pub fn watch_session(
        &self,
        viewer: &Viewer,
        session_id: &str,
    ) -> Result<(u32, String, broadcast::Receiver<bytes::Bytes>, Attach), AccessError> {
        let (session_id, channel) = match session_id.split_once('/') {
            Some((session, channel)) => (session, Some(channel)),
            None => (session_id, None),
        };
        let (found, _) = self.session_for_reviewer(viewer, session_id)?;
        if found.session.ended_at.is_some() {
            return Err(AccessError::NotLive(session_id.to_string()));
        }
        let mut live = self
            .screens
            .lock()
            .ok()
            .and_then(|screens| screens.get(session_id).cloned())
            .unwrap_or_default();
        if let Some(channel) = channel {
            live.retain(|screen| screen.channel.to_string() == channel);
        }
        // With several terminals open the watcher picks one: the first is not necessarily
        // where the work is (issue #19 review).
        if live.len() > 1 {
            let choices: Vec<String> = live
                .iter()
                .map(|screen| format!("{session_id}/{}", screen.channel))
                .collect();
            return Err(AccessError::Recording(format!(
                "session {session_id} has {} live terminals; watch one of: {}",
                live.len(),
                choices.join(", ")
            )));
        }
        let attached = live.iter().find_map(|screen| {
            (screen.attach)()
                .map(|(dump, output)| (screen.channel, dump, output, screen.attach.clone()))
        });
        let Some(attached) = attached else {
            return Err(AccessError::NothingToWatch(session_id.to_string()));
        };
        self.view_session(viewer, session_id, crate::audit::ViewKind::Watch)?;
        let _ = self.notices.send(SessionNotice::Watched {
            session_id: session_id.to_string(),
            by: viewer.actor().label(),
        });
        Ok(attached)
    }

    /// One session `viewer` may see, with its recordings, for a replay, an export or a live
    /// watch; the look is audited (`recording.viewed`) before anything is shown, and refused
    /// for a locked user. A session the viewer may not see is answered as one that does not
    /// exist.
    pub fn view_session(
        &self,
        viewer: &Viewer,
        session_id: &str,
        how: crate::audit::ViewKind,
    ) -> Result<(SessionSummary, Vec<crate::store::RecordingRow>), AccessError> {
        if !crate::ids::is_id(IdKind::Session, session_id) {
            return Err(AccessError::NoSession(crate::text::visible(session_id)));
        }
        let filter = SessionFilter {
            limit: 1,
            visible_to: self.visibility(viewer)?,
            ids: Some(vec![session_id.to_string()]),
            ..SessionFilter::default()
        };
        let now = self.now();
        self.store.write(|tx| {
            if let Viewer::User(name) = viewer
                && let Err(refusal) = self.ensure_unlocked(tx, name)?
            {
                return Ok(Err(refusal));
            }
            let Some(found) = tx.find_sessions(&filter)?.into_iter().next() else {
                return Ok(Err(AccessError::NoSession(session_id.to_string())));
            };
            let recordings = tx.recordings(session_id)?;
            tx.append_audit(
                &AuditEvent::RecordingViewed {
                    actor: viewer.actor(),
                    session_id: session_id.to_string(),
                    user: found.session.user.clone(),
                    target: found.session.target.clone(),
                    how,
                },
                now,
            )?;
            Ok(Ok((found, recordings)))
        })?
    }

    /// Index entries holding `text`, over every session (callers filter by visibility).
    fn search(
        &self,
        text: &str,
        within: Option<&[String]>,
    ) -> Result<Vec<crate::store::search::Entry>, AccessError> {
        let length = text.chars().count();
        if !(crate::store::search::MIN_SEARCH..=MAX_SEARCH).contains(&length) {
            return Err(AccessError::BadFilter(format!(
                "--grep takes {} to {MAX_SEARCH} characters",
                crate::store::search::MIN_SEARCH
            )));
        }
        if crate::store::search::literal_run(text).is_none() {
            return Err(AccessError::BadFilter(format!(
                "--grep needs {} characters in a row that are not % or _",
                crate::store::search::MIN_SEARCH
            )));
        }
        let Some(index) = &self.search else {
            return Err(AccessError::BadFilter(
                "there is no search index yet: the running bastion (portcullis serve) builds it"
                    .to_string(),
            ));
        };
        Ok(index.search(text, MAX_HITS, within)?)
    }

    /// What `viewer` may see: `None` for everything (the operator, a reviewer role), else their
    /// own name and the targets they approve.
    pub fn visibility(
        &self,
        viewer: &Viewer,
    ) -> Result<Option<(String, Vec<String>)>, AccessError> {
        let Viewer::User(name) = viewer else {
            return Ok(None);
        };
        let user = self
            .config
            .user(name)
            .ok_or_else(|| AccessError::UnknownUser(name.clone()))?;
        if user
            .roles
            .iter()
            .any(|role| self.config.access.reviewer_roles.contains(role))
        {
            return Ok(None);
        }
        let approves = self
            .config
            .targets
            .iter()
            .filter(|target| policy::is_approver(user, target))
            .map(|target| target.name.clone())
            .collect();
        Ok(Some((name.clone(), approves)))
    }

    /// Who can reach which target right now (issue #19): every active grant `viewer` may see,
    /// with its request (reason, approvals) and the ids of its live sessions.
    pub fn access_now(&self, viewer: &Viewer) -> Result<Vec<ActiveGrant>, AccessError> {
        let visible = self.visibility(viewer)?;
        if let Viewer::User(name) = viewer {
            let locked = self.store.read(|tx| tx.user_lock(name))?;
            if locked.is_some() {
                return Err(AccessError::Locked(name.clone()));
            }
        }
        let now = self.now();
        self.store
            .read(|tx| {
                let grants = tx.grants(GrantFilter {
                    active_at: Some(now),
                    limit: None,
                })?;
                let mut rows = Vec::new();
                for grant in grants {
                    let shown = match &visible {
                        None => true,
                        Some((user, targets)) => {
                            &grant.user == user || targets.contains(&grant.target)
                        }
                    };
                    if !shown {
                        continue;
                    }
                    let request = tx.request(&grant.request_id)?;
                    let live = tx.live_sessions_of(&grant.id)?;
                    rows.push(ActiveGrant {
                        grant,
                        request,
                        live_sessions: live,
                    });
                }
                Ok(rows)
            })
            .map_err(AccessError::from)
    }

    pub fn grants(&self, active_only: bool, limit: Option<u32>) -> Result<Vec<Grant>, AccessError> {
        let filter = GrantFilter {
            active_at: active_only.then(|| self.now()),
            limit,
        };
        Ok(self.store.read(|tx| tx.grants(filter))?)
    }

    /// Expires overdue pending requests and grants, with their audit events, and announces the
    /// grants that ended. Run by the expiry task every second; safe to run from several processes.
    pub fn sweep(&self) -> Result<Sweep, AccessError> {
        let now = self.now();
        let ttl = self.config.access.pending_request_ttl;
        let sweep = self.store.write(|tx| {
            let mut sweep = Sweep::default();
            for request in tx.pending_created_before(now - ttl)? {
                self.expire_request(tx, &request, now)?;
                sweep.expired_requests.push(self.reload(tx, &request.id)?);
            }
            for grant in tx.grants_due(now)? {
                self.expire_grant(tx, &grant, now)?;
                if let Some(grant) = tx.grant(&grant.id)? {
                    sweep.expired_grants.push(grant);
                }
            }
            Ok(sweep)
        })?;
        for grant in &sweep.expired_grants {
            self.announce(grant);
        }
        Ok(sweep)
    }

    /// Announces grants that ended since `since` by any path, including another process such as
    /// the operator's `portcullis revoke`, which cannot reach this process's channel.
    pub fn announce_ended_since(&self, since: OffsetDateTime) -> Result<(), AccessError> {
        let ended = self.store.read(|tx| tx.grants_ended_since(since))?;
        for grant in &ended {
            self.announce(grant);
        }
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        announced.retain(|_, ended_at| *ended_at >= since);
        Ok(())
    }

    /// A receiver told of every grant that stops being active ("grant G ended"), so the session
    /// layer can cut live sessions.
    pub fn subscribe_ended(&self) -> broadcast::Receiver<GrantEnded> {
        self.ended.subscribe()
    }

    /// Tells every live session to end (the bastion is shutting down); sessions opened after
    /// this end at once.
    pub fn stop_sessions(&self) {
        self.stopping.send_replace(true);
    }

    /// A receiver that turns `true` once `stop_sessions` was called.
    pub fn subscribe_stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Counts sessions from `Session::open` until their last handle is dropped.
    pub fn live_sessions(&self) -> &std::sync::atomic::AtomicUsize {
        &self.live_sessions
    }

    fn announce(&self, grant: &Grant) {
        let ended_at = grant.ended_at.unwrap_or_else(|| self.now());
        let first = self
            .announced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(grant.id.clone(), ended_at)
            .is_none();
        if first {
            tracing::info!(grant = %grant.id, user = %grant.user, target = %grant.target,
                reason = %grant.state, "grant ended");
            // No receiver is fine: no live session to cut.
            let _ = self.ended.send(GrantEnded {
                grant_id: grant.id.clone(),
                user: grant.user.clone(),
                target: grant.target.clone(),
                reason: grant.state,
            });
        }
    }

    /// Loads a request that can still be decided. A pending request past its time-to-live is
    /// expired on the spot, so a decision never lands on a request the expiry task has not reached.
    fn pending_request(
        &self,
        tx: &Tx<'_>,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Result<AccessRequest, AccessError>, StoreError> {
        let Some(request) = tx.request(id)? else {
            return Ok(Err(AccessError::UnknownRequest(id.to_string())));
        };
        if request.state == RequestState::Pending
            && request.created_at + self.config.access.pending_request_ttl <= now
        {
            self.expire_request(tx, &request, now)?;
            return Ok(Err(AccessError::NotPending {
                id: request.id,
                state: RequestState::Expired,
            }));
        }
        if request.state != RequestState::Pending {
            return Ok(Err(AccessError::NotPending {
                id: request.id,
                state: request.state,
            }));
        }
        Ok(Ok(request))
    }

    /// Checks that `approver` may decide `request`, returning its target.
    fn check_approver(
        &self,
        approver: &str,
        request: &AccessRequest,
    ) -> Result<&Target, AccessError> {
        let target = self
            .config
            .target(&request.target)
            .ok_or_else(|| AccessError::UnknownTarget(request.target.clone()))?;
        if approver == request.requester {
            return Err(AccessError::SelfApproval(request.id.clone()));
        }
        let user = self
            .config
            .user(approver)
            .ok_or_else(|| AccessError::UnknownUser(approver.to_string()))?;
        if !policy::is_approver(user, target) {
            return Err(AccessError::NotApprover {
                user: approver.to_string(),
                target: request.target.clone(),
            });
        }
        if request
            .approvals
            .iter()
            .any(|approval| approval.approver == approver)
        {
            return Err(AccessError::AlreadyApproved {
                user: approver.to_string(),
                id: request.id.clone(),
            });
        }
        Ok(target)
    }

    fn refuse_decision<T>(
        &self,
        tx: &Tx<'_>,
        actor: &str,
        request_id: &str,
        target: Option<String>,
        refusal: AccessError,
        now: OffsetDateTime,
    ) -> Decided<T> {
        tx.append_audit(
            &AuditEvent::DecisionRefused {
                actor: Actor::User(actor.to_string()),
                request_id: request_id.to_string(),
                target,
                why: refusal.to_string(),
            },
            now,
        )?;
        Ok(Err(refusal))
    }

    fn expire_request(
        &self,
        tx: &Tx<'_>,
        request: &AccessRequest,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let label = Actor::System.label();
        if tx.decide_request(&request.id, RequestState::Expired, now, &label, None, None)? {
            tx.append_audit(
                &AuditEvent::Expired {
                    request_id: request.id.clone(),
                    requester: request.requester.clone(),
                    target: request.target.clone(),
                },
                now,
            )?;
        }
        Ok(())
    }

    fn expire_grant(
        &self,
        tx: &Tx<'_>,
        grant: &Grant,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        // The grant ended at its end time, even if the sweep notices it later.
        let ended_at = grant.ends_at.min(now);
        if tx.end_grant(&grant.id, GrantState::Expired, ended_at, None, None)? {
            tx.append_audit(
                &AuditEvent::GrantExpired {
                    grant_id: grant.id.clone(),
                    request_id: grant.request_id.clone(),
                    user: grant.user.clone(),
                    target: grant.target.clone(),
                },
                now,
            )?;
        }
        Ok(())
    }

    fn reload(&self, tx: &Tx<'_>, id: &str) -> Result<AccessRequest, StoreError> {
        tx.request(id)?.ok_or(StoreError::Corrupt {
            column: "requests.id",
            value: id.to_string(),
        })
    }
}

fn check_reason(reason: &str) -> Result<String, AccessError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AccessError::EmptyReason);
    }
    let length = reason.chars().count();
    if length > MAX_REASON_CHARS {
        return Err(AccessError::ReasonTooLong(length));
    }
    if reason.chars().any(char::is_control) {
        return Err(AccessError::ReasonControlCharacters);
    }
    Ok(reason.to_string())
}

#[cfg(test)]
mod tests;
