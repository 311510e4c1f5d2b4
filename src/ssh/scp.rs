//! A sans-IO observer of the legacy scp protocol (`scp -O`, which runs `scp -t` or `scp -f` on the
//! target), for the audit log.
//!
//! It follows the sending side of the transfer: the client for `scp -t` (upload), the target for
//! `scp -f` (download). Control lines are `C<mode> <size> <name>` (a file of `size` bytes follows,
//! then one status byte), `D<mode> 0 <name>` and `E` (enter and leave a directory), `T...` (times).
//! Each file becomes one `FileOp::File` with its path and byte count; content is skipped, never
//! kept. A stream it cannot follow makes it stop and say so once; it never panics.

use super::sftp::FileOp;

/// Control lines longer than this are not scp; tracking stops.
const MAX_LINE: usize = 4096;

/// Which way the files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `scp -t`: the client sends files to the target.
    Upload,
    /// `scp -f`: the target sends files to the client.
    Download,
}

impl Direction {
    /// Recognizes the command OpenSSH's scp runs remotely: `scp [-r] [-p] [-d] -t|-f [--] PATH`.
    pub fn of_command(command: &str) -> Option<(Direction, String)> {
        let words = shell_words::split(command).ok()?;
        let (program, rest) = words.split_first()?;
        if program != "scp" && !program.ends_with("/scp") {
            return None;
        }
        let mut direction = None;
        let mut path = None;
        for word in rest {
            match word.as_str() {
                "-t" => direction = Some(Direction::Upload),
                "-f" => direction = Some(Direction::Download),
                "--" => {}
                flag if flag.starts_with('-') => {}
                other => path = Some(other.to_string()),
            }
        }
        Some((direction?, path.unwrap_or_default()))
    }
}

#[derive(Debug)]
enum State {
    /// Reading a control line.
    Line(Vec<u8>),
    /// Skipping `remaining` content bytes of `path`, then its status byte.
    Content {
        path: String,
        size: u64,
        remaining: u64,
    },
    /// Skipping the status byte after content.
    Status,
    Stopped,
}

/// Follows one scp transfer.
#[derive(Debug)]
pub struct ScpObserver {
    direction: Direction,
    /// The target path of the command; the root of relative names.
    root: String,
    /// Directories entered with `D` lines.
    dirs: Vec<String>,
    state: State,
}

impl ScpObserver {
    pub fn new(direction: Direction, root: String) -> Self {
        ScpObserver {
            direction,
            root,
            dirs: Vec::new(),
            state: State::Line(Vec::new()),
        }
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Bytes from the sending side; returns the files they complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<FileOp> {
        let mut ops = Vec::new();
        while !bytes.is_empty() {
            match &mut self.state {
                State::Stopped => break,
                State::Status => {
                    bytes = &bytes[1..];
                    self.state = State::Line(Vec::new());
                }
                State::Content { remaining, .. } if *remaining > 0 => {
                    let take = (*remaining).min(bytes.len() as u64) as usize;
                    *remaining -= take as u64;
                    bytes = &bytes[take..];
                }
                State::Content { path, size, .. } => {
                    let (path, size) = (std::mem::take(path), *size);
                    ops.push(self.file(path, size));
                    self.state = State::Status;
                }
                State::Line(line) => {
                    let end = bytes.iter().position(|byte| *byte == b'\n');
                    let take = end.map_or(bytes.len(), |end| end + 1);
                    line.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if line.len() > MAX_LINE {
                        ops.push(self.stop("an scp control line is too long"));
                        break;
                    }
                    if end.is_some() {
                        let text = String::from_utf8_lossy(line).trim_end().to_string();
                        if let Err(why) = self.control(&text) {
                            ops.push(self.stop(why));
                            break;
                        }
                    }
                }
            }
        }
        // A zero-length file completes without content bytes.
        if let State::Content {
            path,
            size,
            remaining: 0,
        } = &mut self.state
        {
            let (path, size) = (std::mem::take(path), *size);
            ops.push(self.file(path, size));
            self.state = State::Status;
        }
        ops
    }

    fn control(&mut self, line: &str) -> Result<(), &'static str> {
        let Some(kind) = line.chars().next() else {
            // A bare status byte (0) answered by the receiver echoes into some streams: ignore.
            self.state = State::Line(Vec::new());
            return Ok(());
        };
        match kind {
            'C' | 'D' => {
                let mut parts = line[1..].splitn(3, ' ');
                let _mode = parts.next().ok_or("a malformed scp control line")?;
                let size: u64 = parts
                    .next()
                    .and_then(|size| size.parse().ok())
                    .ok_or("a malformed scp size")?;
                let name = parts.next().ok_or("a malformed scp name")?;
                if name.contains('/') || name == ".." {
                    return Err("an scp name with a path in it");
                }
                if kind == 'D' {
                    self.dirs.push(name.to_string());
                    self.state = State::Line(Vec::new());
                } else {
                    let path = self.path_of(name);
                    self.state = State::Content {
                        path,
                        size,
                        remaining: size,
                    };
                }
            }
            'E' => {
                self.dirs.pop();
                self.state = State::Line(Vec::new());
            }
            'T' | '\0' | '\u{1}' | '\u{2}' => self.state = State::Line(Vec::new()),
            _ => return Err("an unknown scp control line"),
        }
        Ok(())
    }

