//! Lead election (SPEC §6): claims in `zf_<cluster>_lead` (key `lead`), one
//! compare-and-set per term, first claim wins. [`Election`] is the pure state
//! machine, fed with claims, heartbeats, disconnect notices and clock ticks;
//! [`run`] is the thin NATS shell around it that publishes this node's
//! standing.
//!
//! A lead that falls silent is replaced after the lapse. A lead whose NATS
//! connection closes (its process died, its host reset the connection) is
//! replaced as soon as nats-server says so, after a grace (`--reconnect-grace-ms`)
//! in which a lead that only lost its connection for a moment writes its
//! claim again from its new connection. Either way the new lead's claim fences
//! the old one: a notice only makes the next claim sooner.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::names::Names;
use zerofoot_shared::protocol::{
    decode, encode, Heartbeat, LeadClaim, NatsConnection, Role, PROTOCOL_VERSION,
};

use crate::heartbeat::Standing;

/// The reasons nats-server gives for a connection that its client closed,
/// or that failed under it (a killed process with unread data resets it):
/// only these let the other nodes claim before the lapse.
const CLOSED_BY_THE_CLIENT: [&str; 3] = ["Client Closed", "Read Error", "Write Error"];

/// What the shell must do after feeding the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim `term` with compare-and-set on `revision` (None: no claim exists yet).
    Claim { term: u64, revision: Option<u64> },
    /// Stop leading at once: a newer term exists, or this node cannot trust its standing.
    StepDown { reason: String },
    /// Write this node's claim of `term` again (compare-and-set on
    /// `revision`) to name its new NATS connection.
    Reclaim { term: u64, revision: u64 },
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
    /// When nats-server said the newest claim's connection closed.
    holder_gone: Option<Instant>,
    /// This node leads but its NATS connection dropped: its monitors stop
    /// (others may claim once the grace is over) until it has written its
    /// claim again from a new connection.
    suspended: bool,
    /// How long after such a notice to wait for the holder to reconnect
    /// and write its claim again: a reconnect takes a few milliseconds, a
    /// dead process never comes back.
    grace: Duration,
}

impl Election {
    pub fn new(me: &str, lapse: Duration, grace: Duration, now: Instant) -> Self {
        Self {
            grace: grace.min(lapse),
            me: me.to_string(),
            lapse,
            started: now,
            newest: None,
            lead_heard: None,
            leading: None,
            last_tick: now,
            disconnected_since: None,
            holder_gone: None,
            suspended: false,
        }
    }

