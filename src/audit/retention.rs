//! The retention job (issue #18): local audit records and recordings older than
//! `[audit] retention_days` go, but only once every sink holds them and the recordings are
//! archived. With no sink configured nothing goes: the bastion's disk is then the only copy.
//!
//! Each run is one control event, `retention.ran`, written in the transaction that removes the
//! records. It names the last removed record (`chain_starts_after`: its seq and hash), so the
//! kept chain still verifies: `audit verify` starts from that anchor, and a chain that starts
//! anywhere else (more removed than the job removed) fails. Files go after the rows commit; a
//! crash between leaves a file no row names, never a row whose file is gone.

use time::OffsetDateTime;

use super::types::RETENTION_RAN;
use super::{Actor, AuditEvent, AuditRecord, ChainVerifier};
use crate::config::AuditConfig;
use crate::store::{Store, StoreError};

/// How often the server's job runs.
pub const INTERVAL: time::Duration = time::Duration::DAY;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub cutoff: OffsetDateTime,
    pub removed_events: u64,
    pub removed_recordings: u64,
    pub held_by: Vec<String>,
    /// Files whose rows went but that could not be removed.
    pub leftover_files: Vec<String>,
    /// Search index lines of sessions of which nothing is kept any more.
    pub removed_index_lines: u64,
}

/// Runs retention once at `now` and audits it.
pub fn run(
    store: &Store,
    config: &AuditConfig,
    recordings_dir: &std::path::Path,
    now: OffsetDateTime,
    actor: Actor,
    index: Option<&crate::store::search::SearchIndex>,
) -> Result<Report, StoreError> {
    let cutoff = now - time::Duration::days(i64::from(config.retention_days));
    // Every sink's cursor holds removal back (a statements-only sink still reads the query logs
    // the checkpoints name; an archive sink must have copied what its cursor passed), but events
    // go only when some sink keeps the control events themselves (issue #18 review: with only
    // an archive sink, no copy of the chain would ever have left the box).
    let sinks: Vec<String> = config.sinks.iter().map(|sink| sink.name.clone()).collect();
    let keeps_chain = config.sinks.iter().any(|sink| {
        sink.events.control && !matches!(sink.kind, crate::config::SinkKind::Archive(_))
    });
    let pruned = store.write(|tx| {
        let mut pruned = crate::store::Pruned::default();
        let previous = tx
            .latest_audit_of(RETENTION_RAN)?
            .as_ref()
            .and_then(anchor_of)
            .map(|(_, seq, hash)| (seq, hash));
        // The chain must start where the last run left it: records removed by anything else
        // are not made to look like retention's doing by a new anchor (issue #18 review).
        let starts_where_left = match (tx.audit_first()?, &previous) {
            (None, _) => true,
            (Some((1, _)), None) => true,
            (Some((first, prev_hash)), Some((seq, hash))) => first == seq + 1 && prev_hash == *hash,
            (Some(_), None) => false,
        };
        if !starts_where_left {
            pruned.held_by.push(
                "the chain does not start where the last run left it (records removed outside \
                 retention): nothing removed; see audit verify"
                    .to_string(),
            );
        } else if sinks.is_empty() {
            pruned.held_by.push("no sink is configured".to_string());
        } else if !keeps_chain {
            pruned
                .held_by
                .push("no sink takes the control events (file, postgres, webhook)".to_string());
        } else {
            pruned = tx.prune_audit(cutoff, &sinks)?;
        }
        let chain_starts_after = pruned.through.clone().or(previous);
        tx.append_audit(
            &AuditEvent::RetentionRan {
                actor,
                retention_days: config.retention_days,
                cutoff,
                removed_events: pruned.events,
                removed_recordings: pruned.files.len() as u64,
                chain_starts_after,
                held_by: pruned.held_by.clone(),
            },
            now,
        )?;
        Ok(pruned)
    })?;
    // The index is derived: what it held of removed sessions goes after the commit, and a
    // failure here is reported without undoing the removal (the next run retries nothing, so
    // say it).
    let mut removed_index_lines = 0;
    if let Some(index) = index
        && !pruned.sessions.is_empty()
    {
        match index.prune(&pruned.sessions) {
            Ok(lines) => removed_index_lines = lines,
            Err(error) => tracing::warn!(%error, "retention: cannot prune the search index"),
        }
    }
    let mut leftover_files = Vec::new();
    for file in &pruned.files {
        // Only files under the recordings folder: a row changed to name another file must not
        // make retention remove it (issue #18 review).
        let inside = file.strip_prefix(recordings_dir).is_ok_and(|relative| {
            relative
                .components()
                .all(|part| matches!(part, std::path::Component::Normal(_)))
        });
        if !inside {
            tracing::warn!(path = %file.display(), "retention: not under the recordings folder; kept");
            leftover_files.push(file.display().to_string());
            continue;
        }
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %file.display(), %error, "retention: cannot remove a file");
                leftover_files.push(file.display().to_string());
            }
        }
    }
    Ok(Report {
        cutoff,
        removed_events: pruned.events,
        removed_recordings: pruned.files.len() as u64,
        held_by: pruned.held_by,
        leftover_files,
        removed_index_lines,
    })
}

