//! What a terminal showed (issue #19): asciinema's own emulator (`avt`) fed with a recording's
//! output, so a command entry is the line the user saw when they pressed Enter, search indexes
//! the text a reviewer would have read (without escape sequences, with edits and redraws
//! applied), a replay can say what the final screen was, and a watcher starts from the current
//! screen.
//!
//! Pure and synchronous: the recorder feeds it on the cast writer, the indexer from the files,
//! replay from a file. A fault in the emulator cannot reach the recording: it only reads text.

use std::time::{Duration, Instant};

use avt::parser::{DecMode, Function};
use avt::{Line, Observation, Observer, Operation, ScreenKind, Terminal};

/// Longest command entry kept; a longer line is cut with `…`.
pub const MAX_COMMAND: usize = 1024;

/// The emulator's size at most and at least, whatever a client announces: a grid is allocated
/// at this size, and some sequences write every cell of it (issue #19 review: 1000 × 500 made
/// `ESC # 8` half a million writes for three bytes), and a narrow one cuts commands to
/// nothing.
const MAX_SIZE: (u32, u32) = (400, 200);
const MIN_SIZE: (u32, u32) = (20, 2);

/// A transcript line longer than this is let go in pieces: output without a newline must not
/// grow memory without end.
const MAX_PENDING: usize = 64 * 1024;

/// How much emulation a channel may cost: a burst, then a share of one core. Output that costs
/// more (sequences that rewrite the whole screen for a few bytes, on repeat) stops the
/// emulation for the channel rather than slow every session recorded beside it.
const BUDGET_BURST: Duration = Duration::from_secs(2);
const BUDGET_SHARE: f64 = 0.2;

/// The emulator of one channel's terminal.
pub struct Screen {
    terminal: Terminal,
    /// Lines that left the screen (and, at the end, the screen itself), for the search index.
    transcript: Option<Transcript>,
    /// When the emulator started, and how long it has worked: the budget.
    started: Instant,
    spent: Duration,
}

/// Plain text of the lines that leave the primary screen, soft-wrapped rows joined, as avt's
/// own `Transcript` does, but with a line cut at `MAX_PENDING`.
#[derive(Default)]
struct Transcript {
    pending: String,
    ready: Vec<String>,
    /// A hash of the last screen kept whole, to keep a repeated one once.
    last_kept: u64,
}

impl Transcript {
    fn keep_once(&mut self, lines: Vec<String>) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        lines.hash(&mut hasher);
        let seen = hasher.finish();
        if seen != self.last_kept && !lines.is_empty() {
            self.last_kept = seen;
            self.ready.extend(lines);
        }
    }

    fn push(&mut self, line: &Line) {
        self.pending.extend(line.chars());
        if !line.is_wrapped() || self.pending.len() >= MAX_PENDING {
            self.ready.push(self.pending.trim_end().to_owned());
            self.pending.clear();
        }
    }

    fn finish(mut self, terminal: &Terminal) -> Vec<String> {
        if terminal.active_screen_kind() == ScreenKind::Alternate {
            self.ready.extend(visible_text(terminal));
        }
        let start = self.ready.len();
        for line in terminal.primary_screen().all_lines() {
            self.push(line);
        }
        if !self.pending.is_empty() {
            self.ready.push(self.pending.trim_end().to_owned());
        }
        while self.ready.len() > start && self.ready.last().is_some_and(String::is_empty) {
            self.ready.pop();
        }
        self.ready
    }
}

impl Observer for Transcript {
    type Output = Vec<String>;

    /// What a full-screen program (an editor, `less`, `tmux`) showed last is kept as it leaves
    /// the alternate screen: avt's own transcript keeps the primary screen only, and a session
    /// lived inside `tmux` would leave nothing to search (issue #19 review).
    ///
    /// A hard reset (`reset`, `ESC c`) wipes the primary screen without letting its rows
    /// scroll off: they are kept first, as avt's own transcript does; an erase of the alternate
    /// screen (`clear` inside `tmux`) keeps what it erases. The same screen kept twice in a
    /// row is kept once, so repeating such a sequence cannot multiply the text.
    fn before(&mut self, context: &mut Observation<'_>, operation: &Operation) {
        let terminal = context.terminal();
        let alternate = terminal.active_screen_kind() == ScreenKind::Alternate;
        let (keep_alternate, keep_primary) = match operation {
            Operation::Function(Function::Decrst(modes)) => {
                let leaving = modes.as_slice().iter().any(|mode| {
                    matches!(
                        mode,
                        DecMode::AltScreenBuffer | DecMode::SaveCursorAltScreenBuffer
                    )
                });
                (leaving && alternate, false)
            }
            Operation::Function(Function::Ed(_)) => (alternate, false),
            Operation::Function(Function::Ris) => (alternate, true),
            _ => (false, false),
        };
        if keep_alternate {
            let lines = visible_text(terminal);
            self.keep_once(lines);
        }
        if keep_primary {
            let lines: Vec<String> = terminal
                .primary_screen()
                .all_lines()
                .map(|line| line.text().trim_end().to_string())
                .filter(|line| !line.trim().is_empty())
                .collect();
            self.keep_once(lines);
        }
    }

