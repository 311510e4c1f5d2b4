//! Who may do what to which target: pure functions over the config, no I/O, no time.
//!
//! Every path that files, decides or revokes access (SSH commands, Slack, the host CLI) asks these
//! functions through `Access`, so the rules exist once.

use crate::config::{Config, Target, User};

/// May `user` ask for access to `target`?
pub fn may_request(user: &User, target: &Target) -> bool {
    !user.roles.is_disjoint(&target.requestable_by)
}

/// Does `user` hold an approver role for `target`? (Self-approval is refused separately, because it
/// depends on the request, not the role.)
pub fn is_approver(user: &User, target: &Target) -> bool {
    !user.roles.is_disjoint(&target.approvers)
}

/// The users who could approve a request by `requester` for `target`, for notifications.
pub fn eligible_approvers<'a>(
    config: &'a Config,
    target: &Target,
    requester: &str,
) -> Vec<&'a User> {
    config
        .users
        .iter()
        .filter(|user| user.name != requester && is_approver(user, target))
        .collect()
}

/// Targets `user` may request, in config order.
pub fn requestable_targets<'a>(config: &'a Config, user: &User) -> Vec<&'a Target> {
    config
        .targets
        .iter()
        .filter(|target| may_request(user, target))
        .collect()
}
