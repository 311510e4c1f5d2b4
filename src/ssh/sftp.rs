//! A sans-IO observer of the SFTP protocol (v3, as OpenSSH speaks it), for the audit log.
//!
//! It sees both directions of an `sftp` subsystem channel as they pass and turns them into file
//! operations: a file opened and closed with its read and written byte totals, removes, renames
//! (plain and `posix-rename@openssh.com`), directories made and removed, attribute changes
//! (setstat, fsetstat, `lsetstat@openssh.com`: chmod, chown, utime, truncate), symbolic and hard
//! links, server-side copies (`copy-data`), and any other extension request by name (issue #17:
//! nothing that changes the target goes unaudited). File content is counted, never kept. It only observes: the bytes
//! are relayed whatever it thinks of them, and a stream it cannot follow (a packet over the size
//! limit, a malformed packet) makes it stop and say so once, without ever panicking.

use std::collections::HashMap;

use crate::session::FileOperation;

/// Packets larger than this are not SFTP as any client sends it; tracking stops.
const MAX_PACKET: usize = 1024 * 1024;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
const FXP_EXTENDED: u8 = 200;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
/// WRITE, APPEND, CREAT, TRUNC, EXCL: an open with any of them can change the file (a
/// read-only open with TRUNC empties it).
const FXF_CHANGES: u32 = 0x0000_003e;

/// One audited file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// A file was opened and later closed (or the channel ended).
    File {
        path: String,
        write: bool,
        bytes_read: u64,
        bytes_written: u64,
    },
    Remove {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    /// Attributes set on a path (or an open file's path): `size=`, `uid=`, `gid=`, `mode=`,
    /// `atime=`, `mtime=`.
    SetStat {
        path: String,
        attributes: String,
    },
    /// A symbolic link at `link` pointing to `target`.
    Symlink {
        link: String,
        target: String,
    },
    /// A hard link `link` to the existing `existing`.
    Hardlink {
        existing: String,
        link: String,
    },
    /// A server-side copy between two open files (`copy-data`): `length` 0 means to the end.
    Copy {
        from: String,
        to: String,
        length: u64,
    },
    /// An extension request not followed otherwise, by name.
    Extended {
        name: String,
    },
    /// The stream stopped being followable; later operations are not audited individually.
    Untracked {
        why: &'static str,
    },
}

impl FileOp {
    /// The operation as the session core audits it.
    pub fn into_record(self) -> FileOperation {
        let (operation, path, to) = match self {
            FileOp::File {
                path,
                write,
                bytes_read,
                bytes_written,
            } => {
                return FileOperation {
                    operation: if write { "write" } else { "read" },
                    path,
                    bytes_read,
                    bytes_written,
                    ..FileOperation::default()
                };
            }
            FileOp::SetStat { path, attributes } => {
                return FileOperation {
                    operation: "setstat",
                    path,
                    attributes: Some(attributes),
                    ..FileOperation::default()
                };
            }
            FileOp::Copy { from, to, length } => {
                return FileOperation {
                    operation: "copy",
                    path: from,
                    to: Some(to),
                    attributes: Some(format!("length={length}")),
                    ..FileOperation::default()
                };
            }
            FileOp::Remove { path } => ("remove", path, None),
            FileOp::Rename { from, to } => ("rename", from, Some(to)),
            FileOp::Mkdir { path } => ("mkdir", path, None),
            FileOp::Rmdir { path } => ("rmdir", path, None),
            FileOp::Symlink { link, target } => ("symlink", link, Some(target)),
            FileOp::Hardlink { existing, link } => ("hardlink", link, Some(existing)),
            FileOp::Extended { name } => ("extended", name, None),
            FileOp::Untracked { why } => ("untracked", why.to_string(), None),
        };
        FileOperation {
            operation,
            path,
            to,
            ..FileOperation::default()
        }
    }
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    write: bool,
    bytes_read: u64,
    bytes_written: u64,
}

impl OpenFile {
    /// The audited operation of a file that is done: closed, or open when the channel ended.
    fn into_op(self) -> FileOp {
        FileOp::File {
            path: self.path,
            write: self.write,
            bytes_read: self.bytes_read,
            bytes_written: self.bytes_written,
        }
    }
}

