//! Lead election (SPEC §6): claims in `zf_<cluster>_lead` (key `lead`), one
//! compare-and-set per term, first claim wins. [`Election`] is the pure state
//! machine, fed with claims, heartbeats and clock ticks; [`run`] is the thin
//! NATS shell around it that publishes this node's standing.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::names::Names;
use zerofoot_shared::protocol::{decode, encode, Heartbeat, LeadClaim, Role, PROTOCOL_VERSION};

use crate::heartbeat::Standing;

/// What the shell must do after feeding the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim `term` with compare-and-set on `revision` (None: no claim exists yet).
    Claim { term: u64, revision: Option<u64> },
    /// Stop leading at once: a newer term exists, or this node cannot trust its standing.
    StepDown { reason: String },
}

#[derive(Debug, Clone)]
struct Seen {
    claim: LeadClaim,
    revision: u64,
    at: Instant,
}

/// The election as this node sees it.
#[derive(Debug)]
pub struct Election {
    me: String,
    lapse: Duration,
    started: Instant,
    newest: Option<Seen>,
    /// Last heartbeat of the newest claim's holder, as lead at that term.
    lead_heard: Option<Instant>,
    leading: Option<u64>,
    last_tick: Instant,
    disconnected_since: Option<Instant>,
}

impl Election {
    pub fn new(me: &str, lapse: Duration, now: Instant) -> Self {
        Self {
            me: me.to_string(),
            lapse,
            started: now,
            newest: None,
            lead_heard: None,
            leading: None,
            last_tick: now,
            disconnected_since: None,
        }
    }

    pub fn standing(&self) -> Standing {
        match self.leading {
            Some(term) => Standing {
                role: Role::Lead,
                term,
            },
            None => Standing {
                role: Role::Auxiliary,
                term: self.newest_term(),
            },
        }
    }

    pub fn newest_term(&self) -> u64 {
        self.newest.as_ref().map(|s| s.claim.term).unwrap_or(0)
    }

    /// A claim seen in the lead bucket.
    pub fn on_claim(&mut self, claim: LeadClaim, revision: u64, now: Instant) -> Option<Action> {
        if claim.term < self.newest_term() {
            return None;
        }
        let newer = claim.term > self.newest_term();
        let holder_is_me = claim.node == self.me;
        self.newest = Some(Seen {
            claim,
            revision,
            at: now,
        });
        if newer {
            self.lead_heard = None;
        }
        match self.leading {
            Some(term) if newer && !holder_is_me => {
                self.leading = None;
                Some(Action::StepDown {
                    reason: format!(
                        "a newer term {} was claimed (this node led term {term})",
                        self.newest_term()
                    ),
                })
            }
            _ => None,
        }
    }

    /// The outcome of this node's claim of `term`.
    pub fn claimed(&mut self, term: u64, revision: u64, now: Instant) {
        let claim = LeadClaim {
            v: PROTOCOL_VERSION,
            term,
            node: self.me.clone(),
            at: zerofoot_shared::time::now(),
        };
        self.newest = Some(Seen {
            claim,
            revision,
            at: now,
        });
        self.leading = Some(term);
    }

    pub fn on_heartbeat(&mut self, hb: &Heartbeat, now: Instant) {
        if let Some(seen) = &self.newest {
            if hb.node == seen.claim.node && hb.role == Role::Lead && hb.term == seen.claim.term {
                self.lead_heard = Some(now);
            }
        }
    }

    /// Stops leading; waits a lapse before any claim of its own, so that the
    /// claims it missed reach it first.
    fn step_down(&mut self, now: Instant, reason: String) -> Action {
        self.leading = None;
        self.lead_heard = Some(now);
        Action::StepDown { reason }
    }

    /// This node's liveness check failed (NATS has not answered within the
    /// fence budget): a lead steps down at once, before another node may
    /// claim. A node that cannot act claims nothing (no tick is fed).
    pub fn on_fenced(&mut self, now: Instant) -> Option<Action> {
        let term = self.leading?;
        Some(self.step_down(
            now,
            format!("NATS did not answer within the fence budget while leading term {term}"),
        ))
    }

