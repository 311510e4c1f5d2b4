//! Archive sinks (issue #18): finished recordings and query logs copied to an S3-compatible
//! bucket (`kind = "s3"`) or a folder on a mounted volume (`kind = "folder"`), through the
//! `object_store` crate. A file goes when its `recording.finalized` event comes in the chain; it
//! is streamed up (never read whole into memory), read back and hashed, and only when the hash
//! is the one the chain holds is it marked archived and the cursor moved. Anything else is
//! retried, so a bucket that is down delays only this sink. Keys are
//! `<prefix>YYYY/MM/DD/<file name>`, as the recordings folder lays them out.

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Batch, SinkError, SinkEvent};
use crate::access::Access;
use crate::audit::types::RECORDING_FINALIZED;
use crate::config::ArchiveTarget;

pub(super) struct ArchiveSink {
    access: Access,
    target: ArchiveTarget,
    store: Option<Arc<dyn ObjectStore>>,
}

impl ArchiveSink {
    pub(super) fn new(access: &Access, target: &ArchiveTarget) -> ArchiveSink {
        ArchiveSink {
            access: access.clone(),
            target: target.clone(),
            store: None,
        }
    }

    pub(super) async fn deliver(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if self.store.is_none() {
            self.store = Some(open(&self.target)?);
        }
        let Some(store) = self.store.clone() else {
            return Err(SinkError::Io("no archive store".to_string()));
        };
        for event in &batch.events {
            let SinkEvent::Control(record) = event else {
                continue;
            };
            if record.event_type != RECORDING_FINALIZED {
                continue;
            }
            let detail: serde_json::Value = serde_json::from_str(&record.detail)
                .map_err(|error| SinkError::Io(format!("seq {}: {error}", record.seq)))?;
            let (Some(path), Some(sha256), Some(channel)) = (
                detail["path"].as_str(),
                detail["sha256"].as_str(),
                detail["channel"].as_u64(),
            ) else {
                continue;
            };
            let key = key(&self.target, &self.access, path)?;
            copy(&store, std::path::Path::new(path), &key).await?;
            verify(&store, &key, sha256).await?;
            let (access, session) = (self.access.clone(), record.session_id.clone());
            tokio::task::spawn_blocking(move || {
                let now = access.now();
                let session = session.unwrap_or_default();
                access
                    .store()
                    .write(|tx| tx.mark_archived(&session, channel as u32, now))
            })
            .await
            .map_err(|error| SinkError::Io(error.to_string()))??;
        }
        Ok(())
    }
}

/// The object store of an archive sink.
fn open(target: &ArchiveTarget) -> Result<Arc<dyn ObjectStore>, SinkError> {
    let failed = |error: object_store::Error| SinkError::Io(format!("the archive: {error}"));
    match target {
        ArchiveTarget::Folder { dir } => {
            std::fs::create_dir_all(dir).map_err(|error| {
                SinkError::Io(format!("cannot create {}: {error}", dir.display()))
            })?;
            let store =
                object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(failed)?;
            Ok(Arc::new(store))
        }
        ArchiveTarget::S3 {
            bucket,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            ..
        } => {
            let read = |source: &crate::secret::SecretSource| {
                source
                    .read()
                    .map_err(|error| SinkError::Io(format!("the archive's key: {error}")))
            };
            let mut builder = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(region)
                .with_access_key_id(read(access_key_id)?.expose())
                .with_secret_access_key(read(secret_access_key)?.expose());
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    // Checked at config load: plain http only to loopback.
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            Ok(Arc::new(builder.build().map_err(failed)?))
        }
    }
}

/// `<prefix>YYYY/MM/DD/<file>`: the file's place under the recordings folder.
fn key(target: &ArchiveTarget, access: &Access, path: &str) -> Result<ObjectPath, SinkError> {
    let recordings = &access.config().server.recordings_dir;
    let relative = std::path::Path::new(path)
        .strip_prefix(recordings)
        .map_err(|_| SinkError::Io(format!("{path} is not under the recordings folder")))?;
    let relative = relative.to_string_lossy();
    let prefix = match target {
        ArchiveTarget::S3 { prefix, .. } => prefix.as_str(),
        ArchiveTarget::Folder { .. } => "",
    };
    ObjectPath::parse(format!("{prefix}{relative}"))
        .map_err(|error| SinkError::Io(format!("{path}: {error}")))
}

/// Streams the file up in parts.
async fn copy(
    store: &Arc<dyn ObjectStore>,
    from: &std::path::Path,
    to: &ObjectPath,
) -> Result<(), SinkError> {
    let mut file = tokio::fs::File::open(from)
        .await
        .map_err(|error| SinkError::Io(format!("cannot read {}: {error}", from.display())))?;
    let mut writer = object_store::buffered::BufWriter::new(store.clone(), to.clone());
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut buffer)
            .await
            .map_err(|error| SinkError::Io(format!("cannot read {}: {error}", from.display())))?;
        if read == 0 {
            break;
        }
        writer
            .write_all(&buffer[..read])
            .await
            .map_err(|error| SinkError::Io(format!("the archive: {error}")))?;
    }
    writer
        .shutdown()
        .await
        .map_err(|error| SinkError::Io(format!("the archive: {error}")))
}

/// Reads the copy back and checks it hashes to what the chain holds.
async fn verify(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    sha256: &str,
) -> Result<(), SinkError> {
    let failed = |error: object_store::Error| SinkError::Io(format!("the archive: {error}"));
    let mut stream = store.get(key).await.map_err(failed)?.into_stream();
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.map_err(failed)?);
    }
    if hex::encode(hasher.finalize()) != sha256 {
        return Err(SinkError::Io(format!(
            "the archived copy of {key} does not hash to its recording.finalized sha256"
        )));
    }
    Ok(())
}
