//! The node's redb file: its mirror of the execution context state table and
//! of the resource inventory, each with the last KV revision applied, so that
//! a restart replays only what it missed. Methods are blocking; async callers
//! go through [`Store::run`].

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use zerofoot_shared::protocol::{decode, ExecutionContext, ResourceRecord};

const CONTEXTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contexts");
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
const REVISIONS: TableDefinition<&str, u64> = TableDefinition::new("revisions");

/// Which KV bucket a table mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mirrored {
    Contexts,
    Resources,
}

impl Mirrored {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Self::Contexts => CONTEXTS,
            Self::Resources => RESOURCES,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Contexts => "contexts",
            Self::Resources => "resources",
        }
    }
}

/// One change from the KV watch.
#[derive(Debug, Clone)]
pub enum Change {
    Put { key: String, value: bytes::Bytes },
    Delete { key: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb error: {0}")]
    Redb(String),
    #[error("the node's redb file is locked by a running node; stop it first, or ask the running node: nats req zf.<cluster>.node.<id>.mirror '{{}}'")]
    Locked,
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redb(e.to_string())
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

/// What `inspect` prints.
#[derive(Serialize)]
pub struct MirrorDump {
    pub contexts_revision: u64,
    pub resources_revision: u64,
    pub contexts: Vec<ExecutionContext>,
    /// Resources as stored, secrets left out.
    pub resources: Vec<zerofoot_shared::protocol::ResourceView>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked,
            other => redb_err(other),
        })?;
        let tx = db.begin_write().map_err(redb_err)?;
        {
            tx.open_table(CONTEXTS).map_err(redb_err)?;
            tx.open_table(RESOURCES).map_err(redb_err)?;
            tx.open_table(REVISIONS).map_err(redb_err)?;
        }
        tx.commit().map_err(redb_err)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs blocking store work off the async threads.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Redb(format!("store task failed: {e}")))?
    }

    pub fn revision(&self, what: Mirrored) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(REVISIONS).map_err(redb_err)?;
        Ok(table
            .get(what.name())
            .map_err(redb_err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Applies changes and records `revision`, in one transaction. A
    /// transaction that is not `durable` skips the fsync: after a crash the
    /// table and its revision go back together to the last durable commit,
    /// and the mirror replays from there.
    pub fn apply(
        &self,
        what: Mirrored,
        changes: &[Change],
        revision: u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        if !durable {
            tx.set_durability(redb::Durability::None)
                .map_err(redb_err)?;
        }
        {
            let mut table = tx.open_table(what.table()).map_err(redb_err)?;
            for change in changes {
                match change {
                    Change::Put { key, value } => {
                        table
                            .insert(key.as_str(), value.as_ref())
                            .map_err(redb_err)?;
                    }
                    Change::Delete { key } => {
                        table.remove(key.as_str()).map_err(redb_err)?;
                    }
                }
            }
            let mut revisions = tx.open_table(REVISIONS).map_err(redb_err)?;
            revisions.insert(what.name(), revision).map_err(redb_err)?;
        }
        tx.commit().map_err(redb_err)
    }

    /// Replaces the whole table with a snapshot, in one transaction.
    pub fn replace(
        &self,
        what: Mirrored,
        changes: &[Change],
        revision: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        {
            let mut table = tx.open_table(what.table()).map_err(redb_err)?;
            table.retain(|_, _| false).map_err(redb_err)?;
        }
        tx.commit().map_err(redb_err)?;
        self.apply(what, changes, revision, true)
    }

    fn all<T: serde::de::DeserializeOwned + zerofoot_shared::protocol::Versioned>(
        &self,
        what: Mirrored,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(what.table()).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(redb_err)? {
            let (key, value) = row.map_err(redb_err)?;
            match decode::<T>(value.value()) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(key = key.value(), error = %e, "skipping an unreadable mirrored entry")
                }
            }
        }
        Ok(out)
    }

    pub fn contexts(&self) -> Result<Vec<ExecutionContext>, StoreError> {
        self.all(Mirrored::Contexts)
    }

    pub fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        self.all(Mirrored::Resources)
    }

    pub fn dump(&self) -> Result<MirrorDump, StoreError> {
        Ok(MirrorDump {
            contexts_revision: self.revision(Mirrored::Contexts)?,
            resources_revision: self.revision(Mirrored::Resources)?,
            contexts: self.contexts()?,
            resources: self.resources()?.iter().map(Into::into).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_revisions_persist_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.redb");
        {
            let store = Store::open(&path).expect("open");
            let put = |k: &str| Change::Put {
                key: k.into(),
                value: bytes::Bytes::from_static(b"{}"),
            };
            store
                .apply(Mirrored::Contexts, &[put("a"), put("b")], 7, false)
                .expect("apply");
            store
                .apply(
                    Mirrored::Contexts,
                    &[Change::Delete { key: "a".into() }],
                    9,
                    true,
                )
                .expect("apply");
            assert!(matches!(Store::open(&path), Err(StoreError::Locked)));
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.revision(Mirrored::Contexts).expect("rev"), 9);
        assert_eq!(store.revision(Mirrored::Resources).expect("rev"), 0);
        store.replace(Mirrored::Contexts, &[], 12).expect("replace");
        assert_eq!(store.revision(Mirrored::Contexts).expect("rev"), 12);
    }
}
