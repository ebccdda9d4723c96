//! The node's redb file: its mirror of the execution context state table and
//! of the resource inventory, each with the last KV revision applied, so that
//! a restart replays only what it missed. Methods are blocking; async callers
//! go through [`Store::run`].
//!
//! Two indexes over the contexts table are kept in the same transaction as
//! the table itself, so they can never disagree with it:
//!
//! - `unfinished`: every context whose state is not terminal
//!   ([`OperationState::is_terminal`]), by id and by kind and zone: the
//!   sweeper reads only its zone's sync operations and a lead only its
//!   zone's monitors ([`Store::unfinished_in`]), so ten thousand monitors
//!   cost a node's periodic sweep nothing.
//! - `finished`: every terminal context by the time the server stored its
//!   last write (the KV entry's own timestamp, never a node's clock) and its
//!   revision, so a purge round reads only the contexts past their retention
//!   ([`Store::finished_before`]).
//!
//! A file written before the indexes existed gets them built when it is
//! opened (see [`Store::open`]).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zerofoot_shared::protocol::{
    decode, ExecutionContext, OperationKind, OperationState, ResourceRecord,
};

const CONTEXTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contexts");
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
const REVISIONS: TableDefinition<&str, u64> = TableDefinition::new("revisions");
/// Contexts that are not finished: id -> (kind, zone).
const UNFINISHED: TableDefinition<&str, (&str, &str)> =
    TableDefinition::new("contexts_unfinished_scoped");
/// The same contexts by (kind, zone, id), for a range read of one scope.
const UNFINISHED_BY_SCOPE: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("contexts_unfinished_by_scope");
/// Version 1's index of unfinished ids, dropped when a file is upgraded.
const UNFINISHED_V1: TableDefinition<&str, ()> = TableDefinition::new("contexts_unfinished");
/// Finished contexts: (server time of the last write in ms since the epoch,
/// id) -> KV revision of that write.
const FINISHED: TableDefinition<(u64, &str), u64> = TableDefinition::new("contexts_finished");
/// Finished contexts: id -> the time part of their key in [`FINISHED`].
const FINISHED_AT: TableDefinition<&str, u64> = TableDefinition::new("contexts_finished_at");
/// Versions of the derived tables; a missing or older one is rebuilt on open.
const SCHEMA: TableDefinition<&str, u64> = TableDefinition::new("schema");
const CONTEXT_INDEXES: &str = "context_indexes";
/// The version of the context indexes this build keeps.
const CONTEXT_INDEXES_VERSION: u64 = 2;

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

/// A change as the server stored it: its KV revision and the server's
/// timestamp of the message (`kv::Entry::created`).
#[derive(Debug, Clone)]
pub struct Stamped {
    pub change: Change,
    pub revision: u64,
    /// Server time of the write, in milliseconds since the Unix epoch.
    pub stored_ms: u64,
}

impl Stamped {
    pub fn new(change: Change, revision: u64, stored_at: OffsetDateTime) -> Self {
        Self {
            change,
            revision,
            stored_ms: unix_ms(stored_at),
        }
    }
}

/// Milliseconds since the Unix epoch; 0 for anything before it.
pub fn unix_ms(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// A finished context as the `finished` index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub id: String,
    /// KV revision of its last write (0: unknown, indexed from an old file).
    pub revision: u64,
    /// Server time of its last write, in ms since the epoch.
    pub stored_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb error: {0}")]
    Redb(String),
    #[error("the node's redb file is locked by a running node; stop it first, or ask the running node: nats req zf.<cluster>.node.<id>.mirror '{{}}'")]
    Locked,
    #[error("cannot restrict the node's redb file to its own user: {0}")]
    Permissions(String),
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redb(e.to_string())
}

/// Decodes the context `key` of `contexts` onto `out`; one that is missing
/// or unreadable is logged and left out.
fn push_context(
    contexts: &redb::ReadOnlyTable<&str, &[u8]>,
    key: &str,
    out: &mut Vec<ExecutionContext>,
) -> Result<(), StoreError> {
    let Some(value) = contexts.get(key).map_err(redb_err)? else {
        // Cannot happen: both are written in one transaction.
        tracing::warn!(key, "an indexed context is missing from the mirror");
        return Ok(());
    };
    match decode::<ExecutionContext>(value.value()) {
        Ok(ctx) => out.push(ctx),
        Err(e) => tracing::warn!(key, error = %e, "skipping an unreadable context"),
    }
    Ok(())
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
    /// How many contexts the `unfinished` and `finished` indexes hold.
    pub unfinished_indexed: u64,
    pub finished_indexed: u64,
    /// Resources as stored, secrets left out.
    pub resources: Vec<zerofoot_shared::protocol::ResourceView>,
}

