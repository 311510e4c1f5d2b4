//! What reviewers use (issue #19): the search indexer that keeps `store::search` current, and
//! the readers of recordings behind `replay` and `export`.
//!
//! Protocol-blind like the rest of the core: it reads recordings and the store, and the host
//! CLI and the SSH command interface print what it returns.

pub mod export;
pub mod indexer;
pub mod replay;
pub mod report;
