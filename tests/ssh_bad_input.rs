//! Hostile and broken SSH clients (issue #3): garbage instead of a banner, a client that says
//! nothing, one that stalls mid-handshake, and one that opens hundreds of channels. Each is
//! disconnected or refused without a panic, and other clients keep being served.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::bastion::{Bastion, UNREACHED_TARGETS};

/// Tight limits, so the tests see them act quickly.
const LIMITS: &str = "
[limits]
handshake_timeout = \"1s\"
max_channels_per_connection = 16
";

fn bastion() -> Bastion {
    Bastion::start(&format!("{UNREACHED_TARGETS}{LIMITS}"))
}

/// Reads until the bastion closes the connection; returns how long that took.
fn until_closed(mut stream: TcpStream) -> Duration {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return started.elapsed();
            }
            Err(error) => panic!("the bastion kept the connection open: {error}"),
        }
    }
}

fn still_serving(bastion: &Bastion) {
    let (code, stdout, stderr) = bastion.ssh("alice", &["targets"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("web-1"), "{stdout}");
}

#[test]
fn garbage_silence_and_stalls_are_disconnected() {
    let bastion = bastion();
    let address = ("127.0.0.1", bastion.port());

    let mut garbage = TcpStream::connect(address).expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage \x01\x02")
        .expect("send garbage");
    let took = until_closed(garbage);
    assert!(took < Duration::from_secs(5), "garbage held for {took:?}");

    let silent = TcpStream::connect(address).expect("connect");
    let took = until_closed(silent);
    assert!(
        took < Duration::from_secs(5),
        "a silent client held for {took:?}"
    );

    let mut stalled = TcpStream::connect(address).expect("connect");
    stalled
        .write_all(b"SSH-2.0-OpenSSH_9.2 stalls\r\n")
        .expect("send banner");
    let took = until_closed(stalled);
    assert!(
        took < Duration::from_secs(5),
        "a stalled handshake held for {took:?}"
    );

    // An endless stream of bytes before the banner line ends.
    let mut endless = TcpStream::connect(address).expect("connect");
    let chunk = vec![b'A'; 64 * 1024];
    for _ in 0..64 {
        if endless.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = until_closed(endless);

    still_serving(&bastion);
}

#[test]
fn hundreds_of_channels_are_capped_per_connection() {
    let bastion = bastion();
    let opened = bastion.runtime.block_on(async {
        let handle = bastion
            .russh_client("alice", "alice")
            .await
            .expect("alice logs in");
        let mut channels = Vec::new();
        let mut refused = 0;
        for _ in 0..300 {
            match handle.channel_open_session().await {
                Ok(channel) => channels.push(channel),
                Err(_) => refused += 1,
            }
        }
        (channels.len(), refused)
    });
    assert_eq!(opened, (16, 284));
    still_serving(&bastion);
}