    fn evicted(&mut self, _: &mut Observation<'_>, line: &Line) {
        self.push(line);
    }

    fn end(&mut self, _: &mut Observation<'_>) -> Self::Output {
        std::mem::take(&mut self.ready)
    }
}

impl Screen {
    /// A screen of `width` × `height` (zero is taken as the usual 80 × 24). With `transcript`,
    /// `feed` returns the lines that scroll off the primary screen.
    pub fn new(width: u32, height: u32, transcript: bool) -> Screen {
        let (width, height) = size(width, height);
        let terminal = Terminal::new(width, height)
            .or_else(|_| Terminal::new(80, 24))
            .unwrap_or_else(|_| unreachable_terminal());
        Screen {
            terminal,
            transcript: transcript.then(Transcript::default),
            started: Instant::now(),
            spent: Duration::ZERO,
        }
    }

    /// Feeds terminal output; returns the finished lines that left the screen (none without a
    /// transcript).
    pub fn feed(&mut self, text: &str) -> Vec<String> {
        let started = Instant::now();
        let lines = match self.transcript.as_mut() {
            Some(transcript) => self.terminal.feed_with(text, transcript),
            None => {
                self.terminal.feed(text);
                Vec::new()
            }
        };
        self.spent += started.elapsed();
        lines
    }

    /// Whether this channel's output has cost more emulation than its budget allows: a burst,
    /// then a fifth of a core. Owners stop feeding it then.
    pub fn over_budget(&self) -> bool {
        let allowed =
            BUDGET_BURST.as_secs_f64() + self.started.elapsed().as_secs_f64() * BUDGET_SHARE;
        self.spent.as_secs_f64() > allowed
    }

    pub fn resize(&mut self, width: u32, height: u32) -> Vec<String> {
        let (width, height) = size(width, height);
        match self.transcript.as_mut() {
            Some(transcript) => self.terminal.resize_with(width, height, transcript),
            None => {
                self.terminal.resize(width, height);
                Vec::new()
            }
        }
    }

    /// Whether emulating `bytes` of output has cost more than rendering them at 5 MB/s after a
    /// second's allowance: output made to be costly (the indexer then stops emulating it, so
    /// one recording cannot hold back the index of all).
    pub fn too_costly_for(&self, bytes: u64) -> bool {
        self.spent.as_secs_f64() > 1.0 + bytes as f64 / 5e6
    }

    /// The rows of the alternate screen while a full-screen program shows it: the indexer
    /// snapshots them every few seconds (a session lived inside `tmux` is searchable).
    pub fn alternate_text(&self) -> Option<Vec<String>> {
        (self.terminal.active_screen_kind() == ScreenKind::Alternate)
            .then(|| visible_text(&self.terminal))
    }

    /// Whether a full-screen program is showing (the alternate screen).
    pub fn full_screen(&self) -> bool {
        self.terminal.active_screen_kind() == ScreenKind::Alternate
    }

    /// The line at the cursor, trimmed: what a shell's prompt and the typed command look like
    /// as Enter is pressed (in a full-screen program, the line being edited; callers say so).
    pub fn line_at_cursor(&self) -> Option<String> {
        // A command longer than the screen is wide wraps: its rows are joined, from the first
        // row of the logical line to the cursor's.
        let screen = self.terminal.screen();
        let mut row = self.terminal.cursor().row;
        while row > 0 && screen.line(row - 1).is_some_and(Line::is_wrapped) {
            row -= 1;
        }
        let mut line = String::new();
        for index in row..=self.terminal.cursor().row {
            line.extend(screen.line(index)?.chars());
            if line.len() > MAX_COMMAND * 4 {
                break;
            }
        }
        Some(line.trim().to_string())
    }

