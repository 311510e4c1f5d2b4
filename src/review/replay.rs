//! Replaying what a session did (issue #19): a terminal recording with its timing, or a
//! database session as a psql-like transcript.
//!
//! `Cast::read` checks a finished recording against the hash recorded when it was finalized
//! before anything of it is shown: a replay is evidence, and a changed file is refused with the
//! way to find out more. `Player` is sans-IO: it turns the recording into what to write and how
//! long to wait first, seeks by drawing the screen at a moment from the emulator, and leaves
//! clocks, keys and terminals to `drive` (the host CLI and the SSH front end both use it).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::recording::asciicast::Code;
use crate::recording::screen::Screen;
use crate::store::RecordingRow;

/// The largest recording replayed or exported; it is read whole into memory.
pub const MAX_RECORDING: u64 = 1 << 30;

/// Output a costly seek draws the screen from.
const SEEK_TAIL: usize = 64 * 1024;

/// How far the arrow keys seek.
const SEEK_STEP: f64 = 5.0;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} does not match the SHA-256 recorded when it was finalized: it changed since; \
         run: portcullis audit verify"
    )]
    Changed { path: String },
    #[error("{path} is {size} bytes, more than the {MAX_RECORDING} a replay reads")]
    TooLarge { path: String, size: u64 },
    #[error("{path} line {line} is not a recording event")]
    BadLine { path: String, line: usize },
    #[error("session {session} has no recording {channel}")]
    NoRecording { session: String, channel: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CastEvent {
    /// Seconds since the recording started.
    pub at: f64,
    pub code: Code,
    pub data: String,
}

/// A terminal recording read whole.
#[derive(Debug, Clone)]
pub struct Cast {
    pub header: Value,
    pub width: u32,
    pub height: u32,
    /// The channel had a pty (its header names a terminal type).
    pub pty: bool,
    pub events: Vec<CastEvent>,
}

/// Reads a file of at most `MAX_RECORDING` bytes, checked against its row's hash when the
/// recording is finished.
pub fn read_checked(row: &RecordingRow) -> Result<Vec<u8>, ReviewError> {
    let path = Path::new(&row.path);
    let error = |source| ReviewError::Read {
        path: row.path.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(error)?;
    let size = file.metadata().map_err(error)?.len();
    if size > MAX_RECORDING {
        return Err(ReviewError::TooLarge {
            path: row.path.clone(),
            size,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_RECORDING + 1)
        .read_to_end(&mut bytes)
        .map_err(error)?;
    if let (Some(sha256), Some(expected)) = (&row.sha256, row.size) {
        let same = bytes.len() as u64 == expected && hex::encode(Sha256::digest(&bytes)) == *sha256;
        if !same {
            return Err(ReviewError::Changed {
                path: row.path.clone(),
            });
        }
    }
    Ok(bytes)
}

impl Cast {
    pub fn read(row: &RecordingRow) -> Result<Cast, ReviewError> {
        let bytes = read_checked(row)?;
        Cast::parse(&bytes, &row.path)
    }

    pub fn parse(bytes: &[u8], path: &str) -> Result<Cast, ReviewError> {
        let bad = |line| ReviewError::BadLine {
            path: path.to_string(),
            line,
        };
        let mut lines = bytes
            .split(|byte| *byte == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.is_empty());
        let (_, first) = lines.next().ok_or_else(|| bad(1))?;
        let header: Value = serde_json::from_slice(first).map_err(|_| bad(1))?;
        if header["version"] != 2 {
            return Err(bad(1));
        }
        let mut events = Vec::new();
        for (index, line) in lines {
            let Ok((at, code, data)) = serde_json::from_slice::<(f64, String, String)>(line) else {
                // A crash can leave the last line cut short; anything else is not ours.
                if index + 1 == bytes.split(|byte| *byte == b'\n').count() {
                    break;
                }
                return Err(bad(index + 1));
            };
            let Some(code) = Code::parse(&code) else {
                continue;
            };
            events.push(CastEvent { at, code, data });
        }
        Ok(Cast {
            width: header["width"].as_u64().unwrap_or(80) as u32,
            height: header["height"].as_u64().unwrap_or(24) as u32,
            pty: header["env"]["TERM"].is_string(),
            header,
            events,
        })
    }

    /// What a terminal would be sent for this event: output as it was (a channel without a
    /// pty gets CR LF so it reads right on a terminal), byte events as one line each, nothing
    /// for input, markers and resizes.
    pub fn shown(&self, event: &CastEvent, terminal: bool) -> Option<String> {
        match event.code {
            Code::Output if terminal && !self.pty => {
                Some(event.data.replace("\r\n", "\n").replace('\n', "\r\n"))
            }
            Code::Output => Some(event.data.clone()),
            Code::OutputBytes => {
                let size = event.data.len() / 4 * 3;
                let end = if terminal { "\r\n" } else { "\n" };
                Some(format!(
                    "[stdout: {} binary]{end}",
                    human_bytes(size as u64)
                ))
            }
            _ => None,
        }
    }

    /// The screen after the first `count` events.
    ///
    /// Rendering is bounded like the recorder's (`Screen::too_costly_for`): output made to be
    /// costly is drawn from its last `SEEK_TAIL` bytes instead, which redraw a shell's screen.
    pub fn screen_after(&self, count: usize) -> Screen {
        let events = &self.events[..count.min(self.events.len())];
        if let Some(screen) = self.render(events) {
            return screen;
        }
        let mut tail = 0;
        let mut start = events.len();
        while start > 0 && tail < SEEK_TAIL {
            start -= 1;
            tail += events[start].data.len();
        }
        self.render(&events[start..])
            .unwrap_or_else(|| Screen::new(self.width, self.height, false))
    }

    /// The screen after `events`, or `None` once rendering them costs too much.
    fn render(&self, events: &[CastEvent]) -> Option<Screen> {
        let mut screen = Screen::new(self.width, self.height, false);
        let mut fed = 0u64;
        for event in events {
            match event.code {
                Code::Resize => {
                    let (width, height) = parse_size(&event.data);
                    screen.resize(width, height);
                }
                _ => {
                    if let Some(text) = self.shown(event, true) {
                        fed += text.len() as u64;
                        screen.feed(&text);
                        if screen.too_costly_for(fed) {
                            return None;
                        }
                    }
                }
            }
        }
        Some(screen)
    }
}

/// Everything the recording showed, without timing: what a replay prints when its output is
/// not a terminal.
pub fn plain(cast: &Cast) -> String {
    cast.events
        .iter()
        .filter_map(|event| cast.shown(event, false))
        .collect()
}

/// How a replay runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayOptions {
    pub speed: f64,
    /// Longer pauses are shortened to this.
    pub idle_limit: Option<Duration>,
    /// Where to start, in seconds of the recording.
    pub at: f64,
}

impl Default for PlayOptions {
    fn default() -> Self {
        PlayOptions {
            speed: 1.0,
            idle_limit: None,
            at: 0.0,
        }
    }
}

/// A replay's position, sans-IO: the next thing to write and how long to wait first.
pub struct Player {
    cast: Cast,
    /// Each event's time on the replay's clock: the recording's, with pauses cut to the idle
    /// limit.
    times: Vec<f64>,
    next: usize,
    /// The replay clock, in seconds of `times`.
    now: f64,
    speed: f64,
}

impl Player {
    pub fn new(cast: Cast, options: PlayOptions) -> Player {
        let limit = options.idle_limit.map(|limit| limit.as_secs_f64());
        let mut times = Vec::with_capacity(cast.events.len());
        let (mut last_at, mut clock) = (0.0_f64, 0.0_f64);
        for event in &cast.events {
            let gap = (event.at - last_at).max(0.0);
            clock += limit.map_or(gap, |limit| gap.min(limit));
            last_at = event.at;
            times.push(clock);
        }
        let speed = if options.speed.is_finite() && options.speed > 0.0 {
            options.speed
        } else {
            1.0
        };
        Player {
            cast,
            times,
            next: 0,
            now: 0.0,
            speed,
        }
    }

    /// The replay clock's time of a moment of the recording (they differ once pauses are cut).
    pub fn clock_of(&self, recorded: f64) -> f64 {
        let index = self
            .cast
            .events
            .partition_point(|event| event.at <= recorded);
        match index.checked_sub(1) {
            None => 0.0,
            Some(last) => self.times[last],
        }
    }

    /// The replay clock, in seconds.
    pub fn now(&self) -> f64 {
        self.now
    }

    /// The length of the replay, in seconds of its clock.
    pub fn length(&self) -> f64 {
        self.times.last().copied().unwrap_or(0.0)
    }

    /// The next output and the wall time to wait before writing it; `None` at the end.
    pub fn step(&mut self) -> Option<(Duration, String)> {
        while self.next < self.cast.events.len() {
            let index = self.next;
            let at = self.times[index];
            let wait = Duration::from_secs_f64(((at - self.now) / self.speed).max(0.0));
            self.next += 1;
            let event = &self.cast.events[index];
            let shown = match event.code {
                Code::Resize => {
                    // Tell the viewer's terminal nothing (it has its own size), but keep time.
                    None
                }
                _ => self.cast.shown(event, true),
            };
            if let Some(text) = shown {
                return Some((wait, text));
            }
        }
        None
    }

    /// The wall time until the next output, to advance the clock by when interrupted.
    pub fn advance(&mut self, wall: Duration) {
        let limit = self.times.get(self.next).copied().unwrap_or(self.now);
        self.now = (self.now + wall.as_secs_f64() * self.speed).min(limit.max(self.now));
    }

    /// Marks the pending step as written: the clock stands at its time.
    pub fn written(&mut self) {
        if let Some(at) = self
            .next
            .checked_sub(1)
            .and_then(|index| self.times.get(index))
        {
            self.now = self.now.max(*at);
        }
    }

    /// Jumps to `to` seconds of the replay clock: what to write to show the screen as it was
    /// then (a reset, then the emulator's drawing of it).
    pub fn seek(&mut self, to: f64) -> String {
        let to = to.clamp(0.0, self.length());
        self.next = self.times.partition_point(|at| *at <= to);
        self.now = to;
        let screen = self.cast.screen_after(self.next);
        format!("\x1bc{}", screen.dump())
    }
}

/// What a viewer's key asks of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Pause,
    Back,
    Forward,
    Quit,
}

/// The keys in a chunk of terminal input: space, the arrow keys, `q` (and Ctrl-C).
pub fn keys(input: &[u8]) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut index = 0;
    while index < input.len() {
        match &input[index..] {
            [b'\x1b', b'[' | b'O', b'C', ..] => {
                keys.push(Key::Forward);
                index += 3;
                continue;
            }
            [b'\x1b', b'[' | b'O', b'D', ..] => {
                keys.push(Key::Back);
                index += 3;
                continue;
            }
            [b' ', ..] => keys.push(Key::Pause),
            [b'q' | b'Q' | 0x03 | 0x04, ..] => keys.push(Key::Quit),
            _ => {}
        }
        index += 1;
    }
    keys
}

/// Plays `player` to `output` with its timing, obeying `keys` (space pauses, arrows seek 5 s,
/// `q` quits) until the end or a quit, or until `output` closes.
pub async fn drive(
    mut player: Player,
    start: f64,
    mut input: mpsc::Receiver<Vec<u8>>,
    output: mpsc::Sender<String>,
) {
    let mut paused = false;
    let mut input_open = true;
    if start > 0.0 && output.send(seek(&mut player, start)).await.is_err() {
        return;
    }
    loop {
        if paused {
            match input.recv().await {
                Some(bytes) => {
                    if !obey(&bytes, &mut player, &mut paused, &output).await {
                        return;
                    }
                }
                None => paused = false,
            }
            continue;
        }
        let Some((wait, text)) = player.step() else {
            return;
        };
        let started = tokio::time::Instant::now();
        let key = tokio::select! {
            _ = tokio::time::sleep(wait) => None,
            bytes = input.recv(), if input_open => match bytes {
                Some(bytes) => Some(bytes),
                None => {
                    input_open = false;
                    None
                }
            },
        };
        let Some(bytes) = key else {
            if started.elapsed() < wait {
                // The input closed: wait out the rest.
                tokio::time::sleep(wait.saturating_sub(started.elapsed())).await;
            }
            player.written();
            if output.send(text).await.is_err() {
                return;
            }
            continue;
        };
        // A key during a wait: the event waits again, and the clock moved by what passed.
        player.next -= 1;
        player.advance(started.elapsed());
        if !obey(&bytes, &mut player, &mut paused, &output).await {
            return;
        }
    }
}

/// Does what the keys in `bytes` ask: space toggles the pause, the arrows seek; false to stop
/// (a quit, or the output closed).
async fn obey(
    bytes: &[u8],
    player: &mut Player,
    paused: &mut bool,
    output: &mpsc::Sender<String>,
) -> bool {
    for key in keys(bytes) {
        let step = match key {
            Key::Pause => {
                *paused = !*paused;
                continue;
            }
            Key::Quit => return false,
            Key::Back => -SEEK_STEP,
            Key::Forward => SEEK_STEP,
        };
        let to = player.now() + step;
        if output.send(seek(player, to)).await.is_err() {
            return false;
        }
    }
    true
}

/// `Player::seek` off the async workers: it renders the recording from its start, which for a
/// long one takes long enough to hold up the other tasks of a worker (the runtime must be
/// multi-threaded; the host CLI's and the server's are).
fn seek(player: &mut Player, to: f64) -> String {
    tokio::task::block_in_place(|| player.seek(to))
}

/// A query log as a psql-like transcript: the prompt and statement, its parameters, its result
/// (row count or error) and time, each with its offset in the session. What the client sent and
/// the target answered is shown with control characters escaped: it reaches the reviewer's
/// terminal (issue #19 review: an OSC 52 in a statement would write their clipboard).
pub fn transcript(target: &str, row: &RecordingRow) -> Result<String, ReviewError> {
    let bytes = read_checked(row)?;
    let mut out = String::new();
    for line in bytes.split(|byte| *byte == b'\n') {
        let Ok(record) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let Some(sql) = record["sql"].as_str() else {
            continue;
        };
        let at = record["t"].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "-- {}\n{target}=> {}\n",
            crate::views::offset((at * 1000.0) as i64),
            crate::text::visible_lines(sql.trim_end())
        ));
        // JSON strings: control characters are already escaped.
        // JSON escapes controls below U+0020 only: C1 controls (CSI, OSC) are escaped too.
        if let Some(params) = record["params"].as_array() {
            let shown: Vec<String> = params.iter().map(Value::to_string).collect();
            let shown = crate::text::visible(&shown.join(", "));
            out.push_str(&format!("   parameters: {shown}\n"));
        } else if record["params"].is_string() {
            let shown = crate::text::visible(&record["params"].to_string());
            out.push_str(&format!("   parameters: {shown}\n"));
        }
        let duration = record["duration_ms"]
            .as_f64()
            .map(|ms| format!(" ({ms:.3} ms)"))
            .unwrap_or_default();
        if let Some(error) = record["error"].as_object() {
            out.push_str(&format!(
                "ERROR:  {} {}{duration}\n\n",
                crate::text::visible(error.get("sqlstate").and_then(Value::as_str).unwrap_or("?")),
                crate::text::visible(error.get("message").and_then(Value::as_str).unwrap_or(""))
            ));
            continue;
        }
        let tags: Vec<&str> = record["tags"]
            .as_array()
            .map(|tags| tags.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let rows = match record["rows"].as_u64() {
            Some(1) => " (1 row)".to_string(),
            Some(rows) => format!(" ({rows} rows)"),
            None => String::new(),
        };
        out.push_str(&format!(
            "{}{rows}{duration}\n\n",
            crate::text::visible(&tags.join(", "))
        ));
    }
    Ok(out)
}

