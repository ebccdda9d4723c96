//! Runs one async operation (a monitor) on the lead, at the lead's term
//! (SPEC §7): reads the log after the last checkpoint, appends the takeover
//! marker that fences the previous owner, restarts the driver from the
//! checkpoint, skips keyed events already in the log, appends events in
//! batches, and writes each checkpoint (compare-and-set) only after every
//! event before it is acknowledged. A driver that fails is restarted with
//! backoff; five failures in a row fail the operation.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::eventlog::{self, Event, LogEntry};
use zerofoot_shared::protocol::{
    mask_secrets, mask_str, CheckpointPosition, ExecutionContext, PROTOCOL_VERSION,
};

use crate::driver::{self, Output};
use crate::eventlog::{AppendError, EventLog};
use crate::executor::{remove_scratch, report_states, Executor, Prepared};

/// Events in one append at most.
const MAX_BATCH_EVENTS: usize = 1000;
/// Driver failures in a row before the operation fails.
const MAX_FAILURES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a monitor stopped on this node.
#[derive(Debug)]
enum Stop {
    /// Another owner took it: write nothing more.
    Fenced(String),
    /// This node stepped down or is shutting down: write nothing more.
    Released,
    /// The monitor reached a final state, written.
    Finished,
}

pub struct Monitor {
    pub exec: Executor,
    pub ctx: ExecutionContext,
    pub revision: u64,
    /// Cancelled when this node stops leading (or stops).
    pub lead: CancellationToken,
    /// Cancelled by a user's cancel request.
    pub cancel: CancellationToken,
}

struct LogState {
    log: EventLog,
    /// Last event seq in the log.
    last_seq: u64,
    /// Keys of events in the log after the current checkpoint.
    keys_after_checkpoint: HashSet<String>,
}

impl Monitor {
    pub async fn run(mut self) {
        let stop = self.drive().await;
        match stop {
            Stop::Fenced(why) => tracing::warn!(%why, "monitor fenced: another owner has it"),
            Stop::Released => tracing::info!("monitor released (this node no longer leads)"),
            Stop::Finished => tracing::info!(state = self.ctx.state.as_str(), "monitor finished"),
        }
    }