    /// The visible screen, one string a row, trailing blanks trimmed.
    pub fn text(&self) -> Vec<String> {
        self.terminal
            .screen()
            .visible_lines()
            .map(|line| line.text().trim_end().to_string())
            .collect()
    }

    /// Escape sequences that draw the current screen (and cursor) on a terminal of its size:
    /// what a watcher sees first.
    pub fn dump(&self) -> String {
        self.terminal.dump()
    }

    /// The lines still on the screen, for the index at the end of a recording.
    pub fn finish(self) -> Vec<String> {
        match self.transcript {
            Some(transcript) => transcript.finish(&self.terminal),
            None => Vec::new(),
        }
    }
}

/// Printed text without escape sequences, for output that is no longer emulated: linear in its
/// length, whatever the sequences ask of a screen (avt's parser alone, no grid).
#[derive(Default)]
pub struct Stripper {
    parser: avt::Parser,
}

impl Stripper {
    pub fn strip(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for character in text.chars() {
            match self.parser.feed(character) {
                Some(Function::Print(printed)) => out.push(printed),
                Some(Function::Lf) => out.push('\n'),
                _ => {}
            }
        }
        out
    }
}

/// The non-blank rows of the active screen, trimmed.
fn visible_text(terminal: &Terminal) -> Vec<String> {
    terminal
        .screen()
        .visible_lines()
        .map(|line| line.text().trim_end().to_string())
        .filter(|line| !line.trim().is_empty())
        .collect()
}

/// A command entry from the line at the cursor and what was typed before Enter in the same
/// packet and not yet echoed (a pasted line): the prompt and the command as one line, cut at
/// `MAX_COMMAND`. `None` when there is nothing but blanks.
pub fn command_line(on_screen: &str, typed: &str) -> Option<String> {
    let typed: String = typed.chars().filter(|c| !c.is_control()).collect();
    let line = match (on_screen.is_empty(), typed.trim().is_empty()) {
        (_, true) => on_screen.to_string(),
        (true, false) => typed.trim().to_string(),
        (false, false) => format!("{on_screen} {}", typed.trim()),
    };
    if line.trim().is_empty() {
        return None;
    }
    Some(crate::text::cut(&line, MAX_COMMAND))
}

fn size(width: u32, height: u32) -> (usize, usize) {
    // A client may announce anything; the emulator allocates a grid of this size.
    let width = if width == 0 {
        80
    } else {
        width.clamp(MIN_SIZE.0, MAX_SIZE.0)
    };
    let height = if height == 0 {
        24
    } else {
        height.clamp(MIN_SIZE.1, MAX_SIZE.1)
    };
    (width as usize, height as usize)
}

