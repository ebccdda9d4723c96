//! What `GET /v1/operations` filters and sorts on, for every context in the
//! bucket, kept up to date by the contexts watch. A listing then reads only
//! the contexts it answers with instead of every key in the bucket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use uuid::Uuid;
use zerofoot_shared::protocol::{OperationKind, OperationState};

/// The listed fields of one context.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Summary {
    pub state: OperationState,
    pub kind: OperationKind,
    pub module: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A listing's filters; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub state: Option<OperationState>,
    pub kind: Option<OperationKind>,
    pub module: Option<String>,
}

impl Filter {
    pub fn matches(&self, state: OperationState, kind: OperationKind, module: &str) -> bool {
        self.state.is_none_or(|s| s == state)
            && self.kind.is_none_or(|k| k == kind)
            && self.module.as_deref().is_none_or(|m| m == module)
    }
}

/// Moves `zf_operations{module, kind, state}` by `by` for one context.
fn count(summary: &Summary, by: f64) {
    metrics::gauge!(
        "zf_operations",
        "module" => summary.module.clone(),
        "kind" => summary.kind.as_str(),
        "state" => summary.state.as_str()
    )
    .increment(by);
}

#[derive(Clone, Default)]
pub struct OperationIndex {
    summaries: Arc<Mutex<HashMap<Uuid, Summary>>>,
    /// The watch has delivered every context that existed when it started.
    current: Arc<AtomicBool>,
}

impl OperationIndex {
    fn summaries(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Summary>> {
        self.summaries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn put(&self, op: Uuid, summary: Summary) {
        count(&summary, 1.0);
        if let Some(old) = self.summaries().insert(op, summary) {
            count(&old, -1.0);
        }
    }

    pub fn remove(&self, op: &Uuid) {
        if let Some(old) = self.summaries().remove(op) {
            count(&old, -1.0);
        }
    }

    /// A new watch starts replaying: until it is current, listings read the bucket.
    pub fn set_current(&self, current: bool) {
        self.current.store(current, Ordering::Release);
    }

    /// The newest `limit` operations matching `filter`, newest first; `None`
    /// while the watch is still catching up.
    pub fn newest(&self, filter: &Filter, limit: usize) -> Option<Vec<Uuid>> {
        if !self.current.load(Ordering::Acquire) {
            return None;
        }
        let mut found: Vec<(OffsetDateTime, Uuid)> = self
            .summaries()
            .iter()
            .filter(|(_, s)| filter.matches(s.state, s.kind, &s.module))
            .map(|(id, s)| (s.created_at, *id))
            .collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found.truncate(limit);
        Some(found.into_iter().map(|(_, id)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(state: OperationState, module: &str, minute: i64) -> Summary {
        Summary {
            state,
            kind: OperationKind::Sync,
            module: module.into(),
            created_at: OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(minute),
        }
    }

    #[test]
    fn listings_are_newest_first_filtered_and_wait_for_the_watch() {
        let index = OperationIndex::default();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        index.put(a, summary(OperationState::Complete, "shell", 1));
        index.put(b, summary(OperationState::Running, "shell", 3));
        index.put(c, summary(OperationState::Complete, "probe", 2));
        assert_eq!(
            index.newest(&Filter::default(), 10),
            None,
            "not current yet"
        );
        index.set_current(true);
        assert_eq!(index.newest(&Filter::default(), 10), Some(vec![b, c, a]));
        assert_eq!(index.newest(&Filter::default(), 1), Some(vec![b]));
        let shell_done = Filter {
            state: Some(OperationState::Complete),
            module: Some("shell".into()),
            ..Default::default()
        };
        assert_eq!(index.newest(&shell_done, 10), Some(vec![a]));
        index.remove(&a);
        assert_eq!(index.newest(&shell_done, 10), Some(vec![]));
    }

    #[test]
    fn cancelling_is_listed_and_filtered_as_its_own_state() {
        let index = OperationIndex::default();
        index.set_current(true);
        let op = Uuid::new_v4();
        let seen: Summary = serde_json::from_value(serde_json::json!({
            "state": "cancelling", "kind": "async", "module": "counter",
            "created_at": "2026-01-01T00:00:00Z"
        }))
        .expect("a cancelling context reads as a summary");
        index.put(op, seen);
        index.put(
            Uuid::new_v4(),
            summary(OperationState::Running, "counter", 1),
        );
        let cancelling = Filter {
            state: "cancelling".parse().ok(),
            ..Default::default()
        };
        assert_eq!(index.newest(&cancelling, 10), Some(vec![op]));
        assert!(!OperationState::Cancelling.is_terminal(), "unfinished");
    }
}