/// The part of a context the indexes need.
#[derive(Deserialize)]
struct Indexed {
    #[serde(default = "protocol_v1")]
    v: u32,
    state: OperationState,
    kind: OperationKind,
    #[serde(default = "zerofoot_shared::names::default_zone")]
    zone: String,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

fn protocol_v1() -> u32 {
    zerofoot_shared::protocol::PROTOCOL_VERSION
}

/// How a stored context is indexed; `None` when it cannot be read (it is
/// then in neither index: nothing acts on a context it cannot read).
fn classify(value: &[u8]) -> Option<Indexed> {
    serde_json::from_slice::<Indexed>(value)
        .ok()
        .filter(|c| c.v == zerofoot_shared::protocol::PROTOCOL_VERSION)
}

/// The index tables, open in one write transaction.
struct Indexes<'t> {
    unfinished: redb::Table<'t, &'static str, (&'static str, &'static str)>,
    unfinished_by_scope: redb::Table<'t, (&'static str, &'static str, &'static str), ()>,
    finished: redb::Table<'t, (u64, &'static str), u64>,
    finished_at: redb::Table<'t, &'static str, u64>,
}

impl<'t> Indexes<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            unfinished: tx.open_table(UNFINISHED).map_err(redb_err)?,
            unfinished_by_scope: tx.open_table(UNFINISHED_BY_SCOPE).map_err(redb_err)?,
            finished: tx.open_table(FINISHED).map_err(redb_err)?,
            finished_at: tx.open_table(FINISHED_AT).map_err(redb_err)?,
        })
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.unfinished.retain(|_, _| false).map_err(redb_err)?;
        self.unfinished_by_scope
            .retain(|_, _| false)
            .map_err(redb_err)?;
        self.finished.retain(|_, _| false).map_err(redb_err)?;
        self.finished_at.retain(|_, _| false).map_err(redb_err)?;
        Ok(())
    }

    /// Forgets `key` in every index.
    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        let scope = self.unfinished.remove(key).map_err(redb_err)?.map(|v| {
            let (kind, zone) = v.value();
            (kind.to_string(), zone.to_string())
        });
        if let Some((kind, zone)) = scope {
            self.unfinished_by_scope
                .remove((kind.as_str(), zone.as_str(), key))
                .map_err(redb_err)?;
        }
        let at = self
            .finished_at
            .remove(key)
            .map_err(redb_err)?
            .map(|v| v.value());
        if let Some(at) = at {
            self.finished.remove((at, key)).map_err(redb_err)?;
        }
        Ok(())
    }

    /// Indexes `key` as stored now with `value`. `stored_ms` and `revision`
    /// describe the write; `None` (an old file being migrated) falls back to
    /// the context's own `updated_at` and an unknown revision.
    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        stamp: Option<(u64, u64)>,
    ) -> Result<(), StoreError> {
        self.remove(key)?;
        let Some(ctx) = classify(value) else {
            tracing::warn!(
                key,
                "a mirrored context is unreadable: left out of the indexes"
            );
            return Ok(());
        };
        if !ctx.state.is_terminal() {
            return self.put_unfinished(key, &ctx);
        }
        let (stored_ms, revision) = stamp.unwrap_or((unix_ms(ctx.updated_at), 0));
        self.finished
            .insert((stored_ms, key), revision)
            .map_err(redb_err)?;
        self.finished_at.insert(key, stored_ms).map_err(redb_err)?;
        Ok(())
    }

    fn put_unfinished(&mut self, key: &str, ctx: &Indexed) -> Result<(), StoreError> {
        let kind = ctx.kind.as_str();
        self.unfinished
            .insert(key, (kind, ctx.zone.as_str()))
            .map_err(redb_err)?;
        self.unfinished_by_scope
            .insert((kind, ctx.zone.as_str(), key), ())
            .map_err(redb_err)?;
        Ok(())
    }

    /// Builds the `unfinished` index again from `contexts`, leaving the
    /// `finished` one (and its server stamps) as it is.
    fn rebuild_unfinished(
        &mut self,
        contexts: &redb::Table<&str, &[u8]>,
    ) -> Result<(), StoreError> {
        self.unfinished.retain(|_, _| false).map_err(redb_err)?;
        self.unfinished_by_scope
            .retain(|_, _| false)
            .map_err(redb_err)?;
        for row in contexts.iter().map_err(redb_err)? {
            let (key, value) = row.map_err(redb_err)?;
            if let Some(ctx) = classify(value.value()).filter(|c| !c.state.is_terminal()) {
                self.put_unfinished(key.value(), &ctx)?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Opens (or creates) the file. A file of version 1 gets its unfinished
    /// index rebuilt by kind and zone. A file without the context indexes,
    /// or with a version this build does not know, gets them built from the
    /// contexts table
    /// here; its contexts revision is then reset so that the mirror rebuilds
    /// from a snapshot, which stamps every finished context with the server's
    /// time of its last write (until then the context's own `updated_at`
    /// stands in).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked,
            other => redb_err(other),
        })?;
        // It holds every resource's sealed secrets: the node's user alone.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Permissions(e.to_string()))?;
        }
        let tx = db.begin_write().map_err(redb_err)?;
        {
            let contexts = tx.open_table(CONTEXTS).map_err(redb_err)?;
            tx.open_table(RESOURCES).map_err(redb_err)?;
            let mut revisions = tx.open_table(REVISIONS).map_err(redb_err)?;
            let mut schema = tx.open_table(SCHEMA).map_err(redb_err)?;
            let mut indexes = Indexes::open(&tx)?;
            let version = schema
                .get(CONTEXT_INDEXES)
                .map_err(redb_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            if version == 1 {
                // Version 1 kept the same `finished` index: only the
                // unfinished one changed (it is now by kind and zone).
                tx.delete_table(UNFINISHED_V1).map_err(redb_err)?;
                indexes.rebuild_unfinished(&contexts)?;
                schema
                    .insert(CONTEXT_INDEXES, CONTEXT_INDEXES_VERSION)
                    .map_err(redb_err)?;
                tracing::info!("rebuilt the unfinished-contexts index of a version 1 redb file by kind and zone");
            } else if version != CONTEXT_INDEXES_VERSION {
                // None, or one this build does not know (a newer build
                // wrote the file): everything is built again.
                tx.delete_table(UNFINISHED_V1).map_err(redb_err)?;
                indexes.clear()?;
                let mut count = 0u64;
                for row in contexts.iter().map_err(redb_err)? {
                    let (key, value) = row.map_err(redb_err)?;
                    indexes.put(key.value(), value.value(), None)?;
                    count += 1;
                }
                schema
                    .insert(CONTEXT_INDEXES, CONTEXT_INDEXES_VERSION)
                    .map_err(redb_err)?;
                if count > 0 {
                    revisions
                        .insert(Mirrored::Contexts.name(), 0)
                        .map_err(redb_err)?;
                    tracing::info!(
                        contexts = count,
                        "built the context indexes of an older redb file; the mirror rebuilds from a snapshot"
                    );
                }
            }
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

    /// Applies changes and records `revision`, in one transaction (the
    /// context indexes included). A transaction that is not `durable` skips
    /// the fsync: after a crash the table, its indexes and its revision go
    /// back together to the last durable commit, and the mirror replays
    /// from there.
    pub fn apply(
        &self,
        what: Mirrored,
        changes: &[Stamped],
        revision: u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        if !durable {
            tx.set_durability(redb::Durability::None)
                .map_err(redb_err)?;
        }
        Self::write(&tx, what, changes, revision, false)?;
        tx.commit().map_err(redb_err)
    }

    /// Replaces the whole table with a snapshot, in one transaction: a crash
    /// leaves either the old table or the new one, each with its revision.
    pub fn replace(
        &self,
        what: Mirrored,
        changes: &[Stamped],
        revision: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        Self::write(&tx, what, changes, revision, true)?;
        tx.commit().map_err(redb_err)
    }

    fn write(
        tx: &redb::WriteTransaction,
        what: Mirrored,
        changes: &[Stamped],
        revision: u64,
        clear_first: bool,
    ) -> Result<(), StoreError> {
        let mut table = tx.open_table(what.table()).map_err(redb_err)?;
        let mut indexes = match what {
            Mirrored::Contexts => Some(Indexes::open(tx)?),
            Mirrored::Resources => None,
        };
        if clear_first {
            table.retain(|_, _| false).map_err(redb_err)?;
            if let Some(indexes) = indexes.as_mut() {
                indexes.clear()?;
            }
        }
        for stamped in changes {
            match &stamped.change {
                Change::Put { key, value } => {
                    table
                        .insert(key.as_str(), value.as_ref())
                        .map_err(redb_err)?;
                    if let Some(indexes) = indexes.as_mut() {
                        indexes.put(key, value, Some((stamped.stored_ms, stamped.revision)))?;
                    }
                }
                Change::Delete { key } => {
                    table.remove(key.as_str()).map_err(redb_err)?;
                    if let Some(indexes) = indexes.as_mut() {
                        indexes.remove(key)?;
                    }
                }
            }
        }
        let mut revisions = tx.open_table(REVISIONS).map_err(redb_err)?;
        revisions.insert(what.name(), revision).map_err(redb_err)?;
        Ok(())
    }

    /// Every key of the table.
    pub fn keys(&self, what: Mirrored) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(what.table()).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(redb_err)? {
            let (key, _) = row.map_err(redb_err)?;
            out.push(key.value().to_string());
        }
        Ok(out)
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

    /// Every mirrored context. Work that looks for unfinished contexts reads
    /// [`Store::unfinished_contexts`] instead.
    pub fn contexts(&self) -> Result<Vec<ExecutionContext>, StoreError> {
        self.all(Mirrored::Contexts)
    }

    /// The contexts whose state is not terminal, read through the
    /// `unfinished` index (the finished ones are never touched).
    pub fn unfinished_contexts(&self) -> Result<Vec<ExecutionContext>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let ids = tx.open_table(UNFINISHED).map_err(redb_err)?;
        let contexts = tx.open_table(CONTEXTS).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in ids.iter().map_err(redb_err)? {
            let (key, _) = row.map_err(redb_err)?;
            push_context(&contexts, key.value(), &mut out)?;
        }
        Ok(out)
    }

    /// The unfinished contexts of one kind in one zone whose id `wanted`
    /// keeps, read through the `unfinished` index by scope: no other context
    /// is read or decoded.
    pub fn unfinished_in(
        &self,
        kind: OperationKind,
        zone: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<ExecutionContext>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let scoped = tx.open_table(UNFINISHED_BY_SCOPE).map_err(redb_err)?;
        let contexts = tx.open_table(CONTEXTS).map_err(redb_err)?;
        let kind = kind.as_str();
        let mut out = Vec::new();
        for row in scoped.range((kind, zone, "")..).map_err(redb_err)? {
            let (scope, _) = row.map_err(redb_err)?;
            let (row_kind, row_zone, key) = scope.value();
            if row_kind != kind || row_zone != zone {
                break;
            }
            if wanted(key) {
                push_context(&contexts, key, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Up to `limit` finished contexts whose last write the server stored
    /// before `before_ms` (ms since the epoch, server time), oldest first,
    /// starting after `after` (the last one of a previous call) if given.
    /// Reads only those, whatever the size of the table.
    pub fn finished_before(
        &self,
        before_ms: u64,
        after: Option<&Finished>,
        limit: usize,
    ) -> Result<Vec<Finished>, StoreError> {
        use std::ops::Bound;
        let tx = self.db.begin_read().map_err(redb_err)?;
        let finished = tx.open_table(FINISHED).map_err(redb_err)?;
        let start = match after {
            Some(f) => Bound::Excluded((f.stored_ms, f.id.as_str())),
            None => Bound::Unbounded,
        };
        let end = Bound::Excluded((before_ms, ""));
        if after.is_some_and(|f| f.stored_ms >= before_ms) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for row in finished.range((start, end)).map_err(redb_err)? {
            if out.len() >= limit {
                break;
            }
            let (key, revision) = row.map_err(redb_err)?;
            let (stored_ms, id) = key.value();
            out.push(Finished {
                id: id.to_string(),
                revision: revision.value(),
                stored_ms,
            });
        }
        Ok(out)
    }

    /// The batches that have not finished, read through the `unfinished` index.
    pub fn running_batches(&self) -> Result<std::collections::HashSet<uuid::Uuid>, StoreError> {
        Ok(self
            .unfinished_contexts()?
            .into_iter()
            .filter(|ctx| ctx.batch.is_some())
            .map(|ctx| ctx.id)
            .collect())
    }

    /// `due` without the children of `running` batches: a running batch's
    /// successor re-reads its children, and one purged would look never
    /// started.
    pub fn without_children_of(
        &self,
        due: Vec<Finished>,
        running: &std::collections::HashSet<uuid::Uuid>,
    ) -> Result<Vec<Finished>, StoreError> {
        if running.is_empty() {
            return Ok(due);
        }
        let tx = self.db.begin_read().map_err(redb_err)?;
        let contexts = tx.open_table(CONTEXTS).map_err(redb_err)?;
        let mut kept = Vec::with_capacity(due.len());
        for finished in due {
            let parent = contexts
                .get(finished.id.as_str())
                .map_err(redb_err)?
                .and_then(|v| decode::<ExecutionContext>(v.value()).ok())
                .and_then(|ctx| ctx.parent);
            if !parent.is_some_and(|p| running.contains(&p)) {
                kept.push(finished);
            }
        }
        Ok(kept)
    }

    /// How many contexts each index holds: (unfinished, finished).
    pub fn index_sizes(&self) -> Result<(u64, u64), StoreError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let unfinished = tx.open_table(UNFINISHED).map_err(redb_err)?;
        let finished = tx.open_table(FINISHED).map_err(redb_err)?;
        Ok((
            unfinished.len().map_err(redb_err)?,
            finished.len().map_err(redb_err)?,
        ))
    }

    pub fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        self.all(Mirrored::Resources)
    }

    pub fn dump(&self) -> Result<MirrorDump, StoreError> {
        let (unfinished_indexed, finished_indexed) = self.index_sizes()?;
        Ok(MirrorDump {
            contexts_revision: self.revision(Mirrored::Contexts)?,
            resources_revision: self.revision(Mirrored::Resources)?,
            contexts: self.contexts()?,
            unfinished_indexed,
            finished_indexed,
            resources: self.resources()?.iter().map(Into::into).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerofoot_shared::protocol::NewOperation;

    fn stamp(change: Change, revision: u64, stored_ms: u64) -> Stamped {
        Stamped {
            change,
            revision,
            stored_ms,
        }
    }

    fn put(k: &str) -> Change {
        Change::Put {
            key: k.into(),
            value: bytes::Bytes::from_static(b"{}"),
        }
    }

    fn ctx(state: OperationState) -> ExecutionContext {
        let mut ctx = ExecutionContext::new(NewOperation {
            module: "shell".into(),
            version: "1.0.0".into(),
            digest: "sha256:00".into(),
            operation: "run".into(),
            kind: OperationKind::Sync,
            resource: None,
            zone: "default".into(),
            params: serde_json::json!({}),
            timeout_ms: 1000,
            retries: 1,
            client: None,
        });
        ctx.state = state;
        ctx
    }

    fn put_ctx(ctx: &ExecutionContext) -> Change {
        Change::Put {
            key: ctx.id.to_string(),
            value: zerofoot_shared::protocol::encode(ctx),
        }
    }

    fn unfinished_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .unfinished_contexts()
            .expect("unfinished")
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        ids.sort();
        ids
    }

    fn finished_ids(store: &Store) -> Vec<String> {
        store
            .finished_before(u64::MAX, None, usize::MAX)
            .expect("finished")
            .into_iter()
            .map(|f| f.id)
            .collect()
    }

    fn sorted(mut ids: Vec<String>) -> Vec<String> {
        ids.sort();
        ids
    }

    #[test]
    fn children_of_a_running_batch_are_not_due_for_purge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("node.redb")).expect("open");
        let mut batch = ctx(OperationState::Running);
        batch.batch = Some(zerofoot_shared::batch::BatchPlan {
            targets: Vec::new(),
            max_parallel: 1,
            fail_policy: Default::default(),
            selector: None,
            child_kind: OperationKind::Sync,
        });
        let mut child = ctx(OperationState::Complete);
        child.parent = Some(batch.id);
        let loner = ctx(OperationState::Complete);
        let changes = [
            stamp(put_ctx(&batch), 1, 1),
            stamp(put_ctx(&child), 2, 2),
            stamp(put_ctx(&loner), 3, 3),
        ];
        store
            .apply(Mirrored::Contexts, &changes, 3, false)
            .expect("apply");
        let due = store
            .finished_before(u64::MAX, None, usize::MAX)
            .expect("finished");
        let running = store.running_batches().expect("running batches");
        let kept = store
            .without_children_of(due.clone(), &running)
            .expect("filter");
        let kept: Vec<String> = kept.into_iter().map(|f| f.id).collect();
        assert_eq!(
            kept,
            [loner.id.to_string()],
            "the running batch's child stays"
        );
        batch.state = OperationState::Complete;
        store
            .apply(
                Mirrored::Contexts,
                &[stamp(put_ctx(&batch), 4, 4)],
                4,
                false,
            )
            .expect("apply");
        let running = store.running_batches().expect("running batches");
        let kept = store.without_children_of(due, &running).expect("filter");
        assert_eq!(kept.len(), 2, "once the batch ended, its children may go");
    }

    #[test]
    fn changes_and_revisions_persist_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.redb");
        {
            let store = Store::open(&path).expect("open");
            store
                .apply(
                    Mirrored::Contexts,
                    &[stamp(put("a"), 6, 1), stamp(put("b"), 7, 1)],
                    7,
                    false,
                )
                .expect("apply");
            store
                .apply(
                    Mirrored::Contexts,
                    &[stamp(Change::Delete { key: "a".into() }, 9, 2)],
                    9,
                    true,
                )
                .expect("apply");
            assert!(matches!(Store::open(&path), Err(StoreError::Locked)));
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.revision(Mirrored::Contexts).expect("rev"), 9);
        assert_eq!(store.revision(Mirrored::Resources).expect("rev"), 0);
        assert_eq!(store.keys(Mirrored::Contexts).expect("keys"), ["b"]);
        store.replace(Mirrored::Contexts, &[], 12).expect("replace");
        assert_eq!(store.revision(Mirrored::Contexts).expect("rev"), 12);
        assert!(store.keys(Mirrored::Contexts).expect("keys").is_empty());
    }

    fn ids_in(store: &Store, kind: OperationKind, zone: &str) -> Vec<String> {
        let mut ids: Vec<String> = store
            .unfinished_in(kind, zone, |_| true)
            .expect("unfinished in")
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn unfinished_contexts_are_read_by_kind_and_zone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("node.redb")).expect("open");
        let in_zone = |kind, zone: &str, state| {
            let mut c = ctx(state);
            c.kind = kind;
            c.zone = zone.into();
            c
        };
        let sync_a = in_zone(OperationKind::Sync, "a", OperationState::Running);
        let mut async_a = in_zone(OperationKind::Async, "a", OperationState::Pending);
        let sync_b = in_zone(OperationKind::Sync, "b", OperationState::Pending);
        // "a" is a prefix of "ab": a range read must not run into it.
        let sync_ab = in_zone(OperationKind::Sync, "ab", OperationState::Running);
        let done_a = in_zone(OperationKind::Sync, "a", OperationState::Complete);
        let changes: Vec<Stamped> = [&sync_a, &async_a, &sync_b, &sync_ab, &done_a]
            .iter()
            .enumerate()
            .map(|(i, c)| stamp(put_ctx(c), i as u64 + 1, 100))
            .collect();
        store
            .apply(Mirrored::Contexts, &changes, 5, true)
            .expect("apply");
        assert_eq!(
            ids_in(&store, OperationKind::Sync, "a"),
            [sync_a.id.to_string()]
        );
        assert_eq!(
            ids_in(&store, OperationKind::Async, "a"),
            [async_a.id.to_string()]
        );
        assert_eq!(
            ids_in(&store, OperationKind::Sync, "b"),
            [sync_b.id.to_string()]
        );
        assert_eq!(
            ids_in(&store, OperationKind::Sync, "ab"),
            [sync_ab.id.to_string()]
        );
        assert!(ids_in(&store, OperationKind::Async, "b").is_empty());

        // Finished, then deleted: out of its scope.
        async_a.state = OperationState::Complete;
        store
            .apply(
                Mirrored::Contexts,
                &[
                    stamp(put_ctx(&async_a), 6, 200),
                    stamp(
                        Change::Delete {
                            key: sync_b.id.to_string(),
                        },
                        7,
                        200,
                    ),
                ],
                7,
                true,
            )
            .expect("apply");
        assert!(ids_in(&store, OperationKind::Async, "a").is_empty());
        assert!(ids_in(&store, OperationKind::Sync, "b").is_empty());
        assert_eq!(store.index_sizes().expect("sizes").0, 2);
    }

    #[test]
    fn the_indexes_follow_puts_state_changes_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("node.redb")).expect("open");
        let mut a = ctx(OperationState::Pending);
        let b = ctx(OperationState::Running);
        let c = ctx(OperationState::Complete);
        let d = ctx(OperationState::Cancelling);
        store
            .apply(
                Mirrored::Contexts,
                &[
                    stamp(put_ctx(&a), 1, 100),
                    stamp(put_ctx(&b), 2, 100),
                    stamp(put_ctx(&c), 3, 200),
                    stamp(put_ctx(&d), 4, 200),
                    // Unreadable: in neither index.
                    stamp(put("junk"), 5, 200),
                ],
                5,
                true,
            )
            .expect("apply");
        assert_eq!(
            unfinished_ids(&store),
            sorted(vec![a.id.to_string(), b.id.to_string(), d.id.to_string()]),
            "cancelling is not finished"
        );
        assert_eq!(finished_ids(&store), [c.id.to_string()]);

        // a finishes: it leaves the unfinished index, stamped with the server time.
        a.complete(None);
        store
            .apply(Mirrored::Contexts, &[stamp(put_ctx(&a), 6, 150)], 6, false)
            .expect("apply");
        assert_eq!(
            unfinished_ids(&store),
            sorted(vec![b.id.to_string(), d.id.to_string()])
        );
        assert_eq!(
            store.finished_before(u64::MAX, None, 10).expect("finished"),
            [
                Finished {
                    id: a.id.to_string(),
                    revision: 6,
                    stored_ms: 150
                },
                Finished {
                    id: c.id.to_string(),
                    revision: 3,
                    stored_ms: 200
                },
            ],
            "oldest first"
        );
        assert_eq!(
            store
                .finished_before(200, None, 10)
                .expect("finished")
                .len(),
            1,
            "strictly before"
        );
        assert_eq!(
            store
                .finished_before(u64::MAX, None, 1)
                .expect("finished")
                .len(),
            1
        );

        // A finished context written again is re-stamped, never listed twice.
        store
            .apply(Mirrored::Contexts, &[stamp(put_ctx(&a), 7, 300)], 7, false)
            .expect("apply");
        assert_eq!(finished_ids(&store), [c.id.to_string(), a.id.to_string()]);
        // Paging: after the first, the second; after the last, nothing.
        let first = store.finished_before(u64::MAX, None, 1).expect("finished");
        let second = store
            .finished_before(u64::MAX, first.first(), 1)
            .expect("finished");
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, a.id.to_string());
        assert!(store
            .finished_before(u64::MAX, second.first(), 1)
            .expect("finished")
            .is_empty());
        assert!(
            store
                .finished_before(250, first.first(), 10)
                .expect("finished")
                .is_empty(),
            "a is past the cutoff"
        );
        assert!(store
            .finished_before(100, second.first(), 10)
            .expect("finished")
            .is_empty());

        // Deletes leave both indexes.
        store
            .apply(
                Mirrored::Contexts,
                &[
                    stamp(
                        Change::Delete {
                            key: a.id.to_string(),
                        },
                        8,
                        400,
                    ),
                    stamp(
                        Change::Delete {
                            key: b.id.to_string(),
                        },
                        9,
                        400,
                    ),
                    stamp(Change::Delete { key: "junk".into() }, 10, 400),
                ],
                10,
                false,
            )
            .expect("apply");
        assert_eq!(unfinished_ids(&store), [d.id.to_string()]);
        assert_eq!(finished_ids(&store), [c.id.to_string()]);
        assert_eq!(store.index_sizes().expect("sizes"), (1, 1));
    }

    #[test]
    fn a_snapshot_replaces_the_indexes_with_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("node.redb")).expect("open");
        let old_running = ctx(OperationState::Running);
        let old_done = ctx(OperationState::Failed);
        store
            .apply(
                Mirrored::Contexts,
                &[
                    stamp(put_ctx(&old_running), 1, 10),
                    stamp(put_ctx(&old_done), 2, 10),
                ],
                2,
                true,
            )
            .expect("apply");
        let new_pending = ctx(OperationState::Pending);
        let new_done = ctx(OperationState::Cancelled);
        store
            .replace(
                Mirrored::Contexts,
                &[
                    stamp(put_ctx(&new_pending), 40, 20),
                    stamp(put_ctx(&new_done), 41, 20),
                    // A snapshot also carries the markers of purged keys.
                    stamp(
                        Change::Delete {
                            key: old_done.id.to_string(),
                        },
                        42,
                        20,
                    ),
                ],
                42,
            )
            .expect("replace");
        assert_eq!(unfinished_ids(&store), [new_pending.id.to_string()]);
        assert_eq!(finished_ids(&store), [new_done.id.to_string()]);
        assert_eq!(store.revision(Mirrored::Contexts).expect("rev"), 42);
        // The resources table has no indexes and leaves them alone.
        store
            .replace(Mirrored::Resources, &[stamp(put("r1"), 3, 30)], 3)
            .expect("replace");
        assert_eq!(store.index_sizes().expect("sizes"), (1, 1));
    }

    /// Writes a file as an older build did: the contexts `running` and
    /// `done`, version 1's index of unfinished ids holding `running`, the
    /// contexts revision 77, and whatever `more` adds.
    fn write_older_file(
        path: &Path,
        running: &ExecutionContext,
        done: &ExecutionContext,
        more: impl FnOnce(&redb::WriteTransaction),
    ) {
        let db = Database::create(path).expect("create");
        let tx = db.begin_write().expect("tx");
        {
            let mut contexts = tx.open_table(CONTEXTS).expect("contexts");
            for c in [running, done] {
                let value = zerofoot_shared::protocol::encode(c);
                contexts
                    .insert(c.id.to_string().as_str(), value.as_ref())
                    .expect("insert");
            }
            let mut v1 = tx.open_table(UNFINISHED_V1).expect("v1 index");
            v1.insert(running.id.to_string().as_str(), ())
                .expect("insert");
            let mut revisions = tx.open_table(REVISIONS).expect("revisions");
            revisions.insert("contexts", 77).expect("insert");
        }
        more(&tx);
        tx.commit().expect("commit");
    }

    #[test]
    fn a_version_1_file_keeps_its_finished_index_and_gets_unfinished_by_scope() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.redb");
        let mut running = ctx(OperationState::Running);
        running.kind = OperationKind::Async;
        running.zone = "z1".into();
        let done = ctx(OperationState::Complete);
        // A file as a build with version 1 of the indexes wrote it.
        write_older_file(&path, &running, &done, |tx| {
            let done_id = done.id.to_string();
            let mut finished = tx.open_table(FINISHED).expect("finished");
            finished
                .insert((1_800_000_000_000, done_id.as_str()), 41)
                .expect("insert");
            let mut finished_at = tx.open_table(FINISHED_AT).expect("finished at");
            finished_at
                .insert(done_id.as_str(), 1_800_000_000_000)
                .expect("insert");
            let mut schema = tx.open_table(SCHEMA).expect("schema");
            schema.insert(CONTEXT_INDEXES, 1).expect("insert");
        });
        let store = Store::open(&path).expect("open");
        assert_eq!(
            ids_in(&store, OperationKind::Async, "z1"),
            [running.id.to_string()]
        );
        assert_eq!(
            store.finished_before(u64::MAX, None, 10).expect("finished"),
            [Finished {
                id: done.id.to_string(),
                revision: 41,
                stored_ms: 1_800_000_000_000
            }],
            "the server's stamps are kept"
        );
        assert_eq!(
            store.revision(Mirrored::Contexts).expect("rev"),
            77,
            "no snapshot is needed"
        );
        let tx = store.db.begin_read().expect("read");
        assert!(
            tx.open_table(UNFINISHED_V1).is_err(),
            "version 1's index is dropped"
        );
    }

    #[test]
    fn an_old_file_gets_its_indexes_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.redb");
        let running = ctx(OperationState::Running);
        let mut done = ctx(OperationState::Complete);
        done.updated_at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        // A file as an older build wrote it: tables, no indexes (but a
        // version 1 index table, which the upgrade drops).
        write_older_file(&path, &running, &done, |tx| {
            let mut revisions = tx.open_table(REVISIONS).expect("revisions");
            revisions.insert("resources", 5).expect("insert");
        });
        {
            let store = Store::open(&path).expect("open");
            assert_eq!(unfinished_ids(&store), [running.id.to_string()]);
            assert_eq!(
                ids_in(&store, OperationKind::Sync, "default"),
                [running.id.to_string()]
            );
            let tx = store.db.begin_read().expect("read");
            assert!(
                tx.open_table(UNFINISHED_V1).is_err(),
                "version 1's index is dropped"
            );
            assert_eq!(
                store.finished_before(u64::MAX, None, 10).expect("finished"),
                [Finished {
                    id: done.id.to_string(),
                    revision: 0,
                    stored_ms: 1_700_000_000_000
                }],
                "stamped with its own updated_at until the snapshot"
            );
            assert_eq!(
                store.revision(Mirrored::Contexts).expect("rev"),
                0,
                "the mirror rebuilds from a snapshot"
            );
            assert_eq!(store.revision(Mirrored::Resources).expect("rev"), 5);
            store
                .apply(Mirrored::Contexts, &[], 80, true)
                .expect("apply");
        }
        // Built once: a later open keeps the revision and the indexes.
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.revision(Mirrored::Contexts).expect("rev"), 80);
        assert_eq!(store.index_sizes().expect("sizes"), (1, 1));
    }
}
