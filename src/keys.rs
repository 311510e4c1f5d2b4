//! The bastion's own SSH keys, kept in the state dir: the host key that engineers' clients pin, and
//! the client key the bastion uses for targets that name no credential of their own.
//!
//! Both are ed25519, generated on first start and never regenerated: a changed host key would make
//! every engineer's `ssh` refuse the bastion, which is the point of pinning it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

/// The file names inside the state dir.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
pub const CLIENT_KEY_FILE: &str = "client_ed25519_key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key {path} is not an OpenSSH private key: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode a new key: {0}")]
    Encode(String),
}

/// Loads the key at `path`, creating a new ed25519 key there (mode 0600) if there is none.
pub fn load_or_create(path: &Path, comment: &str) -> Result<PrivateKey, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes()).map_err(|error| KeyError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create(path, comment),
        Err(source) => Err(KeyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn create(path: &Path, comment: &str) -> Result<PrivateKey, KeyError> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment(comment);
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|error| KeyError::Encode(error.to_string()))?;
    if write_new_file(path, text.as_bytes())? {
        Ok(key)
    } else {
        // Another process won the race: use its key.
        load_or_create(path, comment)
    }
}

/// Writes a new secret file (mode 0600) under a temporary name and renames it, so a crash never
/// leaves a half-written file that the next start would refuse; false when another process
/// created `path` first (its file is kept).
pub fn write_new_file(path: &Path, bytes: &[u8]) -> Result<bool, KeyError> {
    let write_error = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(write_error)?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    if path.exists() {
        let _ = std::fs::remove_file(&temporary);
        return Ok(false);
    }
    std::fs::rename(&temporary, path).map_err(write_error)?;
    Ok(true)
}

/// The public half in `authorized_keys` form.
pub fn public_line(key: &PrivateKey) -> String {
    key.public_key()
        .to_openssh()
        .unwrap_or_else(|_| "<unencodable key>".to_string())
}

/// `SHA256:...`, as `ssh-keygen -l` and `ssh` print it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_and_then_reused() -> Result<(), KeyError> {
        let dir = tempfile::tempdir().map_err(|source| KeyError::Read {
            path: PathBuf::new(),
            source,
        })?;
        let path = dir.path().join(CLIENT_KEY_FILE);
        let first = load_or_create(&path, "portcullis")?;
        let second = load_or_create(&path, "portcullis")?;
        assert_eq!(public_line(&first), public_line(&second));
        assert!(public_line(&first).starts_with("ssh-ed25519 "));
        let mode = std::fs::metadata(&path)
            .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        Ok(())
    }
}
