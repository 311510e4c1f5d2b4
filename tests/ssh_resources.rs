//! Resources the SSH relay must give back (issue #3). Its own test binary: it reads a
//! process-wide count of relay tasks, which other tests running beside it would change.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::bastion::Bastion;
use support::wait_for;

/// A channel whose subsystem the target refuses never gets a window from it, so input queued
/// for it can never be written. Its writer task must still end with the channel, not park
/// until the bastion stops (it holds up to 64 queued packets).
#[test]
fn a_refused_channel_leaves_no_input_writer_behind() {
    let (bastion, _sshd) = Bastion::with_sshd(None, "", "");
    bastion.grant("alice", "web-1", Duration::from_secs(3_600));
    for _ in 0..3 {
        let (status, stderr) = bastion.refused_subsystem();
        assert_ne!(status.code(), Some(0), "{stderr}");
    }
    wait_for("the input writers to end", Duration::from_secs(10), || {
        (portcullis::ssh::input_writers() == 0).then_some(())
    });
}