    /// The audited path. A top-level file is reported as the path the scp command names: scp
    /// itself decides on the target whether that is the file or its folder, which the stream
    /// does not say. Files inside a recursive copy are reported below it.
    fn path_of(&self, name: &str) -> String {
        if self.dirs.is_empty() && !self.root.is_empty() {
            return self.root.clone();
        }
        let mut parts: Vec<&str> = Vec::new();
        if !self.root.is_empty() {
            parts.push(&self.root);
        }
        parts.extend(self.dirs.iter().map(String::as_str));
        parts.push(name);
        parts.join("/")
    }

    fn file(&self, path: String, size: u64) -> FileOp {
        let upload = self.direction == Direction::Upload;
        FileOp::File {
            path,
            write: upload,
            bytes_read: if upload { 0 } else { size },
            bytes_written: if upload { size } else { 0 },
        }
    }

    fn stop(&mut self, why: &'static str) -> FileOp {
        self.state = State::Stopped;
        FileOp::Untracked { why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_recognized() {
        assert_eq!(
            Direction::of_command("scp -t /tmp/x"),
            Some((Direction::Upload, "/tmp/x".to_string()))
        );
        assert_eq!(
            Direction::of_command("scp -r -p -f -- 'dir with space'"),
            Some((Direction::Download, "dir with space".to_string()))
        );
        assert_eq!(Direction::of_command("ls -t /tmp"), None);
        assert_eq!(Direction::of_command("scp /a /b"), None);
    }

    #[test]
    fn files_and_directories_are_followed_across_any_split() {
        let mut stream =
            b"T1 0 1 0\nD0755 0 logs\nC0644 5 a.txt\nhello\0C0600 0 empty\n\0E\n".to_vec();
        stream.extend_from_slice(b"C0644 3 top.bin\n\x00\x01\x02\0");
        let expected = vec![
            FileOp::File {
                path: "/srv/logs/a.txt".into(),
                write: true,
                bytes_read: 0,
                bytes_written: 5,
            },
            FileOp::File {
                path: "/srv/logs/empty".into(),
                write: true,
                bytes_read: 0,
                bytes_written: 0,
            },
            FileOp::File {
                path: "/srv".into(),
                write: true,
                bytes_read: 0,
                bytes_written: 3,
            },
        ];
        for chunk in [1, 2, 3, 7, stream.len()] {
            let mut observer = ScpObserver::new(Direction::Upload, "/srv".into());
            let ops: Vec<FileOp> = stream
                .chunks(chunk)
                .flat_map(|part| observer.feed(part))
                .collect();
            assert_eq!(ops, expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn garbage_stops_once_and_never_panics() {
        let mut observer = ScpObserver::new(Direction::Download, String::new());
        assert!(matches!(
            observer.feed(b"X nonsense\n").as_slice(),
            [FileOp::Untracked { .. }]
        ));
        assert!(observer.feed(b"C0644 1 a\nz\0").is_empty());
        let mut observer = ScpObserver::new(Direction::Upload, String::new());
        assert!(matches!(
            observer.feed(b"C0644 1 ../evil\n").as_slice(),
            [FileOp::Untracked { .. }]
        ));
        let mut observer = ScpObserver::new(Direction::Upload, String::new());
        assert!(matches!(
            observer.feed(&[b'C'; 5000]).as_slice(),
            [FileOp::Untracked { .. }]
        ));
        for value in 0..=255u8 {
            let mut observer = ScpObserver::new(Direction::Upload, String::new());
            let _ = observer.feed(&[value, b' ', value, b'\n', value]);
        }
    }
}
