//! Resources the SSH relay must give back (issue #3). Its own test binary: it reads a
//! process-wide count of relay tasks, which other tests running beside it would change.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::process::Stdio;
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
        let mut child = bastion
            .ssh_command(&bastion.key("alice"), "alice+web-1")
            .args(["-s", "no-such-subsystem"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"bytes the target never takes\n")
            .expect("write");
        let status = wait_for("ssh to give up", Duration::from_secs(20), || {
            child.try_wait().expect("poll ssh")
        });
        assert_ne!(status.code(), Some(0));
        drop(stdin);
    }
    wait_for("the input writers to end", Duration::from_secs(10), || {
        (portcullis::ssh::input_writers() == 0).then_some(())
    });
}
