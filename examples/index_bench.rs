//! The search benchmark of issue #19 (`bench/review.sh` runs it): recordings of terminal
//! output written as the bastion writes them, indexed by the real indexer, then searched.
//!
//! Reports the indexing rate (MB of recorded output a second, against the 10 MB/s a busy
//! session prints), the index's size per GB of output, and search latency for a string found
//! in fewer than 100 sessions. Usage: `index_bench [TOTAL_MB] [SESSIONS] [NEEDLE_SESSIONS]`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use portcullis::recording::asciicast::{Header, event_line, header_line};
use portcullis::recording::{CAST_KIND, asciicast::Event};
use portcullis::review::indexer::Indexer;
use portcullis::store::search::SearchIndex;
use portcullis::store::{RecordingRow, SessionRow, Store};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().expect("numbers"))
        .collect();
    let total_mb = args.first().copied().unwrap_or(1024);
    let sessions = args.get(1).copied().unwrap_or(1000);
    let needles = args.get(2).copied().unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("portcullis.db")).expect("store");
    let index_path = dir.path().join("index.sqlite");
    let index = SearchIndex::open(&index_path).expect("index");

    // Recorded output: log-like lines with enough distinct words that the trigram index sees
    // what it would in production (ids, hosts, numbers), colour codes included.
    let per_session = total_mb * 1_000_000 / sessions;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    let mut written = 0u64;
    let now = time::OffsetDateTime::now_utc();
    for number in 0..sessions {
        let id = format!("s-b{number:07}");
        let path = dir.path().join(format!("{id}-0.cast"));
        let mut text = header_line(&Header {
            width: 120,
            height: 40,
            timestamp: 0,
            title: "bench".into(),
            command: None,
            term: Some("xterm-256color".into()),
            env: Vec::new(),
        });
        let mut at = 0.0f64;
        let mut size = 0u64;
        let mut chunk = String::new();
        while size < per_session {
            let value = random();
            let line = format!(
                "2026-12-06T19:{:02}:{:02} \x1b[32mINFO\x1b[0m worker-{} order {:016x} host db-{}.prod \
                 took {} ms status={}\r\n",
                value % 60,
                (value >> 8) % 60,
                (value >> 16) % 64,
                random(),
                (value >> 24) % 32,
                (value >> 32) % 5000,
                ["ok", "retry", "failed", "queued"][(value >> 40) as usize % 4],
            );
            size += line.len() as u64;
            chunk.push_str(&line);
            if chunk.len() >= 4096 {
                at += 0.01;
                text.push_str(&event_line(
                    Duration::from_secs_f64(at),
                    &Event::Output(std::mem::take(&mut chunk)),
                ));
            }
        }
        if number < needles {
            chunk.push_str("deploy tag zq7needle-4242 done\r\n");
        }
        text.push_str(&event_line(
            Duration::from_secs_f64(at + 0.01),
            &Event::Output(chunk),
        ));
        std::fs::write(&path, &text).expect("write cast");
        written += size;
        let bytes = text.len() as u64;
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
        store
            .write(|tx| {
                tx.insert_session(&SessionRow {
                    id: id.clone(),
                    grant_id: None,
                    user: "alice".into(),
                    target: "web-1".into(),
                    protocol: "ssh".into(),
                    client_address: "127.0.0.1".into(),
                    started_at: now,
                    ended_at: None,
                    end_reason: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    statements: 0,
                })?;
                tx.insert_recording(
                    &RecordingRow {
                        session_id: id.clone(),
                        channel: 0,
                        kind: CAST_KIND.into(),
                        path: path.display().to_string(),
                        sha256: None,
                        size: None,
                    },
                    now,
                )?;
                tx.finalize_recording(&id, 0, &sha256, bytes, now)
            })
            .expect("store rows");
    }
    eprintln!(
        "wrote {:.0} MB of output in {} recordings in {:.1}s",
        written as f64 / 1e6,
        sessions,
        started.elapsed().as_secs_f64()
    );

    let statements = args.get(3).copied().unwrap_or(0);
    if statements > 0 {
        let (text, bytes) = query_log(statements);
        let id = "s-bstatmnt".to_string();
        let path = dir.path().join(format!("{id}.pg.jsonl"));
        std::fs::write(&path, &text).expect("write query log");
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
        store
            .write(|tx| {
                tx.insert_session(&SessionRow {
                    id: id.clone(),
                    grant_id: None,
                    user: "alice".into(),
                    target: "prod-db".into(),
                    protocol: "postgres".into(),
                    client_address: "127.0.0.1".into(),
                    started_at: now,
                    ended_at: None,
                    end_reason: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    statements,
                })?;
                tx.insert_recording(
                    &RecordingRow {
                        session_id: id.clone(),
                        channel: 0,
                        kind: portcullis::recording::QUERY_LOG_KIND.into(),
                        path: path.display().to_string(),
                        sha256: None,
                        size: None,
                    },
                    now,
                )?;
                tx.finalize_recording(&id, 0, &sha256, text.len() as u64, now)
            })
            .expect("store rows");
        let started = Instant::now();
        let mut indexer = Indexer::new(store.clone(), index.clone());
        loop {
            let more = indexer.pass().expect("index pass");
            if !more && index.open_sources().expect("sources").is_empty() {
                break;
            }
        }
        let wall = started.elapsed().as_secs_f64();
        println!(
            "| statements indexed (one query log, {:.0} MB) | {statements} in {wall:.1} s: {:.0} a second |",
            bytes as f64 / 1e6,
            statements as f64 / wall
        );
    }

    let mut indexer = Indexer::new(store.clone(), index.clone());
    let cpu = cpu_seconds();
    let started = Instant::now();
    loop {
        let more = indexer.pass().expect("index pass");
        if !more && index.open_sources().expect("sources").is_empty() {
            break;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let (lines, text_bytes) = index.size().expect("size");
    let index_bytes = file_size(&index_path);
    let mb = written as f64 / 1e6;

    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..21 {
        let at = Instant::now();
        found = index
            .search("zq7needle-4242", 5000, None)
            .expect("search")
            .len();
        times.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let mut six = Vec::new();
    for _ in 0..21 {
        let at = Instant::now();
        index.search("7needl", 5000, None).expect("search");
        six.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    six.sort_by(f64::total_cmp);
    // The baseline: what a reviewer has without the index, grep over the recordings.
    let mut grep = Vec::new();
    for _ in 0..3 {
        let at = Instant::now();
        let output = std::process::Command::new("grep")
            .args(["-rlF", "zq7needle-4242"])
            .arg(dir.path())
            .output()
            .expect("grep");
        assert!(!output.stdout.is_empty());
        grep.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    grep.sort_by(f64::total_cmp);
    println!("| measure | figure |");
    println!("| --- | --- |");
    println!("| output indexed | {mb:.0} MB in {sessions} recordings |");
    println!("| indexing rate, wall | {:.1} MB/s |", mb / wall);
    println!("| indexing rate, CPU | {:.1} MB/s of one core |", mb / cpu);
    println!(
        "| lines indexed | {lines} ({:.0} MB of text) |",
        text_bytes as f64 / 1e6
    );
    println!(
        "| index size | {:.0} MB, {:.2} GB per GB of output |",
        index_bytes as f64 / 1e6,
        index_bytes as f64 / written as f64
    );
    println!(
        "| search `zq7needle-4242` ({found} hits in {needles} sessions) | median {:.1} ms, max {:.1} ms |",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    println!(
        "| search `7needl` (6 characters) | median {:.1} ms, max {:.1} ms |",
        six[six.len() / 2],
        six[six.len() - 1]
    );
    println!(
        "| baseline: `grep -rlF` over the recordings | median {:.0} ms ({:.0} times the index's median) |",
        grep[1],
        grep[1] / times[times.len() / 2]
    );
}

/// A query log of `count` pgbench-like statements, as the bastion writes one.
fn query_log(count: u64) -> (String, usize) {
    let mut text = String::new();
    for number in 0..count {
        let line = serde_json::json!({
            "t": number as f64 / 20_000.0,
            "protocol": "extended",
            "sql": "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "params": [((number * 7919) % 100_000).to_string()],
            "duration_ms": 0.05,
            "tags": ["SELECT 1"],
            "rows": 1,
            "error": null,
            "copy_bytes": 0,
            "h": format!("{number:064x}"),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let bytes = text.len();
    (text, bytes)
}

fn file_size(path: &std::path::Path) -> u64 {
    let wal = path.with_extension("sqlite-wal");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// This process's user and system CPU seconds, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|both| both.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}
