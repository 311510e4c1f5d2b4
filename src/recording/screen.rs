//! What a terminal showed (issue #19): asciinema's own emulator (`avt`) fed with a recording's
//! output, so a command entry is the line the user saw when they pressed Enter, search indexes
//! the text a reviewer would have read (without escape sequences, with edits and redraws
//! applied), a replay can say what the final screen was, and a watcher starts from the current
//! screen.
//!
//! Pure and synchronous: the recorder feeds it on the cast writer, the indexer from the files,
//! replay from a file. A fault in the emulator cannot reach the recording: it only reads text.

use avt::observer::Transcript;
use avt::{ScreenKind, Terminal};

/// Longest command entry kept; a longer line is cut with `…`.
pub const MAX_COMMAND: usize = 1024;

/// The emulator of one channel's terminal.
pub struct Screen {
    terminal: Terminal,
    /// Lines that left the screen (and, at the end, the screen itself), for the search index.
    transcript: Option<Transcript>,
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
            transcript: transcript.then(Transcript::new),
        }
    }

    /// Feeds terminal output; returns the finished lines that left the screen (none without a
    /// transcript).
    pub fn feed(&mut self, text: &str) -> Vec<String> {
        match self.transcript.as_mut() {
            Some(transcript) => self.terminal.feed_with(text, transcript),
            None => {
                self.terminal.feed(text);
                Vec::new()
            }
        }
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

    /// The line at the cursor, trimmed, when the primary screen is showing: what a shell's
    /// prompt and the typed command look like as Enter is pressed. `None` in a full-screen
    /// program (the alternate screen: an editor, `less`, `top`), where Enter is not a command.
    pub fn line_at_cursor(&self) -> Option<String> {
        if self.terminal.active_screen_kind() != ScreenKind::Primary {
            return None;
        }
        let row = self.terminal.cursor().row;
        let line = self.terminal.screen().line(row)?.text();
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
    let width = if width == 0 { 80 } else { width.min(1000) };
    let height = if height == 0 { 24 } else { height.min(500) };
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
        // Inside a full-screen program Enter is not a command.
        screen.feed("\x1b[?1049h\x1b[Hvim buffer");
        assert_eq!(screen.line_at_cursor(), None);
        screen.feed("\x1b[?1049l");
        assert!(screen.line_at_cursor().is_some());
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
