//! Which nodes are alive, judged by their heartbeats on this node's monotonic
//! clock: a node is gone once no heartbeat came for its own lapse time. A
//! heartbeat counts only for the node named in its subject
//! (`zf.<cluster>.node.<id>.heartbeat`): one whose `node` field names another
//! node is ignored, so no node can keep another alive. A node serves the
//! zone its heartbeats name: one restarted in another zone no longer serves
//! the operations of its old zone, whose nodes take them over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zerofoot_shared::names::Names;
use zerofoot_shared::protocol::{decode, Heartbeat};

/// The heartbeat `payload` carries, if it is one and speaks for the node its
/// `subject` names; `None` for anything else.
pub fn genuine_heartbeat(names: &Names, subject: &str, payload: &[u8]) -> Option<Heartbeat> {
    let hb = decode::<Heartbeat>(payload).ok()?;
    (subject == names.heartbeat(&hb.node)).then_some(hb)
}

#[derive(Clone)]
pub struct Membership {
    me: String,
    zone: String,
    started: Instant,
    lapse: Duration,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

/// A node's last heartbeat: when, its lapse, its zone.
struct Seen {
    at: Instant,
    lapse: Duration,
    zone: String,
}

impl Membership {
    pub fn new(me: &str, zone: &str, lapse: Duration) -> Self {
        Self {
            me: me.to_string(),
            zone: zone.to_string(),
            started: Instant::now(),
            lapse,
            seen: Arc::default(),
        }
    }

    /// True once this node has listened for a whole lapse time, so that every
    /// live node has had the chance to be heard.
    pub fn settled(&self) -> bool {
        self.started.elapsed() > self.lapse
    }

    /// Whether `node` is alive and in `zone`.
    pub fn serves(&self, node: &str, zone: &str) -> bool {
        if node == self.me {
            return zone == self.zone;
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(node)
            .is_some_and(|s| s.at.elapsed() < s.lapse && s.zone == zone)
    }

    /// The live nodes of `zone`, this one included when it serves it.
    pub fn live_in(&self, zone: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut live: Vec<String> = seen
            .iter()
            .filter(|(node, s)| **node != self.me && s.at.elapsed() < s.lapse && s.zone == zone)
            .map(|(node, _)| node.clone())
            .collect();
        if self.zone == zone {
            live.push(self.me.clone());
        }
        live
    }

    pub fn record(&self, node: &str, lapse: Duration, zone: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(
            node.to_string(),
            Seen {
                at: Instant::now(),
                lapse,
                zone: zone.to_string(),
            },
        );
    }

    pub async fn follow(self, client: async_nats::Client, names: Names, cancel: CancellationToken) {
        let mut sub = match client.subscribe(names.all_heartbeats()).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to heartbeats; lost nodes will not be noticed");
                return;
            }
        };
        while let Some(msg) = zerofoot_shared::nats::next_or_cancelled(&mut sub, &cancel).await {
            match genuine_heartbeat(&names, msg.subject.as_str(), &msg.payload) {
                Some(hb) => self.record(&hb.node, Duration::from_millis(hb.lapse_ms), &hb.zone),
                None => {
                    tracing::debug!(subject = %msg.subject, "ignoring a heartbeat that is unreadable or speaks for another node")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_alive_until_its_lapse_passes() {
        let m = Membership::new("me", "a", Duration::from_millis(50));
        assert!(m.serves("me", "a"));
        assert!(!m.serves("me", "b"), "a node serves only its own zone");
        assert!(!m.serves("other", "a"));
        m.record("other", Duration::from_millis(30), "a");
        assert!(m.serves("other", "a"));
        assert!(!m.serves("other", "b"), "alive, but in another zone");
        std::thread::sleep(Duration::from_millis(40));
        assert!(!m.serves("other", "a"), "silent for longer than its lapse");
    }

    #[test]
    fn a_heartbeat_counts_only_for_the_node_of_its_subject() {
        let names = Names::new("t-1".parse().expect("cluster"));
        let beat = |node: &str| {
            zerofoot_shared::protocol::encode(&Heartbeat {
                v: 1,
                node: node.into(),
                role: zerofoot_shared::protocol::Role::Auxiliary,
                term: 0,
                running: 0,
                version: "0".into(),
                interval_ms: 200,
                lapse_ms: 1000,
                registered_with: Vec::new(),
                sandbox: String::new(),
                zone: "default".into(),
                labels: Default::default(),
                started_at: zerofoot_shared::time::now(),
            })
        };
        let own = genuine_heartbeat(&names, &names.heartbeat("a"), &beat("a"));
        assert_eq!(own.map(|hb| hb.node).as_deref(), Some("a"));
        assert!(
            genuine_heartbeat(&names, &names.heartbeat("b"), &beat("a")).is_none(),
            "b's subject, a's name"
        );
        assert!(genuine_heartbeat(&names, "zf.other.node.a.heartbeat", &beat("a")).is_none());
        assert!(genuine_heartbeat(&names, &names.heartbeat("a"), b"not json").is_none());
    }
}
