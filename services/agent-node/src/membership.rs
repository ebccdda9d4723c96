//! Which nodes are alive, judged by their heartbeats on this node's monotonic
//! clock: a node is gone once no heartbeat came for its own lapse time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zerofoot_shared::names::Names;
use zerofoot_shared::protocol::{decode, Heartbeat};

#[derive(Clone)]
pub struct Membership {
    me: String,
    started: Instant,
    lapse: Duration,
    seen: Arc<Mutex<HashMap<String, (Instant, Duration)>>>,
}

impl Membership {
    pub fn new(me: &str, lapse: Duration) -> Self {
        Self {
            me: me.to_string(),
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

    pub fn is_alive(&self, node: &str) -> bool {
        if node == self.me {
            return true;
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(node)
            .is_some_and(|(at, lapse)| at.elapsed() < *lapse)
    }

    pub fn record(&self, node: &str, lapse: Duration) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(node.to_string(), (Instant::now(), lapse));
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
            if let Ok(hb) = decode::<Heartbeat>(&msg.payload) {
                self.record(&hb.node, Duration::from_millis(hb.lapse_ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_alive_until_its_lapse_passes() {
        let m = Membership::new("me", Duration::from_millis(50));
        assert!(m.is_alive("me"));
        assert!(!m.is_alive("other"));
        m.record("other", Duration::from_millis(30));
        assert!(m.is_alive("other"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!m.is_alive("other"), "silent for longer than its lapse");
    }
}
