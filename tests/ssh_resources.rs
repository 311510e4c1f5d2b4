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

/// Issue #17: a connection with no channel left (an idle ControlMaster, `ssh -N`) inside the
/// expiry-warning window: the warning has nobody to go to. The grant supervisor re-armed it and
/// was woken again at once, spinning a core; it must wake about once a second at most.
#[test]
fn issue_17_the_grant_supervisor_does_not_spin_without_channels() {
    let (bastion, _sshd) = Bastion::with_sshd(None, "", "");
    bastion.grant("alice", "web-1", Duration::from_secs(3_600));
    bastion.runtime.block_on(async {
        let handle = bastion
            .russh_client("alice", "alice+web-1")
            .await
            .expect("alice logs in");
        let mut channel = handle.channel_open_session().await.expect("a channel");
        channel.exec(true, "true").await.expect("exec");
        while channel.wait().await.is_some() {}
        // Into the 5-minute warning window, with no channel to warn.
        bastion.advance(Duration::from_secs(56 * 60));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = portcullis::ssh::supervisor_wakeups();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let woken = portcullis::ssh::supervisor_wakeups() - before;
        assert!(woken <= 5, "woken {woken} times in 3 s");
        drop(handle);
    });
}