    async fn drive(&mut self) -> Stop {
        let mut state = match self.open_log().await {
            Ok(state) => state,
            Err(stop) => return stop,
        };
        let mut failures = 0u32;
        let mut backoff = FIRST_BACKOFF;
        let mut run = 0u32;
        loop {
            run += 1;
            let (outcome, checkpointed) = match self.run_driver(&mut state, run).await {
                Ok(done) => done,
                Err(stop) => return stop,
            };
            if self.cancel.is_cancelled() && !self.lead.is_cancelled() {
                self.ctx.cancel();
                return self.finish().await;
            }
            match outcome {
                Ok(()) => {
                    self.ctx.complete(None);
                    return self.finish().await;
                }
                Err(error) => {
                    failures = if checkpointed { 1 } else { failures + 1 };
                    tracing::warn!(failures, error = %error, "monitor driver failed");
                    if failures >= MAX_FAILURES {
                        self.ctx.fail(format!(
                            "the driver failed {failures} times in a row; last: {error}"
                        ));
                        return self.finish().await;
                    }
                    if checkpointed {
                        backoff = FIRST_BACKOFF;
                    }
                    tokio::select! {
                        _ = self.lead.cancelled() => return Stop::Released,
                        _ = self.cancel.cancelled() => {
                            self.ctx.cancel();
                            return self.finish().await;
                        }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Reads the log after the checkpoint and appends the takeover marker.
    async fn open_log(&mut self) -> Result<LogState, Stop> {
        let events = self.exec.assets.events.clone();
        let subject = self.exec.names.op_events(&self.ctx.id.to_string());
        let from = self
            .ctx
            .checkpoint_at
            .map(|c| c.log_position + 1)
            .unwrap_or(1);
        let mut last_seq = self.ctx.checkpoint_at.map(|c| c.seq).unwrap_or(0);
        for _ in 0..10 {
            if self.lead.is_cancelled() {
                return Err(Stop::Released);
            }
            let entries = eventlog::read(&events, &subject, from)
                .await
                .map_err(|e| Stop::Fenced(format!("cannot read the log: {e}")))?;
            let mut keys = HashSet::new();
            for (_, entry) in &entries {
                match entry {
                    LogEntry::Events { events, .. } => {
                        for event in events {
                            last_seq = last_seq.max(event.seq);
                            if let Some(key) = &event.key {
                                keys.insert(key.clone());
                            }
                        }
                    }
                    LogEntry::Takeover { after_seq, .. } => last_seq = last_seq.max(*after_seq),
                }
            }
            // The marker must follow the log's last message, whoever wrote it.
            let end = match entries.last() {
                Some((position, _)) => *position,
                None => eventlog::last_position(&events, &subject)
                    .await
                    .map_err(|e| Stop::Fenced(e.to_string()))?,
            };
            let mut log = EventLog::new(self.exec.assets.jetstream.clone(), subject.clone(), end);
            let marker = LogEntry::Takeover {
                v: PROTOCOL_VERSION,
                op: self.ctx.id,
                node: self.exec.node.clone(),
                epoch: self.ctx.epoch,
                after_seq: last_seq,
            };
            match log
                .append(
                    &marker,
                    &format!("{}:{}:takeover", self.ctx.id, self.ctx.epoch),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        after_seq = last_seq,
                        skipped_keys = keys.len(),
                        "takeover marker written; resuming from the checkpoint"
                    );
                    return Ok(LogState {
                        log,
                        last_seq,
                        keys_after_checkpoint: keys,
                    });
                }
                // The previous owner wrote after our read: read again.
                Err(AppendError::Fenced) => continue,
                Err(e) => return Err(Stop::Fenced(e.to_string())),
            }
        }
        Err(Stop::Fenced(
            "the log kept changing under the takeover".into(),
        ))
    }

    /// One run of the driver. Returns its outcome and whether it wrote a checkpoint.
    async fn run_driver(
        &mut self,
        state: &mut LogState,
        run: u32,
    ) -> Result<(Result<(), String>, bool), Stop> {
        let run_name = format!("{}-{run}", self.ctx.epoch);
        let Prepared {
            lease,
            invocation,
            secrets,
            scratch,
        } = match self.exec.prepare(&self.ctx, &run_name).await {
            Ok(p) => p,
            Err(e) => return Ok((Err(e), false)),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let driver_token = self.cancel.child_token();
        let lead = self.lead.clone();
        let kill_on_step_down = driver_token.clone();
        let watcher = tokio::spawn(async move {
            lead.cancelled().await;
            kill_on_step_down.cancel();
        });
        let token = driver_token.clone();
        let driver = tokio::spawn(async move {
            driver::run(invocation, &token, move |o| {
                let _ = tx.send(o);
            })
            .await
        });
        self.exec.running.fetch_add(1, Ordering::Relaxed);

        let (state_tx, state_rx) = mpsc::unbounded_channel();
        let state_writer = tokio::spawn(report_states(
            self.exec.clone(),
            self.ctx.resource.clone(),
            state_rx,
        ));
        let mut batch: Vec<Event> = Vec::new();
        let mut checkpointed = false;
        let mut stop = None;
        while let Some(output) = rx.recv().await {
            if self.lead.is_cancelled() {
                stop = Some(Stop::Released);
                break;
            }
            match output {
                Output::Event { mut data, key } => {
                    if let Some(k) = &key {
                        if state.keys_after_checkpoint.contains(k) {
                            continue;
                        }
                        state.keys_after_checkpoint.insert(k.clone());
                    }
                    mask_secrets(&mut data, &secrets);
                    state.last_seq += 1;
                    batch.push(Event {
                        v: PROTOCOL_VERSION,
                        op: self.ctx.id,
                        seq: state.last_seq,
                        key,
                        data,
                        node: self.exec.node.clone(),
                        epoch: self.ctx.epoch,
                        at: zerofoot_shared::time::now(),
                    });
                    // Append when the driver has nothing more queued, or the batch is full.
                    if batch.len() >= MAX_BATCH_EVENTS || rx.is_empty() {
                        if let Err(s) = self.flush(state, &mut batch).await {
                            stop = Some(s);
                            break;
                        }
                    }
                }
                Output::Checkpoint(mut data) => {
                    if let Err(s) = self.flush(state, &mut batch).await {
                        stop = Some(s);
                        break;
                    }
                    mask_secrets(&mut data, &secrets);
                    self.ctx.checkpoint = Some(data);
                    self.ctx.checkpoint_at = Some(CheckpointPosition {
                        seq: state.last_seq,
                        log_position: state.log.last_position(),
                    });
                    self.ctx.updated_at = zerofoot_shared::time::now();
                    match self.exec.write(&self.ctx, self.revision).await {
                        Ok(revision) => {
                            self.revision = revision;
                            state.keys_after_checkpoint.clear();
                            checkpointed = true;
                        }
                        Err(e) => {
                            stop = Some(Stop::Fenced(e.to_string()));
                            break;
                        }
                    }
                }
                Output::ResourceState(mut data) => {
                    mask_secrets(&mut data, &secrets);
                    let _ = state_tx.send(data);
                }
                Output::Log { level, msg } => {
                    driver::log_line(&level, &mask_str(&msg, &secrets));
                }
                Output::Result(_) => {
                    tracing::debug!("an async operation wrote a result line; ignored")
                }
            }
        }
        if stop.is_none() {
            if let Err(s) = self.flush(state, &mut batch).await {
                stop = Some(s);
            }
        }
        if stop.is_some() {
            driver_token.cancel();
        }
        let outcome = driver
            .await
            .unwrap_or_else(|e| Err(driver::DriverError::Io(e.to_string())));
        watcher.abort();
        self.exec.running.fetch_sub(1, Ordering::Relaxed);
        drop(state_tx);
        let _ = state_writer.await;
        drop(lease);
        remove_scratch(scratch).await;
        if let Some(stop) = stop {
            return Err(stop);
        }
        if self.lead.is_cancelled() {
            return Err(Stop::Released);
        }
        Ok((
            outcome.map_err(|e| mask_str(&e.to_string(), &secrets)),
            checkpointed,
        ))
    }

    async fn flush(&self, state: &mut LogState, batch: &mut Vec<Event>) -> Result<(), Stop> {
        if batch.is_empty() {
            return Ok(());
        }
        let first = batch[0].seq;
        let entry = LogEntry::Events {
            v: PROTOCOL_VERSION,
            events: std::mem::take(batch),
        };
        let msg_id = format!("{}:{}:{first}", self.ctx.id, self.ctx.epoch);
        match state.log.append(&entry, &msg_id).await {
            Ok(_) => Ok(()),
            Err(AppendError::Fenced) => Err(Stop::Fenced(
                "the event log was written by another owner".into(),
            )),
            Err(e) => Err(Stop::Fenced(e.to_string())),
        }
    }

    /// Writes the final state (compare-and-set).
    async fn finish(&mut self) -> Stop {
        match self.exec.write(&self.ctx, self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                Stop::Finished
            }
            Err(e) => Stop::Fenced(e.to_string()),
        }
    }
}