/// Follows one SFTP channel.
#[derive(Debug, Default)]
pub struct SftpObserver {
    from_client: Vec<u8>,
    from_server: Vec<u8>,
    /// OPEN request id → (path, write).
    opening: HashMap<u32, (String, bool)>,
    /// READ request id → handle.
    reading: HashMap<u32, Vec<u8>>,
    open: HashMap<Vec<u8>, OpenFile>,
    stopped: bool,
}

impl SftpObserver {
    /// Bytes the client sent; returns the operations they complete.
    pub fn client(&mut self, bytes: &[u8]) -> Vec<FileOp> {
        self.feed(bytes, true)
    }

    /// Bytes the server sent.
    pub fn server(&mut self, bytes: &[u8]) -> Vec<FileOp> {
        self.feed(bytes, false)
    }

    /// Files still open when the channel ends, reported with what they saw.
    pub fn finish(&mut self) -> Vec<FileOp> {
        self.open.drain().map(|(_, file)| file.into_op()).collect()
    }

    fn feed(&mut self, bytes: &[u8], from_client: bool) -> Vec<FileOp> {
        if self.stopped {
            return Vec::new();
        }
        let mut ops = Vec::new();
        let mut buffer = std::mem::take(if from_client {
            &mut self.from_client
        } else {
            &mut self.from_server
        });
        buffer.extend_from_slice(bytes);
        let mut start = 0;
        while buffer.len() - start >= 4 {
            let length = u32::from_be_bytes([
                buffer[start],
                buffer[start + 1],
                buffer[start + 2],
                buffer[start + 3],
            ]) as usize;
            if length == 0 || length > MAX_PACKET {
                ops.push(self.stop("an SFTP packet is empty or too large to follow"));
                return ops;
            }
            if buffer.len() - start - 4 < length {
                break;
            }
            let packet = &buffer[start + 4..start + 4 + length];
            let result = if from_client {
                self.client_packet(packet)
            } else {
                self.server_packet(packet)
            };
            match result {
                Some(Some(op)) => ops.push(op),
                Some(None) => {}
                None => {
                    ops.push(self.stop("a malformed SFTP packet"));
                    return ops;
                }
            }
            start += 4 + length;
        }
        buffer.drain(..start);
        if from_client {
            self.from_client = buffer;
        } else {
            self.from_server = buffer;
        }
        ops
    }

    fn stop(&mut self, why: &'static str) -> FileOp {
        self.stopped = true;
        self.from_client = Vec::new();
        self.from_server = Vec::new();
        FileOp::Untracked { why }
    }

    /// `None` for a malformed packet, `Some(op)` otherwise.
    fn client_packet(&mut self, packet: &[u8]) -> Option<Option<FileOp>> {
        let mut reader = Reader(packet);
        let kind = reader.byte()?;
        if kind < FXP_OPEN {
            // INIT carries a version, not a request id.
            return Some(None);
        }
        let id = reader.u32()?;
        Some(match kind {
            FXP_OPEN => {
                let path = reader.text()?;
                let flags = reader.u32()?;
                // A request id still waiting for its answer, reused: the answers could be
                // matched to the wrong path (issue #17 review). OpenSSH never does it.
                if self.opening.contains_key(&id) || self.reading.contains_key(&id) {
                    return Some(Some(self.stop("an SFTP request id was reused")));
                }
                self.opening.insert(id, (path, flags & FXF_CHANGES != 0));
                None
            }
            FXP_READ => {
                let handle = reader.string()?.to_vec();
                if self.opening.contains_key(&id) || self.reading.contains_key(&id) {
                    return Some(Some(self.stop("an SFTP request id was reused")));
                }
                self.reading.insert(id, handle);
                None
            }
            FXP_WRITE => {
                let handle = reader.string()?;
                let _offset = reader.u64()?;
                let data = reader.string()?;
                if let Some(file) = self.open.get_mut(handle) {
                    file.bytes_written += data.len() as u64;
                }
                None
            }
            FXP_CLOSE => {
                let handle = reader.string()?;
                self.open.remove(handle).map(OpenFile::into_op)
            }
            FXP_REMOVE => Some(FileOp::Remove {
                path: reader.text()?,
            }),
            FXP_RENAME => Some(FileOp::Rename {
                from: reader.text()?,
                to: reader.text()?,
            }),
            FXP_MKDIR => Some(FileOp::Mkdir {
                path: reader.text()?,
            }),
            FXP_RMDIR => Some(FileOp::Rmdir {
                path: reader.text()?,
            }),
            FXP_SETSTAT => Some(FileOp::SetStat {
                path: reader.text()?,
                attributes: attributes(&mut reader)?,
            }),
            FXP_FSETSTAT => {
                let handle = reader.string()?;
                Some(FileOp::SetStat {
                    path: self.path_of(handle),
                    attributes: attributes(&mut reader)?,
                })
            }
            // OpenSSH sends the target first and the link second (the reverse of the draft).
            FXP_SYMLINK => Some(FileOp::Symlink {
                target: reader.text()?,
                link: reader.text()?,
            }),
            FXP_EXTENDED => self.extended(&mut reader)?,
            _ => None,
        })
    }