/// An offset in a recording: `00:05:12`, `00:05:12.345`, `5:12`, `312` (seconds) or `5m12s`.
pub fn parse_offset(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then_some(seconds);
    }
    if text.contains(':') {
        let mut total = 0.0;
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() > 3 {
            return None;
        }
        for part in parts {
            let value: f64 = part.parse().ok()?;
            if !value.is_finite() || value < 0.0 {
                return None;
            }
            total = total * 60.0 + value;
        }
        return Some(total);
    }
    crate::config::parse_duration(text)
        .ok()
        .map(|duration| duration.as_secs_f64())
}

/// A resize event's `WIDTHxHEIGHT` (80 × 24 where it is not one).
pub fn parse_size(text: &str) -> (u32, u32) {
    let (width, height) = text.split_once('x').unwrap_or(("80", "24"));
    (width.parse().unwrap_or(80), height.parse().unwrap_or(24))
}

/// `1.2 MiB`, `512 B`.
pub fn human_bytes(size: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if size < 1024 {
        return format!("{size} B");
    }
    let mut value = size as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cast(lines: &[&str]) -> Cast {
        let mut text = String::from(
            "{\"version\":2,\"width\":20,\"height\":3,\"timestamp\":0,\"env\":{\"TERM\":\"xterm\"}}\n",
        );
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        Cast::parse(text.as_bytes(), "test.cast").unwrap_or_else(|error| panic!("{error}"))
    }

    fn schedule(player: &mut Player) -> Vec<(u128, String)> {
        let mut steps = Vec::new();
        while let Some((wait, text)) = player.step() {
            player.written();
            steps.push((wait.as_millis(), text));
        }
        steps
    }

    #[test]
    fn speed_and_idle_limit_change_the_waits_as_asked() {
        let recording = cast(&[
            "[1.0, \"o\", \"a\"]",
            "[1.5, \"i\", \"typed\"]",
            "[2.0, \"o\", \"b\"]",
            "[12.0, \"o\", \"c\"]",
            "[12.0, \"m\", \"$ ls\"]",
            "[13.0, \"O\", \"AAAA\"]",
        ]);
        let as_recorded = schedule(&mut Player::new(recording.clone(), PlayOptions::default()));
        assert_eq!(
            as_recorded,
            [
                (1000, "a".to_string()),
                (1000, "b".to_string()),
                (10_000, "c".to_string()),
                (1000, "[stdout: 3 B binary]\r\n".to_string()),
            ]
        );
        let options = PlayOptions {
            speed: 2.0,
            idle_limit: Some(Duration::from_secs(2)),
            at: 0.0,
        };
        let waits: Vec<u128> = schedule(&mut Player::new(recording, options))
            .into_iter()
            .map(|(wait, _)| wait)
            .collect();
        // Halved, and the 10 s pause cut to 2 s first.
        assert_eq!(waits, [500, 500, 1000, 500]);
    }

    #[test]
    fn seeking_draws_the_screen_of_that_moment() {
        let recording = cast(&[
            "[1.0, \"o\", \"first\\r\\n\"]",
            "[2.0, \"o\", \"second\\r\\n\"]",
            "[3.0, \"o\", \"\\u001b[2Jthird\"]",
        ]);
        let mut player = Player::new(recording.clone(), PlayOptions::default());
        let drawn = player.seek(2.5);
        let mut screen = Screen::new(20, 3, false);
        screen.feed(&drawn);
        assert_eq!(screen.text(), ["first", "second", ""]);
        assert_eq!(
            player.step().map(|(_, text)| text).as_deref(),
            Some("\u{1b}[2Jthird")
        );
        let mut later = Screen::new(20, 3, false);
        later.feed(&player.seek(100.0));
        assert!(later.text().concat().contains("third"));
        assert!(player.step().is_none());
    }

    #[test]
    fn offsets_are_read_as_a_reviewer_writes_them() {
        for (text, seconds) in [
            ("00:05:12", Some(312.0)),
            ("00:00:01.250", Some(1.25)),
            ("5:12", Some(312.0)),
            ("312", Some(312.0)),
            ("5m12s", Some(312.0)),
            ("-1", None),
            ("1:2:3:4", None),
            ("NaN", None),
            ("soon", None),
        ] {
            assert_eq!(parse_offset(text), seconds, "{text}");
        }
    }

    #[test]
    fn keys_are_read_from_terminal_input() {
        assert_eq!(
            keys(b" \x1b[C\x1b[Dxq\x1bOC"),
            [Key::Pause, Key::Forward, Key::Back, Key::Quit, Key::Forward]
        );
    }

    #[test]
    fn a_line_that_is_not_an_event_is_refused_unless_cut_at_the_end() {
        let good =
            "{\"version\":2,\"width\":20,\"height\":3}\n[1.0, \"o\", \"a\"]\n[1.5, \"o\", \"b";
        assert_eq!(
            Cast::parse(good.as_bytes(), "x")
                .map(|c| c.events.len())
                .ok(),
            Some(1)
        );
        let bad = "{\"version\":2,\"width\":20,\"height\":3}\n[1.0, \"o\"\n[1.5, \"o\", \"b\"]\n";
        assert!(matches!(
            Cast::parse(bad.as_bytes(), "x"),
            Err(ReviewError::BadLine { line: 2, .. })
        ));
        assert!(Cast::parse(b"not json\n", "x").is_err());
    }
}