/// `Terminal::new(80, 24)` cannot fail; this only satisfies the types without a panic path.
fn unreachable_terminal() -> Terminal {
    loop {
        if let Ok(terminal) = Terminal::new(80, 24) {
            return terminal;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_at_the_cursor_is_the_prompt_and_the_edited_command() {
        let mut screen = Screen::new(40, 5, false);
        // Typed with a mistake, corrected with backspaces, as bash echoes it.
        screen.feed("alice@web-1:~$ ");
        screen.feed("rm -rf /vax\x08 \x08r");
        assert_eq!(
            screen.line_at_cursor().as_deref(),
            Some("alice@web-1:~$ rm -rf /var")
        );
        // Inside a full-screen program the line is the one edited; the caller marks it so.
        screen.feed("\x1b[?1049h\x1b[Hvim buffer");
        assert!(screen.full_screen());
        assert_eq!(screen.line_at_cursor().as_deref(), Some("vim buffer"));
        screen.feed("\x1b[?1049l");
        assert!(!screen.full_screen());
    }

    #[test]
    fn what_a_full_screen_program_showed_joins_the_transcript_as_it_leaves() {
        let mut screen = Screen::new(30, 4, true);
        let mut lines = screen.feed("$ vim notes\r\n\x1b[?1049h\x1b[Hsecret-plan line\r\n~");
        assert!(lines.is_empty());
        lines.extend(screen.feed("\x1b[?1049l$ "));
        lines.extend(screen.finish());
        assert!(lines.contains(&"secret-plan line".to_string()), "{lines:?}");
        // Still inside when the recording ends: kept too.
        let mut inside = Screen::new(30, 4, true);
        inside.feed("\x1b[?1049hin tmux: rm -rf /var/tmp/x");
        assert!(
            inside
                .finish()
                .iter()
                .any(|line| line.contains("rm -rf /var/tmp/x"))
        );
    }

    #[test]
    fn a_reset_or_a_clear_in_tmux_does_not_erase_the_transcript() {
        let mut screen = Screen::new(30, 5, true);
        let mut lines = screen.feed("secret-one\r\n\x1bc");
        lines.extend(screen.feed("\x1b[?1049hsecret-two\x1b[2J\x1b[Hafter"));
        lines.extend(screen.finish());
        for expected in ["secret-one", "secret-two", "after"] {
            assert!(
                lines.iter().any(|line| line == expected),
                "{expected}: {lines:?}"
            );
        }
        // A screen erased again and again is kept once.
        let mut repeated = Screen::new(30, 5, true);
        let lines = repeated.feed(&"\x1b[?1049h\x1b#8\x1b[2J".repeat(100));
        assert!(lines.len() <= 5, "{}", lines.len());
    }

    #[test]
    fn escape_sequences_are_stripped_in_linear_time() {
        let mut stripper = Stripper::default();
        assert_eq!(stripper.strip("s\x1b[31me\x1b[mcr\x1b#8et\r\n"), "secret\n");
        // A sequence cut between two events is still a sequence.
        assert_eq!(stripper.strip("a\x1b["), "a");
        assert_eq!(stripper.strip("1mb"), "b");
    }

    #[test]
    fn scrolled_lines_and_the_final_screen_make_the_transcript() {
        let mut screen = Screen::new(20, 2, true);
        let mut lines = screen.feed("one\r\ntwo\r\n\x1b[31mthree\x1b[0m\r\nfour");
        lines.extend(screen.finish());
        assert_eq!(lines, ["one", "two", "three", "four"]);
    }

    #[test]
    fn a_pasted_line_joins_the_prompt() {
        assert_eq!(
            command_line("$", "echo needle-42").as_deref(),
            Some("$ echo needle-42")
        );
        assert_eq!(command_line("$ ls", "").as_deref(), Some("$ ls"));
        assert_eq!(command_line("", "\x1b"), None);
        let long = "x".repeat(5000);
        assert!(
            command_line("$", &long).is_some_and(|line| line.len() <= MAX_COMMAND + 3),
            "cut"
        );
    }

    #[test]
    fn a_wrapped_command_is_one_line_and_sizes_are_bounded() {
        let mut screen = Screen::new(20, 5, false);
        screen.feed("$ echo 0123456789abcdefghijklmnop");
        assert_eq!(
            screen.line_at_cursor().as_deref(),
            Some("$ echo 0123456789abcdefghijklmnop")
        );
        // A width of 1 would make every label one character.
        let mut narrow = Screen::new(1, 1, false);
        narrow.feed("$ ls -la /etc");
        assert_eq!(narrow.line_at_cursor().as_deref(), Some("$ ls -la /etc"));
    }

    #[test]
    fn output_that_costs_too_much_to_emulate_is_over_budget() {
        let mut screen = Screen::new(400, 200, true);
        let costly = "\x1b#8\x1b[2J".repeat(2_000);
        let mut fed = 0;
        while !screen.over_budget() && fed < 10_000 {
            screen.feed(&costly);
            fed += 1;
        }
        assert!(
            screen.over_budget(),
            "still within budget after {fed} feeds"
        );
        // Ordinary output stays far within it.
        let mut plain = Screen::new(80, 24, true);
        for _ in 0..1_000 {
            plain.feed("total 48\r\ndrwxr-xr-x 2 root root 4096 Dec  6 file\r\n");
        }
        assert!(!plain.over_budget());
    }

    #[test]
    fn a_line_without_end_is_let_go_in_pieces() {
        let mut screen = Screen::new(80, 24, true);
        let mut lines = Vec::new();
        for _ in 0..100 {
            lines.extend(screen.feed(&"x".repeat(10_000)));
        }
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|line| line.len() <= MAX_PENDING + 80));
    }

    #[test]
    fn any_announced_size_is_safe() {
        for (width, height) in [(0, 0), (u32::MAX, u32::MAX), (1, 1), (100_000, 3)] {
            let mut screen = Screen::new(width, height, true);
            let mut lines = screen.feed("text\r\n");
            lines.extend(screen.resize(width, height));
            lines.extend(screen.resize(0, 0));
            lines.extend(screen.finish());
            assert!(lines.concat().contains("text"), "{lines:?}");
        }
    }
}