    /// An extension request: the ones that change the target are followed, the read-only ones
    /// OpenSSH sends are passed over, and any other is audited by name. `None`: malformed.
    fn extended(&mut self, reader: &mut Reader<'_>) -> Option<Option<FileOp>> {
        let name = reader.text()?;
        Some(Some(match name.as_str() {
            "limits@openssh.com"
            | "expand-path@openssh.com"
            | "statvfs@openssh.com"
            | "fstatvfs@openssh.com"
            | "home-directory"
            | "users-groups-by-id@openssh.com"
            | "fsync@openssh.com"
            | "check-file-name"
            | "check-file-handle" => return Some(None),
            "posix-rename@openssh.com" => FileOp::Rename {
                from: reader.text()?,
                to: reader.text()?,
            },
            "hardlink@openssh.com" => FileOp::Hardlink {
                existing: reader.text()?,
                link: reader.text()?,
            },
            "lsetstat@openssh.com" => FileOp::SetStat {
                path: reader.text()?,
                attributes: attributes(reader)?,
            },
            "copy-data" => {
                let from = reader.string()?;
                let _offset = reader.u64()?;
                let length = reader.u64()?;
                let to = reader.string()?;
                FileOp::Copy {
                    from: self.path_of(from),
                    to: self.path_of(to),
                    length,
                }
            }
            _ => FileOp::Extended { name },
        }))
    }

    /// The path an open handle was opened with, or the handle as hex.
    fn path_of(&self, handle: &[u8]) -> String {
        self.open.get(handle).map_or_else(
            || format!("<handle {}>", hex::encode(handle)),
            |file| file.path.clone(),
        )
    }

    fn server_packet(&mut self, packet: &[u8]) -> Option<Option<FileOp>> {
        let mut reader = Reader(packet);
        let kind = reader.byte()?;
        if kind < FXP_STATUS {
            // VERSION and anything else without a request id.
            return Some(None);
        }
        let id = reader.u32()?;
        match kind {
            FXP_HANDLE => {
                let handle = reader.string()?.to_vec();
                if let Some((path, write)) = self.opening.remove(&id) {
                    self.open.insert(
                        handle,
                        OpenFile {
                            path,
                            write,
                            bytes_read: 0,
                            bytes_written: 0,
                        },
                    );
                }
            }
            FXP_DATA => {
                let data = reader.string()?;
                if let Some(handle) = self.reading.remove(&id)
                    && let Some(file) = self.open.get_mut(&handle)
                {
                    file.bytes_read += data.len() as u64;
                }
            }
            FXP_STATUS => {
                self.opening.remove(&id);
                self.reading.remove(&id);
            }
            _ => {}
        }
        Some(None)
    }
}

/// SFTP v3 ATTRS as text: the fields the flags say are present.
fn attributes(reader: &mut Reader<'_>) -> Option<String> {
    const SIZE: u32 = 0x1;
    const UIDGID: u32 = 0x2;
    const PERMISSIONS: u32 = 0x4;
    const ACMODTIME: u32 = 0x8;
    const EXTENDED: u32 = 0x8000_0000;
    let flags = reader.u32()?;
    let mut parts = Vec::new();
    if flags & SIZE != 0 {
        parts.push(format!("size={}", reader.u64()?));
    }
    if flags & UIDGID != 0 {
        parts.push(format!("uid={}", reader.u32()?));
        parts.push(format!("gid={}", reader.u32()?));
    }
    if flags & PERMISSIONS != 0 {
        parts.push(format!("mode={:o}", reader.u32()? & 0o7777));
    }
    if flags & ACMODTIME != 0 {
        parts.push(format!("atime={}", reader.u32()?));
        parts.push(format!("mtime={}", reader.u32()?));
    }
    if flags & EXTENDED != 0 {
        let count = reader.u32()?;
        for _ in 0..count.min(64) {
            parts.push(format!("{}=…", reader.text()?));
            reader.string()?;
        }
    }
    Some(parts.join(" "))
}

