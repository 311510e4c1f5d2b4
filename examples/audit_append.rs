//! What one `pg.query` audit event costs the bastion (issue #4's benchmark follow-up): builds,
//! chains and stores batches of events the way a database session does once a second, and prints
//! the microseconds per event of each part. Not a test; run with
//! `cargo run --release --example audit_append`.

use std::sync::Arc;
use std::time::Instant;

use portcullis::audit::{AuditEvent, AuditRecord};
use portcullis::ids::{IdKind, new_id};
use portcullis::store::Store;
use time::OffsetDateTime;

const BATCH: usize = 4_000;
const BATCHES: usize = 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("state.db"))?;
    let sql: Arc<str> = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;".into();
    let events: Vec<AuditEvent> = (0..BATCH)
        .map(|_| AuditEvent::PgQuery {
            session_id: new_id(IdKind::Session),
            user: "alice".to_string(),
            target: "prod-db".to_string(),
            protocol: "extended",
            function_oid: None,
            sql: sql.clone(),
            tags: vec!["SELECT 1".to_string()],
            rows: Some(1),
            sqlstate: None,
            duration_ms: 0.081,
        })
        .collect();
    let now = OffsetDateTime::now_utc();

    let started = Instant::now();
    for _ in 0..BATCHES {
        for event in &events {
            std::hint::black_box(event.entry());
        }
    }
    let entry = per_event(started);

    let started = Instant::now();
    for _ in 0..BATCHES * BATCH {
        std::hint::black_box(new_id(IdKind::AuditEvent));
    }
    let id = per_event(started);

    let started = Instant::now();
    for _ in 0..BATCHES * BATCH {
        std::hint::black_box(portcullis::clock::rfc3339(std::hint::black_box(now)));
    }
    let timestamp = per_event(started);

    let record = AuditRecord::chain(None, new_id(IdKind::AuditEvent), now, events[0].entry());
    let started = Instant::now();
    for _ in 0..BATCHES * BATCH {
        std::hint::black_box(std::hint::black_box(&record).compute_hash());
    }
    let hash = per_event(started);

    let started = Instant::now();
    let mut prev = (0_i64, "0".repeat(64));
    for _ in 0..BATCHES {
        for event in &events {
            let record = AuditRecord::chain(
                Some((prev.0, &prev.1)),
                new_id(IdKind::AuditEvent),
                now,
                event.entry(),
            );
            prev = (record.seq, record.hash);
        }
    }
    let chained = per_event(started);

    let started = Instant::now();
    for _ in 0..BATCHES {
        store.write(|tx| tx.append_audits(&events, now).map(|_| ()))?;
    }
    let stored = per_event(started);
    println!(
        "µs per pg.query event: entry {entry:.2}, id {id:.2}, rfc3339 {timestamp:.2}, hash {hash:.2}, entry+id+chain {chained:.2}, stored {stored:.2}"
    );
    Ok(())
}

fn per_event(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / (BATCH * BATCHES) as f64
}
