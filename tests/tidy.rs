//! Structure rules that `cargo test` holds (house style, rule 15): every file says what it is for,
//! SQL and `rusqlite` live only in `store/`, HTTP only in `web/`, and the protocol-blind core names
//! no protocol, transport or database crate.

// Tests fail by panicking; the no-panic rule is for code that handles network input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn source(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_file_starts_with_a_doc_paragraph() {
    let mut missing = Vec::new();
    for dir in ["src", "tests"] {
        for path in rust_files(&root().join(dir)) {
            if !source(&path).trim_start().starts_with("//!") {
                missing.push(relative(&path));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a //! paragraph: {missing:?}"
    );
}

/// (what, words, the only folders or files under src/ where they may appear)
const CONFINED: &[(&str, &[&str], &[&str])] = &[
    ("SQLite", &["rusqlite"], &["src/store/"]),
    (
        "SQL",
        &[
            "SELECT ",
            "INSERT INTO",
            "UPDATE ",
            "DELETE FROM",
            "CREATE TABLE",
        ],
        // The PostgreSQL front end carries engineers' SQL as data; it never writes its own.
        // The postgres audit sink writes the outside database's tables (issue #18).
        &["src/store/", "src/postgres/", "src/sinks/postgres.rs"],
    ),
    ("HTTP", &["axum", "hyper"], &["src/web/"]),
    // Issue #17: only the core builds audit events; front ends say what happened through it.
    (
        "audit events",
        &["AuditEvent::"],
        &[
            "src/audit/",
            "src/access/",
            "src/session/",
            "src/store/",
            "src/server.rs",
        ],
    ),
];

#[test]
fn sql_and_http_stay_in_their_modules() {
    let mut offences = Vec::new();
    for path in rust_files(&root().join("src")) {
        let name = relative(&path);
        let text = source(&path);
        // Unit tests may hold SQL as sample data (a query log line, a CommandComplete tag).
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (what, words, homes) in CONFINED {
            if homes.iter().any(|home| name.starts_with(home)) {
                continue;
            }
            for word in *words {
                if text.contains(word) {
                    offences.push(format!("{name}: {what} ({word:?})"));
                }
            }
        }
    }
    assert!(offences.is_empty(), "{offences:#?}");
}

#[test]
fn the_core_is_protocol_blind() {
    let forbidden = [
        "russh",
        "axum",
        "hyper",
        "rusqlite",
        "tokio_postgres",
        "postgres_protocol",
        "slack",
    ];
    let mut offences = Vec::new();
    for core in ["src/access", "src/audit", "src/session"] {
        for path in rust_files(&root().join(core)) {
            let text = source(&path).to_lowercase();
            for word in forbidden {
                // Doc comments may say what the core does not know.
                let code: String = text
                    .lines()
                    .filter(|line| !line.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                if code.contains(word) {
                    offences.push(format!("{}: {word}", relative(&path)));
                }
            }
        }
    }
    assert!(offences.is_empty(), "{offences:#?}");
}