/// Reads SFTP's big-endian integers and length-prefixed strings; `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.0.len() < count {
            return None;
        }
        let (head, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let high = self.u32()? as u64;
        let low = self.u32()? as u64;
        Some(high << 32 | low)
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    fn text(&mut self) -> Option<String> {
        self.string()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: Option<u32>, body: &[&[u8]]) -> Vec<u8> {
        let mut payload = vec![kind];
        if let Some(id) = id {
            payload.extend_from_slice(&id.to_be_bytes());
        }
        for part in body {
            payload.extend_from_slice(part);
        }
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend(payload);
        out
    }

    fn string(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn an_upload_a_download_and_renames_are_followed_across_split_chunks() {
        let mut observer = SftpObserver::default();
        let mut client = Vec::new();
        client.extend(packet(1, None, &[&3u32.to_be_bytes()]));
        client.extend(packet(
            FXP_OPEN,
            Some(1),
            &[&string(b"/tmp/up"), &0x1au32.to_be_bytes(), &[0, 0, 0, 0]],
        ));
        let mut server = packet(2, None, &[&3u32.to_be_bytes()]);
        server.extend(packet(FXP_HANDLE, Some(1), &[&string(b"h1")]));
        // Feed the client's bytes one at a time: framing must survive any split.
        for byte in &client {
            assert!(observer.client(std::slice::from_ref(byte)).is_empty());
        }
        assert!(observer.server(&server).is_empty());
        let write = packet(
            FXP_WRITE,
            Some(2),
            &[&string(b"h1"), &0u64.to_be_bytes(), &string(&[7u8; 1000])],
        );
        assert!(observer.client(&write).is_empty());
        let close = packet(FXP_CLOSE, Some(3), &[&string(b"h1")]);
        assert_eq!(
            observer.client(&close),
            [FileOp::File {
                path: "/tmp/up".into(),
                write: true,
                bytes_read: 0,
                bytes_written: 1000
            }]
        );

        let open = packet(
            FXP_OPEN,
            Some(4),
            &[&string(b"/tmp/down"), &1u32.to_be_bytes(), &[0, 0, 0, 0]],
        );
        observer.client(&open);
        observer.server(&packet(FXP_HANDLE, Some(4), &[&string(b"h2")]));
        observer.client(&packet(
            FXP_READ,
            Some(5),
            &[&string(b"h2"), &0u64.to_be_bytes(), &4096u32.to_be_bytes()],
        ));
        observer.server(&packet(FXP_DATA, Some(5), &[&string(&[1u8; 300])]));
        let ops = observer.client(&packet(
            FXP_RENAME,
            Some(6),
            &[&string(b"/a"), &string(b"/b")],
        ));
        assert_eq!(
            ops,
            [FileOp::Rename {
                from: "/a".into(),
                to: "/b".into()
            }]
        );
        let ops = observer.client(&packet(FXP_REMOVE, Some(7), &[&string(b"/b")]));
        assert_eq!(ops, [FileOp::Remove { path: "/b".into() }]);
        assert_eq!(
            observer.finish(),
            [FileOp::File {
                path: "/tmp/down".into(),
                write: false,
                bytes_read: 300,
                bytes_written: 0
            }]
        );
    }

    #[test]
    fn issue_17_attribute_changes_links_copies_and_extensions_are_operations() {
        let mut observer = SftpObserver::default();
        let mut mode = 0x4u32.to_be_bytes().to_vec();
        mode.extend_from_slice(&0o100600u32.to_be_bytes());
        let mut owner = 0x2u32.to_be_bytes().to_vec();
        owner.extend_from_slice(&1000u32.to_be_bytes());
        owner.extend_from_slice(&1001u32.to_be_bytes());
        let extended = |name: &[u8], rest: &[&[u8]]| {
            let mut body = vec![string(name)];
            body.extend(rest.iter().map(|part| part.to_vec()));
            let parts: Vec<&[u8]> = body.iter().map(Vec::as_slice).collect();
            packet(FXP_EXTENDED, Some(9), &parts)
        };
        let cases: Vec<(Vec<u8>, FileOp)> = vec![
            (
                packet(FXP_SETSTAT, Some(1), &[&string(b"/etc/app.conf"), &mode]),
                FileOp::SetStat {
                    path: "/etc/app.conf".into(),
                    attributes: "mode=600".into(),
                },
            ),
            (
                packet(FXP_SETSTAT, Some(2), &[&string(b"/srv/x"), &owner]),
                FileOp::SetStat {
                    path: "/srv/x".into(),
                    attributes: "uid=1000 gid=1001".into(),
                },
            ),
            (
                packet(FXP_FSETSTAT, Some(3), &[&string(b"h9"), &mode]),
                FileOp::SetStat {
                    path: "<handle 6839>".into(),
                    attributes: "mode=600".into(),
                },
            ),
            (
                packet(
                    FXP_SYMLINK,
                    Some(4),
                    &[&string(b"/etc/shadow"), &string(b"/tmp/s")],
                ),
                FileOp::Symlink {
                    target: "/etc/shadow".into(),
                    link: "/tmp/s".into(),
                },
            ),
            (
                extended(
                    b"posix-rename@openssh.com",
                    &[&string(b"/a"), &string(b"/b")],
                ),
                FileOp::Rename {
                    from: "/a".into(),
                    to: "/b".into(),
                },
            ),
            (
                extended(b"hardlink@openssh.com", &[&string(b"/a"), &string(b"/c")]),
                FileOp::Hardlink {
                    existing: "/a".into(),
                    link: "/c".into(),
                },
            ),
            (
                extended(
                    b"copy-data",
                    &[
                        &string(b"h1"),
                        &0u64.to_be_bytes(),
                        &0u64.to_be_bytes(),
                        &string(b"h2"),
                        &0u64.to_be_bytes(),
                    ],
                ),
                FileOp::Copy {
                    from: "<handle 6831>".into(),
                    to: "<handle 6832>".into(),
                    length: 0,
                },
            ),
            (
                extended(b"vendor-wipe@example.com", &[&string(b"/")]),
                FileOp::Extended {
                    name: "vendor-wipe@example.com".into(),
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(observer.client(&bytes), [expected]);
        }
        // The read-only extensions OpenSSH sends are passed over.
        assert!(
            observer
                .client(&extended(b"statvfs@openssh.com", &[&string(b"/")]))
                .is_empty()
        );
    }

    #[test]
    fn issue_17_review_reused_request_ids_stop_and_truncating_opens_are_writes() {
        let mut observer = SftpObserver::default();
        let open = |id: u32, path: &[u8], flags: u32| {
            packet(
                FXP_OPEN,
                Some(id),
                &[&string(path), &flags.to_be_bytes(), &[0, 0, 0, 0]],
            )
        };
        // READ|CREAT|TRUNC empties the file: audited as a write.
        assert!(observer.client(&open(1, b"/etc/app.conf", 0x19)).is_empty());
        observer.server(&packet(FXP_HANDLE, Some(1), &[&string(b"h1")]));
        assert_eq!(
            observer.client(&packet(FXP_CLOSE, Some(2), &[&string(b"h1")])),
            [FileOp::File {
                path: "/etc/app.conf".into(),
                write: true,
                bytes_read: 0,
                bytes_written: 0
            }]
        );
        // Two opens under one id before the answers: the tracker stops (the relay ends it).
        assert!(observer.client(&open(7, b"/etc/sudoers", 0x2)).is_empty());
        assert!(matches!(
            observer.client(&open(7, b"/tmp/x", 0x1)).as_slice(),
            [FileOp::Untracked { .. }]
        ));
    }

    #[test]
    fn garbage_stops_tracking_once_and_never_panics() {
        let mut observer = SftpObserver::default();
        let ops = observer.client(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert!(matches!(ops.as_slice(), [FileOp::Untracked { .. }]));
        assert!(observer.client(&[0; 64]).is_empty());

        // Truncated fields inside a well-framed packet.
        let mut observer = SftpObserver::default();
        let ops = observer.client(&packet(FXP_OPEN, Some(1), &[&[0, 0, 0, 200, b'x']]));
        assert!(matches!(ops.as_slice(), [FileOp::Untracked { .. }]));

        // Every prefix of every byte value: no panic.
        for value in 0..=255u8 {
            let mut observer = SftpObserver::default();
            let data = [
                0, 0, 0, 9, value, value, value, value, value, value, value, value, value,
            ];
            for end in 0..data.len() {
                let _ = observer.client(&data[..end]);
                let _ = observer.server(&data[..end]);
            }
        }
    }
}
