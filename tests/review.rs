//! Issue #19: reviewers find and replay anything. Real `ssh` through the bastion to a real
//! `sshd`, a recorded shell whose commands become markers, and the review commands over them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::access::Viewer;
use portcullis::store::SessionFilter;
use serde_json::Value;
use support::bastion::Bastion;
use support::{Postgres, Sshd, require_binary, run, wait_for};

fn hour() -> Duration {
    Duration::from_secs(3_600)
}

/// A bastion with `web-1` on a real `sshd` and `prod-db` on a real PostgreSQL.
fn bastion_sshd_and_postgres() -> (Bastion, Sshd, Postgres) {
    let postgres = Postgres::start();
    let password_file = postgres.dir.path().join("bastion-password");
    std::fs::write(&password_file, &postgres.password).expect("password file");
    let database = format!(
        "\n[[targets]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:{}\"\n\
         database = \"postgres\"\nlogin = \"{}\"\npassword_file = \"{}\"\ntls = \"disable\"\n\
         requestable_by = [\"engineer\"]\napprovers = [\"leader\"]\nmax_duration = \"2h\"\n",
        postgres.port,
        postgres.superuser,
        password_file.display()
    );
    let (bastion, sshd) = Bastion::with_sshd(None, &database, "");
    (bastion, sshd, postgres)
}