/// When the last run was, to schedule the next.
pub fn last_run(store: &Store) -> Result<Option<OffsetDateTime>, StoreError> {
    store.read(|tx| Ok(tx.latest_audit_of(RETENTION_RAN)?.map(|record| record.ts)))
}

/// Why the kept chain does not start where retention left it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    #[error(
        "audit chain starts at seq {first}, but no retention.ran event says records before it \
         were removed (records 1 to {} are missing)", .first - 1
    )]
    Unanchored { first: i64 },
    #[error(
        "audit chain starts at seq {first}, but the last retention.ran (seq {anchor_seq}) says \
         it starts after seq {after}: records were removed outside retention"
    )]
    Moved {
        first: i64,
        anchor_seq: i64,
        after: i64,
    },
}

/// A `retention.ran` record's seq and the anchor it names, if it names one.
pub fn anchor_of(record: &AuditRecord) -> Option<(i64, i64, String)> {
    let detail: serde_json::Value = serde_json::from_str(&record.detail).ok()?;
    let after = &detail["chain_starts_after"];
    Some((
        record.seq,
        after["seq"].as_i64()?,
        after["hash"].as_str()?.to_string(),
    ))
}

/// The verifier for the kept chain: from genesis when nothing was removed, else from the anchor
/// the newest `retention.ran` names (whose own hash the walk then checks). `first` is the first
/// kept record's seq.
pub fn verifier(
    first: Option<i64>,
    latest_run: Option<&AuditRecord>,
) -> Result<ChainVerifier, AnchorError> {
    let anchor = latest_run.and_then(anchor_of);
    match (first, anchor) {
        (None, _) | (Some(1), None) => Ok(ChainVerifier::default()),
        (Some(first), None) => Err(AnchorError::Unanchored { first }),
        (Some(first), Some((anchor_seq, after, _))) if after + 1 != first => {
            Err(AnchorError::Moved {
                first,
                anchor_seq,
                after,
            })
        }
        (Some(_), Some((_, after, hash))) => Ok(ChainVerifier::starting_after(after, &hash)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_record(seq: i64, after: Option<(i64, &str)>) -> AuditRecord {
        let event = AuditEvent::RetentionRan {
            actor: Actor::System,
            retention_days: 365,
            cutoff: OffsetDateTime::UNIX_EPOCH,
            removed_events: 0,
            removed_recordings: 0,
            chain_starts_after: after.map(|(seq, hash)| (seq, hash.to_string())),
            held_by: Vec::new(),
        };
        AuditRecord::chain(
            Some((seq - 1, "00")),
            "e".to_string(),
            OffsetDateTime::UNIX_EPOCH,
            event.entry(),
        )
    }

    #[test]
    fn the_chain_starts_at_the_anchor_or_fails() {
        let anchored = run_record(50, Some((10, "ab")));
        let unanchored = run_record(50, None);
        // (first kept seq, newest run, verifies from)
        type Case<'a> = (Option<i64>, Option<&'a AuditRecord>, Result<i64, &'a str>);
        let cases: &[Case] = &[
            (None, None, Ok(1)),
            (Some(1), None, Ok(1)),
            (Some(1), Some(&unanchored), Ok(1)),
            (Some(11), Some(&anchored), Ok(11)),
            (Some(12), Some(&anchored), Err("removed outside retention")),
            (Some(5), Some(&anchored), Err("removed outside retention")),
            (Some(11), None, Err("records 1 to 10 are missing")),
            (
                Some(11),
                Some(&unanchored),
                Err("records 1 to 10 are missing"),
            ),
        ];
        for (first, run, expected) in cases {
            let got = verifier(*first, *run);
            match (expected, got) {
                (Ok(seq), Ok(verifier)) => assert_eq!(verifier.expected_seq, *seq),
                (Err(text), Err(error)) => {
                    assert!(error.to_string().contains(text), "{error}")
                }
                (expected, got) => panic!("{first:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }
}
