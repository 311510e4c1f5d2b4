//! The values of the access lifecycle: requests, their approvals, and the grants they become.
//!
//! Plain data with no I/O. States are enums with a fixed string form, which is what the store
//! writes and what `--json` prints.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl RequestState {
    pub const ALL: [RequestState; 5] = [
        RequestState::Pending,
        RequestState::Approved,
        RequestState::Denied,
        RequestState::Expired,
        RequestState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<RequestState> {
        RequestState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantState {
    Active,
    Expired,
    Revoked,
}

impl GrantState {
    pub const ALL: [GrantState; 3] = [GrantState::Active, GrantState::Expired, GrantState::Revoked];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<GrantState> {
        GrantState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approver: String,
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub id: String,
    pub requester: String,
    pub target: String,
    pub duration: Duration,
    pub reason: String,
    pub state: RequestState,
    pub created_at: OffsetDateTime,
    /// When it left `pending`, and who or what moved it.
    pub decided_at: Option<OffsetDateTime>,
    pub decided_by: Option<String>,
    /// The deny reason, when denied.
    pub decision_reason: Option<String>,
    pub approvals: Vec<Approval>,
    pub grant_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub request_id: String,
    pub user: String,
    pub target: String,
    pub state: GrantState,
    pub starts_at: OffsetDateTime,
    pub ends_at: OffsetDateTime,
    /// When it stopped being active (expiry or revoke).
    pub ended_at: Option<OffsetDateTime>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

impl Grant {
    /// Active by state and by time: a grant past its end is not active even before the expiry task
    /// has marked it, so a late sweep can never extend access.
    pub fn is_active_at(&self, now: OffsetDateTime) -> bool {
        self.state == GrantState::Active && self.starts_at <= now && now < self.ends_at
    }
}

/// Told to whoever holds live sessions when a grant stops being active, so they can be cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantEnded {
    pub grant_id: String,
    pub user: String,
    pub target: String,
    pub reason: GrantState,
}