/// `psql` through the bastion as alice to prod-db, running `sql`.
fn psql(bastion: &Bastion, postgres: &Postgres, sql: &str) -> String {
    let (code, token, stderr) = bastion.ssh("alice", &["token", "prod-db"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(Command::new(postgres.tool("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=prod-db sslmode=require",
            bastion.postgres_port()
        ))
        .args(["-X", "-A", "-t", "-c", sql])
        .env("PGPASSWORD", token.trim()));
    assert_eq!(code, 0, "{stderr}");
    stdout
}

/// `sessions --grep` on the host CLI, as JSON.
fn grep(bastion: &Bastion, text: &str) -> Vec<Value> {
    let (code, stdout, stderr) = run(&mut bastion
        .config
        .portcullis(&["sessions", "--json", "--grep", text]));
    assert_eq!(code, 0, "{stderr}");
    let value: Value = serde_json::from_str(&stdout).expect("json");
    value["sessions"].as_array().cloned().unwrap_or_default()
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
    shell.run("PS1='demo$ '", "demo$ ", 2);
    shell.run("echo needle-$((40 + 2))", "needle-42", 1);
    shell.run("ls /tmp", "demo$ ", 3);
    shell.exit();
    wait_for_finalized(&bastion, 1);

    let casts = bastion.casts();
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
        .position(|label| label.ends_with("ls /tmp"))
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

/// Exact search over what sessions showed, typed, ran as SQL and named as files: the session
/// where `needle-42` was typed is found with its offset, one where it was not is not; a SQL
/// statement and a renamed SFTP path are found; a user without a role sees none of it.
#[test]
fn issue_19_grep_finds_commands_screen_text_sql_and_file_paths() {
    let (bastion, sshd, postgres) = bastion_sshd_and_postgres();
    bastion.grant("alice", "web-1", hour());
    bastion.grant("alice", "prod-db", hour());

    let mut shell = Shell::open(&bastion, "alice+web-1");
    shell.run("PS1='demo$ '", "demo$ ", 2);
    shell.run("echo needle-42 printed", "needle-42 printed", 2);
    // What a full-screen program showed is searchable too (it scrolls nothing off the primary
    // screen): here a line drawn on the alternate screen, then left.
    shell.run(
        "printf '\\033[?1049h'; echo full-$((4*4))-screen; printf '\\033[?1049l'",
        "full-16-screen",
        1,
    );
    shell.exit();
    let mut other = Shell::open(&bastion, "alice+web-1");
    other.run("echo haystack-only", "haystack-only", 2);
    other.exit();
    psql(&bastion, &postgres, "SELECT 'sql-needle-9' AS found");

    let local = tempfile::tempdir().expect("tempdir");
    let source = local.path().join("upload.txt");
    std::fs::write(&source, "content\n").expect("write");
    let remote = sshd.dir.path();
    let batch = local.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nrename {} {}\n",
            source.display(),
            remote.join("plain.txt").display(),
            remote.join("plain.txt").display(),
            remote.join("renamed-needle-7.txt").display(),
        ),
    )
    .expect("write batch");
    let mut sftp = Command::new(require_binary("sftp", &[], "openssh-client"));
    sftp.args(support::client_options(
        &bastion.known_hosts,
        &bastion.key("alice"),
    ))
    .arg("-b")
    .arg(&batch)
    .args(["-P", &bastion.port().to_string(), "alice+web-1@127.0.0.1"]);
    let (code, _, stderr) = run(&mut sftp);
    assert_eq!(code, 0, "sftp: {stderr}");

    // Searchable within seconds of the output.
    let found = wait_for("the index", Duration::from_secs(15), || {
        let found = grep(&bastion, "renamed-needle-7");
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["hits"][0]["kind"], "file");

    let needle = wait_for("the shell in the index", Duration::from_secs(15), || {
        let found = grep(&bastion, "needle-42");
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(
        needle.len(),
        1,
        "only the session where it was typed: {needle:#?}"
    );
    let hits = needle[0]["hits"].as_array().expect("hits");
    let command = hits
        .iter()
        .find(|hit| hit["kind"] == "command")
        .unwrap_or_else(|| panic!("no command hit: {hits:#?}"));
    // The prompt is in the label when its output was recorded before the keystrokes; the
    // client may answer a prompt before the bastion has recorded it, so only the command is
    // certain.
    assert!(
        command["text"]
            .as_str()
            .is_some_and(|text| text.ends_with("echo needle-42 printed")),
        "{command}"
    );
    assert!(
        command["at"]
            .as_str()
            .is_some_and(|at| at.starts_with("00:00:"))
    );
    assert!(
        hits.iter()
            .any(|hit| hit["kind"] == "screen" && hit["text"] == "needle-42 printed"),
        "what the screen showed: {hits:#?}"
    );
    assert!(grep(&bastion, "haystack-only").len() == 1);
    let full_screen = grep(&bastion, "full-16-screen");
    assert_eq!(full_screen.len(), 1, "{full_screen:#?}");
    assert!(
        full_screen[0]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|hit| hit["kind"] == "screen" && hit["text"] == "full-16-screen")
    );

    let sql = wait_for("the statement", Duration::from_secs(15), || {
        let found = grep(&bastion, "SQL-NEEDLE-9");
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(sql[0]["protocol"], "postgres");
    assert_eq!(sql[0]["hits"][0]["kind"], "statement");

    // Over SSH, an approver of both targets finds it; a user without a role or an approval
    // finds nothing of alice's.
    let (code, stdout, stderr) = bastion.ssh("carol", &["sessions", "--grep", "needle-42"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("echo needle-42 printed"), "{stdout}");
    let filter = SessionFilter {
        limit: 100,
        ..Default::default()
    };
    let erin = bastion
        .access()
        .find_sessions(&Viewer::User("erin".into()), filter, Some("needle-42"))
        .expect("search");
    assert!(erin.is_empty(), "{erin:?}");
    let (code, _, stderr) = bastion.ssh("carol", &["sessions", "--grep", "ab"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("3 to 1000 characters"), "{stderr}");
    // Wildcards alone would have the index answer every row: refused.
    let (code, _, stderr) = bastion.ssh("carol", &["sessions", "--grep", "a%b_c%%"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("3 characters in a row that are not % or _"),
        "{stderr}"
    );

    // Each search is a control event with what was searched.
    let searches: Vec<Value> = bastion
        .audit()
        .into_iter()
        .filter(|event| event["type"] == "sessions.searched")
        .collect();
    assert!(
        searches
            .iter()
            .any(|event| event["detail"]["grep"] == "needle-42" && event["actor"] == "carol")
    );
}

/// The id of the newest session of `protocol`.
fn newest_session(bastion: &Bastion, protocol: &str) -> String {
    wait_for("the session", Duration::from_secs(10), || {
        bastion
            .audit()
            .into_iter()
            .rev()
            .find(|event| {
                event["type"] == "session.started" && event["detail"]["protocol"] == protocol
            })
            .and_then(|event| event["session_id"].as_str().map(str::to_string))
    })
}

/// The text a terminal of `width` × `height` shows after `bytes`.
fn screen_of(bytes: &str, width: u32, height: u32) -> Vec<String> {
    let mut screen = portcullis::recording::screen::Screen::new(width, height, false);
    screen.feed(bytes);
    screen.text()
}

/// A pty session replays to the screen its user saw; over SSH a reviewer replays it too, and
/// each look is audited. Exports: a `.cast` asciinema plays, a JSON timeline, plain text.
#[test]
fn issue_19_a_replay_ends_on_the_screen_the_user_saw() {
    let (bastion, _sshd) = Bastion::with_sshd(None, "", "");
    bastion.grant("alice", "web-1", hour());
    let mut shell = Shell::open(&bastion, "alice+web-1");
    shell.run("PS1='demo$ '", "demo$ ", 2);
    shell.run("printf 'a\\033[31mred\\033[0m\\n'; seq 1 40", "\n40", 1);
    shell.run("clear; echo after-clear-$((6*7))", "after-clear-42", 1);
    shell.run(
        "printf 'abc\\rX\\033[2Cy\\n'; echo done-$((1+1))",
        "done-2",
        1,
    );
    let seen = shell.exit();
    wait_for_finalized(&bastion, 1);
    let session = newest_session(&bastion, "ssh");
    let (path, lines) = bastion.casts().remove(0);
    let (width, height) = (
        lines[0]["width"].as_u64().unwrap() as u32,
        lines[0]["height"].as_u64().unwrap() as u32,
    );

    // On the host, output that is not a terminal: the recording's output, whole.
    let (code, replayed, stderr) = run(&mut bastion.config.portcullis(&["replay", &session]));
    assert_eq!(code, 0, "{stderr}");
    let user_saw = screen_of(&seen, width, height);
    assert_eq!(screen_of(&replayed, width, height), user_saw);
    assert!(
        user_saw.iter().any(|line| line == "after-clear-42"),
        "{user_saw:#?}"
    );

    // Over SSH without a terminal, the same; with one, played with its timing and keys.
    let (code, over_ssh, stderr) = bastion.ssh("carol", &["replay", &session]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(screen_of(&over_ssh, width, height), user_saw);
    let output = bastion
        .ssh_command(&bastion.key("carol"), "carol")
        .args([
            "-tt",
            "replay",
            &session,
            "--speed",
            "100",
            "--idle-limit",
            "1s",
        ])
        .stdin(Stdio::piped())
        .output()
        .expect("ssh -tt replay");
    assert_eq!(output.status.code(), Some(0));
    let played = String::from_utf8_lossy(&output.stdout);
    assert!(played.contains("after-clear-42"), "{played}");
    // --at starts from the screen of that moment.
    let output = bastion
        .ssh_command(&bastion.key("carol"), "carol")
        .args(["-tt", "replay", &session, "--at", "99:00:00"])
        .stdin(Stdio::piped())
        .output()
        .expect("ssh -tt replay --at");
    assert_eq!(output.status.code(), Some(0));
    let drawn = String::from_utf8_lossy(&output.stdout);
    assert!(
        drawn.starts_with("\u{1b}c"),
        "a reset, then the screen: {drawn:?}"
    );
    assert!(drawn.contains("after-clear-42"), "{drawn:?}");

    // Erin may neither see nor replay it; the bastion says the same as for no session.
    let (code, _, stderr) =
        bastion.ssh_with(&bastion.key("carol"), "carol", &["replay", "s-zzzzzzzz"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no session s-zzzzzzzz that you may see"),
        "{stderr}"
    );
    let refused = bastion.access().view_session(
        &Viewer::User("erin".into()),
        &session,
        portcullis::audit::ViewKind::Replay,
    );
    assert!(refused.is_err());

    // Exports.
    let (code, cast, stderr) = run(&mut bastion
        .config
        .portcullis(&["export", &session, "--format", "cast"]));
    assert_eq!(code, 0, "{stderr}");
    let exported = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(exported.path(), &cast).unwrap();
    assert_eq!(
        cast.lines().filter(|line| line.contains("\"m\"")).count(),
        lines.iter().filter(|event| event[1] == "m").count()
    );
    let asciinema = require_binary("asciinema", &[], "asciinema");
    let script = require_binary("script", &[], "bsdutils");
    let (code, shown, stderr) = run(Command::new(script).args([
        "-qec",
        &format!("{} cat {}", asciinema.display(), exported.path().display()),
        "/dev/null",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(shown.contains("after-clear-42"));
    let (code, timeline, stderr) = bastion.ssh("carol", &["export", &session, "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let timeline: Value = serde_json::from_str(&timeline).unwrap();
    assert_eq!(timeline["session"]["id"], session.as_str());
    let commands: Vec<&str> = timeline["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|command| command["command"].as_str())
        .collect();
    assert!(
        commands
            .iter()
            .any(|command| command.ends_with("clear; echo after-clear-$((6*7))")),
        "{commands:?}"
    );
    assert!(
        timeline["control_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["type"] == "session.started")
    );
    assert_eq!(timeline["recordings"][0]["sha256"], lines_hash(&path));
    let (code, text, stderr) = bastion.ssh("carol", &["export", &session, "--format", "txt"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(text.lines().any(|line| line == "Xbcy"), "{text}");
    assert!(!text.contains('\u{1b}'), "plain text: {text:?}");

    // Alice may export her own session, but not learn who reviewed it.
    let (code, own, stderr) = bastion.ssh("alice", &["export", &session, "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let own: Value = serde_json::from_str(&own).unwrap();
    let types: Vec<&str> = own["control_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["type"].as_str())
        .collect();
    assert!(types.contains(&"session.started"), "{types:?}");
    assert!(!types.contains(&"recording.viewed"), "{types:?}");

    // Every look is a control event.
    let views: Vec<String> = bastion
        .audit()
        .into_iter()
        .filter(|event| event["type"] == "recording.viewed")
        .map(|event| {
            format!(
                "{} {}",
                event["actor"].as_str().unwrap_or(""),
                event["detail"]["how"].as_str().unwrap_or("")
            )
        })
        .collect();
    for expected in ["carol replay", "carol export-json", "carol export-txt"] {
        assert!(
            views.iter().any(|view| view == expected),
            "{expected} in {views:?}"
        );
    }
    assert!(
        views
            .iter()
            .any(|view| view.ends_with(" export-cast") && view.starts_with("operator:"))
    );

    // A changed recording is refused, not shown.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let (code, _, stderr) = run(&mut bastion.config.portcullis(&["replay", &session]));
    assert_eq!(code, 1);
    assert!(stderr.contains("does not match the SHA-256"), "{stderr}");
}

fn lines_hash(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A database session replays as a psql-like transcript, its statements in order.
#[test]
fn issue_19_a_database_session_replays_its_statements_in_order() {
    let (bastion, _sshd, postgres) = bastion_sshd_and_postgres();
    bastion.grant("alice", "prod-db", hour());
    psql(
        &bastion,
        &postgres,
        "CREATE TABLE replayed (id int); INSERT INTO replayed VALUES (1), (2); \
         SELECT count(*) FROM replayed; DROP TABLE replayed; \
         SELECT E'\\x1b]52;c;aGVsbG8=\\x07' AS clipboard",
    );
    wait_for_finalized(&bastion, 1);
    let session = newest_session(&bastion, "postgres");
    let (code, transcript, stderr) = bastion.ssh("carol", &["replay", &session]);
    assert_eq!(code, 0, "{stderr}");
    let statements: Vec<&str> = transcript
        .lines()
        .filter_map(|line| line.strip_prefix("prod-db=> "))
        .collect();
    let expected = [
        "CREATE TABLE replayed (id int)",
        "INSERT INTO replayed VALUES (1), (2)",
        "SELECT count(*) FROM replayed",
        "DROP TABLE replayed",
    ];
    // psql sends the whole -c string as one Query; each statement is its own line in the log,
    // or the whole string is one line: either way, in order.
    let joined = statements.join("; ");
    assert!(joined.contains(&expected.join("; ")), "{transcript}");
    assert!(transcript.contains("INSERT 0 2"), "{transcript}");
    // What the client sent reaches the reviewer's terminal escaped: no OSC 52 to the clipboard.
    assert!(!transcript.contains('\u{1b}'), "{transcript:?}");
    assert!(transcript.contains("\\x1b]52"), "{transcript}");
    let (code, timeline, stderr) = run(&mut bastion
        .config
        .portcullis(&["export", &session, "--format", "json"]));
    assert_eq!(code, 0, "{stderr}");
    let timeline: Value = serde_json::from_str(&timeline).unwrap();
    assert!(!timeline["statements"].as_array().unwrap().is_empty());
}

/// A reviewer watches a live shell read-only: the current screen first, then live output; the
/// watched user is told who watches. Then a kill ends it with the reason on the user's screen,
/// and a database session is killed from the host CLI, through the store.
#[test]
fn issue_19_watch_a_live_session_then_kill_it_and_a_database_session() {
    let (bastion, _sshd, postgres) = bastion_sshd_and_postgres();
    bastion.grant("alice", "web-1", hour());
    let mut shell = Shell::open(&bastion, "alice+web-1");
    shell.run("PS1='demo$ '", "demo$ ", 2);
    shell.run("echo before-watch-$((1+2))", "before-watch-3", 1);
    let session = newest_session(&bastion, "ssh");

    // Alice is neither a reviewer nor an approver: no watching, no killing, even her own.
    let (code, _, stderr) = bastion.ssh("alice", &["kill", &session, "--reason", "mine"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("only a reviewer or an approver of web-1"),
        "{stderr}"
    );

    let mut watcher = bastion
        .ssh_command(&bastion.key("carol"), "carol")
        .args(["-tt", "watch", &session])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the watch");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = watcher.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read) = stdout.read(&mut buffer) {
            if read == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buffer[..read]);
        }
    });
    let watched = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    wait_for("the current screen", Duration::from_secs(10), || {
        watched().contains("before-watch-3").then_some(())
    });
    wait_for("alice told who watches", Duration::from_secs(10), || {
        shell
            .shown()
            .contains("carol is watching this session")
            .then_some(())
    });
    shell.run("echo live-$((70+7))", "live-77", 1);
    wait_for("the live output", Duration::from_secs(5), || {
        watched().contains("live-77").then_some(())
    });
    // What the watcher types never reaches the session.
    watcher
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo injected-$((5*5))\r")
        .unwrap();
    shell.run("echo still-$((8*8))", "still-64", 1);
    assert!(!shell.shown().contains("injected-25"));
    assert!(!watched().contains("injected-25"));

    let (code, stdout, stderr) = bastion.ssh(
        "carol",
        &["kill", &session, "--reason", "suspicious", "activity"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ends within a second"), "{stdout}");
    wait_for("alice's session to end", Duration::from_secs(5), || {
        shell.child.try_wait().unwrap()
    });
    assert!(
        shell
            .shown()
            .contains("session on web-1 ended by carol: suspicious activity"),
        "{}",
        shell.shown()
    );
    wait_for("the watch to end", Duration::from_secs(5), || {
        watcher.try_wait().unwrap()
    });
    let ended = wait_for("session.ended", Duration::from_secs(5), || {
        bastion.audit().into_iter().find(|event| {
            event["type"] == "session.ended" && event["session_id"] == session.as_str()
        })
    });
    assert_eq!(ended["detail"]["reason"], "killed", "{ended}");
    let audit = bastion.audit();
    assert!(
        audit
            .iter()
            .any(|event| event["type"] == "session.kill_requested"
                && event["actor"] == "carol"
                && event["detail"]["reason"] == "suspicious activity")
    );
    assert!(
        audit
            .iter()
            .any(|event| event["type"] == "recording.viewed" && event["detail"]["how"] == "watch")
    );
    let (code, _, stderr) = bastion.ssh("carol", &["kill", &session, "--reason", "again"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("has ended"), "{stderr}");

    // A database session, from the host CLI (another process: through the store).
    bastion.grant("alice", "prod-db", hour());
    let (code, token, stderr) = bastion.ssh("alice", &["token", "prod-db"]);
    assert_eq!(code, 0, "{stderr}");
    let sleeping = Command::new(postgres.tool("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=prod-db sslmode=require",
            bastion.postgres_port()
        ))
        .args(["-X", "-c", "SELECT pg_sleep(60)"])
        .env("PGPASSWORD", token.trim())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let database = newest_session(&bastion, "postgres");
    let started = std::time::Instant::now();
    let (code, _, stderr) = run(&mut bastion.config.portcullis(&[
        "kill",
        &database,
        "--reason",
        "end of the maintenance window",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let output = sleeping.wait_with_output().unwrap();
    eprintln!(
        "database session ended {:?} after the kill",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("ended by operator:") && stderr.contains("end of the maintenance window"),
        "{stderr}"
    );
}

/// The quarterly access review for a fixture period: its CSV matches the expected table
/// exactly, and a reason that a spreadsheet would run as a formula is quoted.
#[test]
fn issue_19_the_access_report_of_a_period_matches_the_expected_csv() {
    let (bastion, _sshd) = Bastion::with_sshd(None, "", "");
    let start = bastion.now();
    let access = bastion.access();
    // A refused session (no grant yet), a denied request, an approved one used once, and
    // erin's request still pending.
    let (code, _, _) = bastion.ssh_with(&bastion.key("alice"), "alice+web-1", &["true"]);
    assert_ne!(code, 0);
    let denied = access
        .request("alice", "web-1", Some(hour()), "=cmd|' /C calc'!A0")
        .unwrap();
    access.deny("carol", &denied.id, "no").unwrap();
    let grant = bastion.grant("alice", "web-1", hour());
    let (code, _, stderr) =
        bastion.ssh_with(&bastion.key("alice"), "alice+web-1", &["echo", "used"]);
    assert_eq!(code, 0, "{stderr}");
    access
        .request("erin", "web-1", Some(hour()), "later work, maybe")
        .unwrap();
    let session = newest_session(&bastion, "ssh");
    wait_for("the command indexed", Duration::from_secs(15), || {
        let index = access.search_index().unwrap();
        (index
            .entries_of(&session, portcullis::store::search::EntryKind::Command)
            .unwrap()
            .len()
            == 1)
            .then_some(())
    });
    let ends_at = access.grant_by_id(&grant).unwrap().unwrap().ends_at;

    let rfc = |at: time::OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let from = rfc(start - time::Duration::minutes(1));
    let to = rfc(start + time::Duration::minutes(10));
    let (code, csv, stderr) = run(&mut bastion.config.portcullis(&[
        "report", "access", "--from", &from, "--to", &to, "--format", "csv",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let expected = format!(
        "section,user,target,approver,requests,approved,denied,other,reasons,approvers,\
         granted_seconds,sessions,commands,statements,refusals,grant,ends_at\r\n\
         access,alice,web-1,,2,1,1,0,'=cmd|' /C calc'!A0 | INC-1 test,bob,3600,1,1,0,1,,\r\n\
         access,erin,web-1,,1,0,0,1,\"later work, maybe\",,0,0,0,0,0,,\r\n\
         approver,alice,web-1,bob,,1,,,,,,,,,,,\r\n\
         standing,alice,web-1,,,,,,,bob,,,,,,{grant},{}\r\n",
        rfc(ends_at)
    );
    assert_eq!(csv, expected);

    let (code, markdown, stderr) = run(&mut bastion.config.portcullis(&[
        "report", "access", "--from", &from, "--to", &to, "--format", "md",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(markdown.contains("## Grants standing at the end of the period"));
    assert!(
        markdown.contains("| =cmd\\|' /C calc'!A0 \\| INC-1 test |"),
        "{markdown}"
    );
    let (code, json, stderr) = run(&mut bastion
        .config
        .portcullis(&["report", "access", "--from", &from, "--to", &to, "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["access"][0]["refusals"], 1);
    assert_eq!(json["standing"][0]["grant"], grant.as_str());
    assert!(
        bastion
            .audit()
            .iter()
            .any(|event| event["type"] == "report.generated")
    );

    // A period that ends before it starts is refused.
    let (code, _, stderr) = run(&mut bastion.config.portcullis(&[
        "report",
        "access",
        "--from",
        "2026-09-30",
        "--to",
        "2026-07-01",
    ]));
    assert_ne!(code, 0);
    assert!(stderr.contains("--to must be after --from"), "{stderr}");
}
