//! The node's data directory: created if missing, locked for the life of the
//! process (a second node on the same directory refuses to start), and home of
//! the node id that survives restarts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

const LOCK_FILE: &str = "node.lock";
const ID_FILE: &str = "node-id";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create the data dir {path}: {source}; pass a writable --data-dir")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the data dir {0} is in use by another zf-agent-node; give each node its own --data-dir"
    )]
    InUse(PathBuf),
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node id kept in {path} is invalid ({reason}); delete the file to get a new id")]
    BadId { path: PathBuf, reason: String },
    #[error("this data dir belongs to node {kept:?}, not {asked:?}; use another --data-dir or drop --id")]
    IdMismatch { kept: String, asked: String },
}

/// An open, locked data directory. The lock is released when this is dropped.
pub struct DataDir {
    root: PathBuf,
    node_id: String,
    _lock: Flock<File>,
}

impl DataDir {
    /// Opens `root`, locking it, and settles the node id: the one kept there,
    /// else `wanted`, else a new random one.
    pub fn open(root: &Path, wanted: Option<&str>) -> Result<Self, DataDirError> {
        fs::create_dir_all(root).map_err(|source| DataDirError::Create {
            path: root.to_path_buf(),
            source,
        })?;
        // Drivers run in their own scratch dirs: every path handed to them
        // must not depend on this process's working directory.
        let root = &fs::canonicalize(root).map_err(|source| DataDirError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        let lock_path = root.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| DataDirError::InUse(root.to_path_buf()))?;

        let id_path = root.join(ID_FILE);
        let node_id = match fs::read_to_string(&id_path) {
            Ok(kept) => {
                let kept = kept.trim().to_string();
                zerofoot_shared::names::validate_instance_id(&kept).map_err(|e| {
                    DataDirError::BadId {
                        path: id_path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                if let Some(asked) = wanted {
                    if asked != kept {
                        return Err(DataDirError::IdMismatch {
                            kept,
                            asked: asked.to_string(),
                        });
                    }
                }
                kept
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = wanted.map(str::to_string).unwrap_or_else(|| {
                    format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
                });
                write_atomically(&id_path, id.as_bytes()).map_err(io(&id_path))?;
                id
            }
            Err(e) => return Err(io(&id_path)(e)),
        };
        Ok(Self {
            root: root.to_path_buf(),
            node_id,
            _lock: lock,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Writes a file so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_survives_and_the_lock_excludes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("a/b");
        let first = DataDir::open(&root, None).expect("open");
        let id = first.node_id().to_string();
        let err = DataDir::open(&root, None)
            .err()
            .expect("second open must fail");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        let again = DataDir::open(&root, None).expect("reopen");
        assert_eq!(again.node_id(), id);
        drop(again);
        let err = DataDir::open(&root, Some("other")).err().expect("mismatch");
        assert!(err.to_string().contains("belongs to node"), "{err}");
    }

    #[test]
    fn a_relative_data_dir_becomes_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::env::set_current_dir(dir.path()).expect("cd");
        let opened = DataDir::open(Path::new("relative/node"), None).expect("open");
        assert!(opened.root().is_absolute(), "{}", opened.root().display());
        assert!(opened.root().ends_with("relative/node"));
    }
}