    pub fn standing(&self) -> Standing {
        match self.leading.filter(|_| !self.suspended) {
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
        if let Some(seen) = &self.newest {
            // A redelivered or lagging copy of what is already known.
            if !newer && revision <= seen.revision {
                return None;
            }
            // Written again from another connection, or replaced: either
            // way the holder it names has spoken since the notice.
            if newer || seen.claim.connection != claim.connection {
                self.holder_gone = None;
            }
        }
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
                self.suspended = false;
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

    /// The outcome of this node's claim of `term`, made from `connection`.
    pub fn claimed(
        &mut self,
        term: u64,
        revision: u64,
        connection: Option<NatsConnection>,
        now: Instant,
    ) {
        let claim = LeadClaim {
            v: PROTOCOL_VERSION,
            term,
            node: self.me.clone(),
            at: zerofoot_shared::time::now(),
            connection,
        };
        self.holder_gone = None;
        self.suspended = false;
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

    /// nats-server says `connection` closed for `reason`. When it is the
    /// newest claim's and another node holds it, and the reason is one a
    /// dead process gives, returns when to claim unless the holder writes
    /// its claim again first. A connection the server closed itself (a
    /// slow consumer, a stale connection, a kick) may belong to a stalled
    /// process whose drivers still run: that is the lapse's business.
    pub fn on_disconnect(
        &mut self,
        connection: &NatsConnection,
        reason: &str,
        now: Instant,
    ) -> Option<Instant> {
        if !CLOSED_BY_THE_CLIENT.contains(&reason) {
            return None;
        }
        let seen = self.newest.as_ref()?;
        if seen.claim.node == self.me || seen.claim.connection.as_ref() != Some(connection) {
            return None;
        }
        let gone = *self.holder_gone.get_or_insert(now);
        Some(gone + self.grace)
    }

    /// This node's NATS connection dropped: a lead stops its monitors at
    /// once, before the others may claim on the server's notice.
    pub fn on_connection_lost(&mut self) {
        if self.leading.is_some() {
            self.suspended = true;
        }
    }

    /// This node's NATS connection is now `connection`: a lead whose claim
    /// names another one writes it again, so that the old connection's
    /// disconnect notice does not start an election.
    pub fn on_connection(&mut self, connection: &NatsConnection) -> Option<Action> {
        let term = self.leading?;
        let seen = self.newest.as_ref()?;
        if seen.claim.term != term {
            return None;
        }
        if seen.claim.connection.as_ref() == Some(connection) {
            self.suspended = false;
            return None;
        }
        Some(Action::Reclaim {
            term,
            revision: seen.revision,
        })
    }

    /// The claim this node leads by can no longer be read: it stops.
    pub fn on_claim_lost(&mut self, now: Instant) -> Option<Action> {
        let term = self.leading?;
        Some(self.step_down(
            now,
            format!("the claim of term {term} could not be read back after a failed write"),
        ))
    }

    /// Stops leading; waits a lapse before any claim of its own, so that the
    /// claims it missed reach it first.
    fn step_down(&mut self, now: Instant, reason: String) -> Action {
        self.leading = None;
        self.suspended = false;
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
        let holder_gone = self
            .holder_gone
            .is_some_and(|gone| now.duration_since(gone) >= self.grace);
        if holder_gone || now.duration_since(quiet_since) > self.lapse {
            self.holder_gone = None;
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
    /// How long a lead whose connection closed has to write its claim again.
    pub reconnect_grace: Duration,
    pub tick_every: Duration,
    pub standing: watch::Sender<Standing>,
    pub liveness: crate::liveness::Liveness,
    /// The zone whose lead this node may become: only its nodes' heartbeats
    /// and its claim key count.
    pub zone: String,
    /// This node's NATS link, as its connection events tell it.
    pub link: watch::Receiver<zerofoot_shared::nats::Link>,
}

/// This node's NATS connection as nats-server names it, once connected.
fn connection_of(client: &async_nats::Client) -> Option<NatsConnection> {
    let info = client.server_info();
    (!info.server_id.is_empty()).then_some(NatsConnection {
        server: info.server_id,
        client: info.client_id,
    })
}

/// The connection a system account disconnect notice is about, and why
/// the server says it closed.
fn disconnected(payload: &[u8]) -> Option<(NatsConnection, String)> {
    #[derive(serde::Deserialize)]
    struct Id<T> {
        id: T,
    }
    #[derive(serde::Deserialize)]
    struct Notice {
        server: Id<String>,
        client: Id<u64>,
        #[serde(default)]
        reason: String,
    }
    let notice: Notice = serde_json::from_slice(payload).ok()?;
    Some((
        NatsConnection {
            server: notice.server.id,
            client: notice.client.id,
        },
        notice.reason,
    ))
}

/// How long after a reconnect event the shell looks for the new connection
/// in the client's server info (the client updates it just after the event).
const NEW_CONNECTION_WAIT: Duration = Duration::from_millis(200);

/// Runs the election until `cancel` fires, publishing this node's standing.
pub async fn run(shell: Shell, cancel: CancellationToken) {
    let Shell {
        me,
        names,
        client,
        lead_bucket,
        lapse,
        reconnect_grace,
        tick_every,
        standing,
        liveness,
        zone,
        mut link,
    } = shell;
    let key = zerofoot_shared::names::lead_key(&zone);
    let mut election = Election::new(&me, lapse, reconnect_grace, Instant::now());
    let mut heartbeats = match client.subscribe(names.all_heartbeats()).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to heartbeats; this node cannot take part in the election");
            return;
        }
    };
    // Without these notices (a server configured without the import of
    // `zf-management nats-auth`), a dead lead is replaced after the lapse.
    let mut disconnects = match client
        .subscribe(zerofoot_shared::names::client_disconnects())
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to client disconnect notices; this node cannot take part in the election");
            return;
        }
    };
    // When to claim if the lead whose connection closed does not write its
    // claim again; far off while no such notice is pending.
    let idle = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    let holder_gone = tokio::time::sleep_until(idle());
    tokio::pin!(holder_gone);
    // After a reconnect: the connection it replaced, and until when to look.
    let mut awaiting_new: Option<(Option<NatsConnection>, Instant)> = None;
    let mut last_connection = connection_of(&client);
    let mut poll = tokio::time::interval(Duration::from_millis(2));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    election.on_tick(Instant::now(), connected).or_else(|| {
                        // A reconnect whose event was missed.
                        connected
                            .then(|| connection_of(&client))
                            .flatten()
                            .and_then(|connection| election.on_connection(&connection))
                    })
                } else {
                    election.on_fenced(Instant::now())
                }
            }
            _ = poll.tick(), if awaiting_new.is_some() => {
                let current = connection_of(&client);
                match &awaiting_new {
                    Some((before, _)) if current.is_some() && current != *before => {
                        awaiting_new = None;
                        last_connection = current.clone();
                        current
                            .filter(|_| liveness.may_act())
                            .and_then(|connection| election.on_connection(&connection))
                    }
                    Some((_, until)) if Instant::now() > *until => {
                        awaiting_new = None;
                        None
                    }
                    _ => None,
                }
            }
            _ = &mut holder_gone => {
                holder_gone.as_mut().reset(idle());
                if liveness.may_act() {
                    let connected = client.connection_state() == async_nats::connection::State::Connected;
                    election.on_tick(Instant::now(), connected)
                } else {
                    None
                }
            }
            Ok(()) = link.changed() => {
                let now = *link.borrow_and_update();
                if now.up {
                    awaiting_new = Some((last_connection.clone(), Instant::now() + NEW_CONNECTION_WAIT));
                } else {
                    election.on_connection_lost();
                }
                None
            }
            Some(msg) = disconnects.next() => {
                if let Some(at) = disconnected(&msg.payload).and_then(|(connection, reason)| {
                    election.on_disconnect(&connection, &reason, Instant::now())
                }) {
                    tracing::info!(
                        "nats-server says the lead's connection closed; claiming unless it writes its claim again within {reconnect_grace:?}"
                    );
                    holder_gone.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                None
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
                let connection = connection_of(&client);
                let claim = LeadClaim {
                    v: PROTOCOL_VERSION,
                    term,
                    node: me.clone(),
                    at: zerofoot_shared::time::now(),
                    connection: connection.clone(),
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
                        election.claimed(term, revision, connection, Instant::now());
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
            Some(Action::Reclaim { term, revision }) => {
                let connection = connection_of(&client);
                let claim = LeadClaim {
                    v: PROTOCOL_VERSION,
                    term,
                    node: me.clone(),
                    at: zerofoot_shared::time::now(),
                    connection: connection.clone(),
                };
                match lead_bucket.update(&key, encode(&claim), revision).await {
                    Ok(revision) => {
                        tracing::info!(term, "reconnected to NATS: wrote the lead claim again from the new connection");
                        election.claimed(term, revision, connection, Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(term, error = %e, "could not write the lead claim again after a reconnect; another node may have claimed");
                        let step_down = match lead_bucket.entry(&key).await {
                            Ok(entry) => {
                                match entry.map(|e| (decode::<LeadClaim>(&e.value), e.revision)) {
                                    Some((Ok(claim), revision)) => {
                                        election.on_claim(claim, revision, Instant::now())
                                    }
                                    // Deleted or unreadable: nothing to lead by.
                                    _ => election.on_claim_lost(Instant::now()),
                                }
                            }
                            // NATS did not answer: the next tick tries again.
                            Err(_) => None,
                        };
                        if let Some(Action::StepDown { reason }) = step_down {
                            metrics::gauge!("zf_leading").set(0.0);
                            tracing::warn!(%reason, "stepping down: every monitor on this node is stopped");
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
    const GRACE: Duration = Duration::from_millis(50);

    fn claim(term: u64, node: &str) -> LeadClaim {
        LeadClaim {
            v: 1,
            term,
            node: node.into(),
            at: zerofoot_shared::time::now(),
            connection: None,
        }
    }

    fn connection(client: u64) -> NatsConnection {
        NatsConnection {
            server: "S1".into(),
            client,
        }
    }

    fn claim_from(term: u64, node: &str, client: u64) -> LeadClaim {
        LeadClaim {
            connection: Some(connection(client)),
            ..claim(term, node)
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
        let mut e = Election::new("a", LAPSE, GRACE, t0);
        assert_eq!(e.on_fenced(t0), None, "nothing to give up");
        e.claimed(1, 1, None, t0);
        assert!(matches!(
            e.on_fenced(t0 + Duration::from_millis(10)),
            Some(Action::StepDown { .. })
        ));
        assert_eq!(e.standing().role, Role::Auxiliary);
    }

    #[test]
    fn a_fresh_cluster_claims_term_one_after_the_lapse() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LAPSE, GRACE, t0);
        assert_eq!(e.on_tick(t0 + Duration::from_millis(500), true), None);
        let action = e.on_tick(t0 + Duration::from_millis(1001), true);
        assert_eq!(
            action,
            Some(Action::Claim {
                term: 1,
                revision: None
            })
        );
        e.claimed(1, 5, None, t0 + Duration::from_millis(1002));
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
        let mut e = Election::new("b", LAPSE, GRACE, t0);
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
        let mut e = Election::new("a", LAPSE, GRACE, t0);
        e.claimed(2, 3, None, t0);
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

        let mut e = Election::new("a", LAPSE, GRACE, t0);
        e.claimed(1, 1, None, t0);
        assert_eq!(e.on_tick(t0 + Duration::from_millis(100), true), None);
        assert!(
            matches!(
                e.on_tick(t0 + Duration::from_millis(3100), true),
                Some(Action::StepDown { .. })
            ),
            "stalled"
        );

        let mut e = Election::new("a", LAPSE, GRACE, t0);
        e.claimed(1, 1, None, t0);
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
        let mut e = Election::new("c", LAPSE, GRACE, t0);
        e.on_claim(claim(5, "a"), 9, t0);
        e.on_claim(claim(4, "b"), 8, t0);
        assert_eq!(e.newest_term(), 5);
    }

    #[test]
    fn a_closed_lead_connection_is_claimed_after_the_grace_not_the_lapse() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LAPSE, GRACE, t0);
        e.on_claim(claim_from(4, "a", 7), 10, t0);
        let gone = t0 + Duration::from_millis(100);
        assert_eq!(
            e.on_disconnect(&connection(8), "Client Closed", gone),
            None,
            "another client"
        );
        let claim_at = e
            .on_disconnect(&connection(7), "Client Closed", gone)
            .expect("the lead's");
        assert_eq!(claim_at, gone + GRACE);
        assert_eq!(
            e.on_disconnect(
                &connection(7),
                "Client Closed",
                gone + Duration::from_millis(20)
            ),
            Some(claim_at),
            "a repeated notice does not postpone the claim"
        );
        assert_eq!(e.on_tick(gone + Duration::from_millis(10), true), None);
        assert_eq!(
            e.on_tick(claim_at, true),
            Some(Action::Claim {
                term: 5,
                revision: Some(10)
            })
        );
        assert_eq!(
            e.on_tick(claim_at + Duration::from_millis(40), true),
            None,
            "one claim per notice"
        );
    }

    #[test]
    fn a_lead_that_writes_its_claim_again_from_a_new_connection_keeps_it() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LAPSE, GRACE, t0);
        e.on_claim(claim_from(4, "a", 7), 10, t0);
        assert!(e
            .on_disconnect(&connection(7), "Client Closed", t0)
            .is_some());
        e.on_claim(claim_from(4, "a", 9), 11, t0 + Duration::from_millis(5));
        assert_eq!(
            e.on_tick(t0 + GRACE + Duration::from_millis(1), true),
            None,
            "the lead came back within the grace"
        );
        assert_eq!(
            e.on_disconnect(
                &connection(7),
                "Client Closed",
                t0 + Duration::from_millis(60)
            ),
            None,
            "a late notice for its old connection"
        );
    }

    #[test]
    fn a_lead_writes_its_claim_again_after_a_reconnect() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LAPSE, GRACE, t0);
        assert_eq!(e.on_connection(&connection(1)), None, "not leading");
        e.claimed(3, 20, Some(connection(1)), t0);
        assert_eq!(e.on_connection(&connection(1)), None, "same connection");
        assert_eq!(
            e.on_connection(&connection(2)),
            Some(Action::Reclaim {
                term: 3,
                revision: 20
            })
        );
        e.claimed(3, 21, Some(connection(2)), t0);
        assert_eq!(e.on_connection(&connection(2)), None);
        assert_eq!(
            e.on_disconnect(&connection(2), "Client Closed", t0),
            None,
            "a node never acts on its own notice"
        );
    }

    #[test]
    fn a_disconnect_notice_names_its_server_and_client() {
        // As nats-server 2.15 sends it (abridged).
        let notice = br#"{"type":"io.nats.server.advisory.v1.client_disconnect","id":"kPEO","timestamp":"2026-11-23T19:35:46.689Z","server":{"name":"NDJQ","host":"127.0.0.1","id":"NDJQHVLO","ver":"2.15.1","seq":17},"client":{"start":"2026-11-23T19:35:46.588Z","host":"127.0.0.1","id":7,"acc":"ZEROFOOT","user":"a","name":"zf-agent-node node-0","kind":"Client"},"sent":{"msgs":0,"bytes":0},"received":{"msgs":0,"bytes":0},"reason":"Client Closed"}"#;
        assert_eq!(
            disconnected(notice),
            Some((
                NatsConnection {
                    server: "NDJQHVLO".into(),
                    client: 7
                },
                "Client Closed".to_string()
            ))
        );
        assert_eq!(disconnected(b"{}"), None);
        assert_eq!(disconnected(b"not json"), None);
    }

    #[test]
    fn only_a_connection_its_client_closed_starts_an_early_claim() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LAPSE, GRACE, t0);
        e.on_claim(claim_from(4, "a", 7), 10, t0);
        for reason in [
            "Slow Consumer (Write Deadline)",
            "Stale Connection",
            "Kicked",
            "Server Shutdown",
        ] {
            assert_eq!(
                e.on_disconnect(&connection(7), reason, t0),
                None,
                "{reason}"
            );
        }
        assert_eq!(e.on_tick(t0 + GRACE * 2, true), None, "the lapse decides");
        assert!(e.on_disconnect(&connection(7), "Read Error", t0).is_some());
    }

    #[test]
    fn a_stale_copy_of_the_claim_neither_rolls_it_back_nor_cancels_a_claim() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LAPSE, GRACE, t0);
        e.on_claim(claim_from(4, "a", 7), 10, t0);
        e.on_claim(claim_from(4, "a", 8), 11, t0);
        assert!(e
            .on_disconnect(&connection(8), "Client Closed", t0)
            .is_some());
        e.on_claim(claim_from(4, "a", 7), 10, t0);
        e.on_claim(claim_from(4, "a", 8), 11, t0);
        assert_eq!(
            e.on_tick(t0 + GRACE, true),
            Some(Action::Claim {
                term: 5,
                revision: Some(11)
            }),
            "redeliveries are not the holder speaking"
        );
    }

    #[test]
    fn a_lead_that_loses_its_connection_stops_its_monitors_until_it_reclaims() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LAPSE, GRACE, t0);
        e.claimed(3, 20, Some(connection(1)), t0);
        e.on_connection_lost();
        assert_eq!(
            e.standing(),
            Standing {
                role: Role::Auxiliary,
                term: 3
            },
            "monitors stop before the others may claim"
        );
        assert_eq!(
            e.on_connection(&connection(2)),
            Some(Action::Reclaim {
                term: 3,
                revision: 20
            })
        );
        e.claimed(3, 21, Some(connection(2)), t0);
        assert_eq!(e.standing().role, Role::Lead, "same term, monitors again");
        assert!(matches!(e.on_claim_lost(t0), Some(Action::StepDown { .. })));
        assert_eq!(e.standing().role, Role::Auxiliary);
    }
}
