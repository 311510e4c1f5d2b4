//! Issue #19: reviewers find and replay anything. Real `ssh` through the bastion to a real
//! `sshd`, a recorded shell whose commands become markers, and the review commands over them.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::bastion::Bastion;
use support::{require_binary, run, wait_for};

fn hour() -> Duration {
    Duration::from_secs(3_600)
}

/// A shell on `web-1` through the bastion with a pty, typed into line by line; each line waits
/// until what it prints has come back, so the recording has one command a line.
struct Shell {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Shell {
    fn open(bastion: &Bastion, login: &str) -> Shell {
        let mut child = bastion
            .ssh_command(&bastion.key("alice"), login)
            .args(["-tt", "-o", "SetEnv=TERM=xterm"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().expect("stdout");
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = stdout.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                sink.lock()
                    .expect("output")
                    .extend_from_slice(&buffer[..read]);
            }
        });
        Shell { child, output }
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output")).into_owned()
    }

    /// Types `line` and Enter, then waits until `expect` has been printed `times` times.
    fn run(&mut self, line: &str, expect: &str, times: usize) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("type");
        stdin.flush().expect("flush");
        wait_for(line, Duration::from_secs(10), || {
            (self.shown().matches(expect).count() >= times).then_some(())
        });
    }

    fn exit(mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        let _ = stdin.write_all(b"exit\n");
        wait_for("ssh to end", Duration::from_secs(10), || {
            self.child.try_wait().expect("poll ssh")
        });
        self.shown()
    }
}

/// The finalized terminal recordings, as (path, parsed lines).
fn casts(bastion: &Bastion) -> Vec<(PathBuf, Vec<Value>)> {
    let recordings = bastion.config.dir.path().join("recordings");
    support::files_under(&recordings, ".cast")
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read cast");
            let lines = text
                .lines()
                .map(|line| serde_json::from_str(line).expect("each line is JSON"))
                .collect();
            (path, lines)
        })
        .collect()
}

fn wait_for_finalized(bastion: &Bastion, count: usize) {
    wait_for("the recordings", Duration::from_secs(15), || {
        let done = bastion
            .audit_types()
            .iter()
            .filter(|kind| *kind == "recording.finalized")
            .count();
        (done >= count).then_some(())
    });
}

/// A recorded shell where `echo needle-42` and `ls /tmp` are typed gives two command markers
/// (`m`) with their offsets, and the `.cast` still plays in asciinema's own tools.
#[test]
fn issue_19_typed_commands_become_markers_in_the_recording() {
    let (bastion, _sshd) = Bastion::with_sshd(None, "", "");
    bastion.grant("alice", "web-1", hour());
    let mut shell = Shell::open(&bastion, "alice+web-1");
    shell.run("PS1='demo$ '", "demo$ ", 1);
    shell.run("echo needle-$((40 + 2))", "needle-42", 1);
    shell.run("ls /tmp", "demo$ ", 3);
    shell.exit();
    wait_for_finalized(&bastion, 1);

    let casts = casts(&bastion);
    let (path, lines) = &casts[0];
    let markers: Vec<(f64, String)> = lines[1..]
        .iter()
        .filter(|event| event[1] == "m")
        .map(|event| {
            let at = event[0].as_f64().expect("time");
            (at, event[2].as_str().expect("label").to_string())
        })
        .collect();
    let labels: Vec<&str> = markers.iter().map(|(_, label)| label.as_str()).collect();
    let echo = labels
        .iter()
        .position(|label| label.ends_with("echo needle-$((40 + 2))"))
        .unwrap_or_else(|| panic!("no echo marker in {labels:?}"));
    let ls = labels
        .iter()
        .position(|label| *label == "demo$ ls /tmp")
        .unwrap_or_else(|| panic!("no ls marker in {labels:?}"));
    assert!(echo < ls, "{labels:?}");
    assert!(markers[echo].0 <= markers[ls].0);
    // Each marker sits where Enter was pressed: after the keystrokes of its line.
    let typed_at = lines[1..]
        .iter()
        .find(|event| {
            event[1] == "i"
                && event[2]
                    .as_str()
                    .is_some_and(|text| text.contains("ls /tmp"))
        })
        .and_then(|event| event[0].as_f64())
        .expect("the ls keystrokes");
    assert!(
        (markers[ls].0 - typed_at).abs() < 0.001,
        "{typed_at} {markers:?}"
    );

    // asciinema's own tool still reads the recording (it wants a terminal: `script` gives it
    // one).
    let asciinema = require_binary("asciinema", &[], "asciinema");
    let script = require_binary("script", &[], "bsdutils");
    let (code, stdout, stderr) = run(Command::new(script).args([
        "-qec",
        &format!("{} cat {}", asciinema.display(), path.display()),
        "/dev/null",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("needle-42"), "{stdout}");
}