    /// A clock tick; `connected` is the NATS connection state now.
    pub fn on_tick(&mut self, now: Instant, connected: bool) -> Option<Action> {
        let gap = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if connected {
            self.disconnected_since = None;
        } else if self.disconnected_since.is_none() {
            self.disconnected_since = Some(now);
        }
        if let Some(term) = self.leading {
            // A lead that was paused (SIGSTOP, a stalled VM) or cut off from
            // NATS for a lapse cannot know it still leads: it fences itself.
            if gap > self.lapse {
                return Some(self.step_down(
                    now,
                    format!("this node was stalled for {gap:?} while leading term {term}"),
                ));
            }
            if self
                .disconnected_since
                .is_some_and(|since| now.duration_since(since) > self.lapse)
            {
                let reason = format!(
                    "cut off from NATS for more than {:?} while leading term {term}",
                    self.lapse
                );
                return Some(self.step_down(now, reason));
            }
            return None;
        }
        if !connected {
            return None;
        }
        let quiet_since = [
            Some(self.started),
            self.lead_heard,
            self.newest.as_ref().map(|s| s.at),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(self.started);
        if now.duration_since(quiet_since) > self.lapse {
            // Claiming again before the next tick would only lose races.
            self.lead_heard = Some(now);
            return Some(Action::Claim {
                term: self.newest_term() + 1,
                revision: self.newest.as_ref().map(|s| s.revision),
            });
        }
        None
    }
}

/// What the election shell needs from its node.
pub struct Shell {
    pub me: String,
    pub names: Names,
    pub client: async_nats::Client,
    pub lead_bucket: kv::Store,
    pub lapse: Duration,
    pub tick_every: Duration,
    pub standing: watch::Sender<Standing>,
    pub liveness: crate::liveness::Liveness,
    /// The zone whose lead this node may become: only its nodes' heartbeats
    /// and its claim key count.
    pub zone: String,
}

/// Runs the election until `cancel` fires, publishing this node's standing.
pub async fn run(shell: Shell, cancel: CancellationToken) {
    let Shell {
        me,
        names,
        client,
        lead_bucket,
        lapse,
        tick_every,
        standing,
        liveness,
        zone,
    } = shell;
    let key = zerofoot_shared::names::lead_key(&zone);
    let mut election = Election::new(&me, lapse, Instant::now());
    let mut heartbeats = match client.subscribe(names.all_heartbeats()).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to heartbeats; this node cannot take part in the election");
            return;
        }
    };
    let mut claims = loop {
        match lead_bucket.watch_with_history(&key).await {
            Ok(watch) => break watch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the lead bucket; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    };
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let action = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if liveness.may_act() {
                    let connected = client.connection_state() == async_nats::connection::State::Connected;
                    election.on_tick(Instant::now(), connected)
                } else {
                    election.on_fenced(Instant::now())
                }
            }
            Some(msg) = heartbeats.next() => {
                // A node speaks only for itself.
                // Another zone's nodes elect their own lead.
                if let Some(hb) = crate::membership::genuine_heartbeat(&names, &msg.subject, &msg.payload) {
                    if hb.zone == zone {
                        election.on_heartbeat(&hb, Instant::now());
                    }
                }
                None
            }
            entry = claims.next() => match entry {
                Some(Ok(entry)) if entry.operation == kv::Operation::Put => match decode::<LeadClaim>(&entry.value) {
                    Ok(claim) => election.on_claim(claim, entry.revision, Instant::now()),
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable lead claim");
                        None
                    }
                },
                Some(Ok(_)) => None,
                _ => {
                    tracing::warn!("lead claim watch ended; re-watching");
                    if let Ok(watch) = lead_bucket.watch_with_history(&key).await {
                        claims = watch;
                    }
                    None
                }
            },
        };
        match action {
            Some(Action::Claim { term, revision }) => {
                let claim = LeadClaim {
                    v: PROTOCOL_VERSION,
                    term,
                    node: me.clone(),
                    at: zerofoot_shared::time::now(),
                };
                let written = match revision {
                    Some(revision) => lead_bucket
                        .update(&key, encode(&claim), revision)
                        .await
                        .map_err(|e| e.to_string()),
                    None => lead_bucket
                        .create(&key, encode(&claim))
                        .await
                        .map_err(|e| e.to_string()),
                };
                match written {
                    Ok(revision) => {
                        election.claimed(term, revision, Instant::now());
                        tracing::info!(term, "won the lead claim: leading");
                        metrics::counter!("zf_elections_won_total").increment(1);
                        metrics::gauge!("zf_lead_term").set(term as f64);
                        metrics::gauge!("zf_leading").set(1.0);
                    }
                    Err(e) => {
                        tracing::debug!(term, error = %e, "lost the lead claim to another node");
                        if let Ok(Some(entry)) = lead_bucket.entry(&key).await {
                            if let Ok(claim) = decode::<LeadClaim>(&entry.value) {
                                election.on_claim(claim, entry.revision, Instant::now());
                            }
                        }
                    }
                }
            }
            Some(Action::StepDown { reason }) => {
                metrics::gauge!("zf_leading").set(0.0);
                tracing::warn!(%reason, "stepping down: every monitor on this node is stopped")
            }
            None => {}
        }
        standing.send_if_modified(|current| {
            let now = election.standing();
            let changed = *current != now;
            *current = now;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAPSE: Duration = Duration::from_millis(1000);

    fn claim(term: u64, node: &str) -> LeadClaim {
        LeadClaim {
            v: 1,
            term,
            node: node.into(),
            at: zerofoot_shared::time::now(),
        }
    }

    fn beat(node: &str, role: Role, term: u64) -> Heartbeat {
        Heartbeat {
            v: 1,
            node: node.into(),
            role,
            term,
            running: 0,
            version: "0".into(),
            interval_ms: 200,
            lapse_ms: 1000,
            registered_with: Vec::new(),
            sandbox: String::new(),
            zone: "default".into(),
            labels: Default::default(),
            started_at: zerofoot_shared::time::now(),
        }
    }

    #[test]
    fn a_fenced_lead_steps_down_at_once() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LAPSE, t0);
        assert_eq!(e.on_fenced(t0), None, "nothing to give up");
        e.claimed(1, 1, t0);
        assert!(matches!(
            e.on_fenced(t0 + Duration::from_millis(10)),
            Some(Action::StepDown { .. })
        ));
        assert_eq!(e.standing().role, Role::Auxiliary);
    }

    #[test]
    fn a_fresh_cluster_claims_term_one_after_the_lapse() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LAPSE, t0);
        assert_eq!(e.on_tick(t0 + Duration::from_millis(500), true), None);
        let action = e.on_tick(t0 + Duration::from_millis(1001), true);
        assert_eq!(
            action,
            Some(Action::Claim {
                term: 1,
                revision: None
            })
        );
        e.claimed(1, 5, t0 + Duration::from_millis(1002));
        assert_eq!(
            e.standing(),
            Standing {
                role: Role::Lead,
                term: 1
            }
        );
    }

    #[test]
    fn a_heard_lead_is_left_alone_and_a_silent_one_replaced() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LAPSE, t0);
        e.on_claim(claim(4, "a"), 10, t0);
        for ms in (200..=3000).step_by(200) {
            let now = t0 + Duration::from_millis(ms);
            e.on_heartbeat(&beat("a", Role::Lead, 4), now);
            assert_eq!(e.on_tick(now, true), None, "lead heard at {ms} ms");
        }
        // A heartbeat of the wrong term or role does not count.
        let later = t0 + Duration::from_millis(3500);
        e.on_heartbeat(&beat("a", Role::Auxiliary, 4), later);
        e.on_heartbeat(&beat("a", Role::Lead, 3), later);
        let action = e.on_tick(t0 + Duration::from_millis(4100), true);
        assert_eq!(
            action,
            Some(Action::Claim {
                term: 5,
                revision: Some(10)
            })
        );
        assert_eq!(
            e.on_tick(t0 + Duration::from_millis(4200), true),
            None,
            "no second claim right away"
        );
    }

    #[test]
    fn a_lead_steps_down_on_a_newer_term_a_stall_or_a_lost_connection() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LAPSE, t0);
        e.claimed(2, 3, t0);
        assert_eq!(e.on_claim(claim(2, "a"), 3, t0), None, "its own claim");
        assert!(matches!(
            e.on_claim(claim(3, "b"), 4, t0),
            Some(Action::StepDown { .. })
        ));
        assert_eq!(
            e.standing(),
            Standing {
                role: Role::Auxiliary,
                term: 3
            }
        );

        let mut e = Election::new("a", LAPSE, t0);
        e.claimed(1, 1, t0);
        assert_eq!(e.on_tick(t0 + Duration::from_millis(100), true), None);
        assert!(
            matches!(
                e.on_tick(t0 + Duration::from_millis(3100), true),
                Some(Action::StepDown { .. })
            ),
            "stalled"
        );

        let mut e = Election::new("a", LAPSE, t0);
        e.claimed(1, 1, t0);
        for ms in (100..=1000).step_by(100) {
            assert_eq!(e.on_tick(t0 + Duration::from_millis(ms), false), None);
        }
        assert!(matches!(
            e.on_tick(t0 + Duration::from_millis(1200), false),
            Some(Action::StepDown { .. })
        ));
        assert_eq!(
            e.on_tick(t0 + Duration::from_millis(1300), false),
            None,
            "no claim while cut off"
        );
    }

    #[test]
    fn older_claims_are_ignored() {
        let t0 = Instant::now();
        let mut e = Election::new("c", LAPSE, t0);
        e.on_claim(claim(5, "a"), 9, t0);
        e.on_claim(claim(4, "b"), 8, t0);
        assert_eq!(e.newest_term(), 5);
    }
}
