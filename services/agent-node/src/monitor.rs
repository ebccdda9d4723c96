//! Runs one async operation (a monitor) that the lead owns at its term
//! (SPEC §7): reads the log after the last checkpoint, appends the takeover
//! marker that fences the previous owner, restarts the driver from the
//! checkpoint, skips keyed events already in the log, appends events in
//! batches bounded in count and bytes, and writes each checkpoint through
//! the owner guard only after every event before it is acknowledged. A
//! driver (or a takeover) that fails is retried with backoff; five failures
//! in a row fail the operation with the reason.
//!
//! A monitor's task lives as long as the monitor, and a future holds the
//! state of the deepest await it may reach: every one-off write (opening
//! the log, a batch, a checkpoint, the outcome) is boxed, so that ten
//! thousand monitors keep only what waiting for the driver needs.

use tokio::sync::mpsc;
use tracing::Instrument;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::eventlog::{self, EncodedEvents};
use zerofoot_shared::names::Names;
use zerofoot_shared::protocol::{CheckpointPosition, Output};

use crate::driver;
use crate::eventlog::{AppendError, OwnedLog};
use crate::ownership::{Outcome, OwnError, Owned, Owners};
use crate::rules::{self, Backoff, StopWhy};
use crate::run::{Run, Runner};

/// Why a monitor stopped writing on this node.
#[derive(Debug)]
enum Stop {
    /// Another owner took it, or this node is fenced: write nothing more.
    Fenced(String),
    /// A user cancelled it: write `cancelled`.
    Cancelled,
    /// This node stepped down or is shutting down: write nothing more.
    Released,
}

/// How one driver run ended.
enum RunEnd {
    Exited(Result<(), String>),
    Stopped(Stop),
}

pub struct Monitor {
    pub owned: Owned,
    pub runner: Runner,
    pub names: Names,
    pub assets: Assets,
}

/// Spawns the monitor of an operation the lead just took.
pub fn start(owners: &Owners, monitor: Monitor, term: u64) {
    let ctx = monitor.owned.ctx();
    let span = tracing::info_span!("monitor", op = %ctx.id, module = %ctx.module, operation = %ctx.operation, node = %owners.node(), term);
    owners.spawn(monitor.run().instrument(span));
}

impl Monitor {
    pub async fn run(mut self) {
        let outcome = match self.drive().await {
            Ok(outcome) => outcome,
            Err(Stop::Cancelled) => Outcome::Cancelled,
            Err(Stop::Fenced(why)) => {
                tracing::warn!(%why, "monitor fenced: another owner has it, or this node cannot act");
                return;
            }
            Err(Stop::Released) => {
                tracing::info!("monitor released (this node no longer leads, or is stopping)");
                return;
            }
        };
        match Box::pin(self.owned.finish(outcome)).await {
            Ok(state) => tracing::info!(state = state.as_str(), "monitor finished"),
            Err(e) => tracing::warn!(error = %e, "monitor's final state not written"),
        }
    }

    /// Runs the driver until it ends for good; the outcome to write.
    async fn drive(&mut self) -> Result<Outcome, Stop> {
        let mut backoff = Backoff::default();
        let mut state: Option<OwnedLog> = None;
        let mut run = 0u32;
        loop {
            self.stopped()?;
            run += 1;
            let (end, progressed) = match &mut state {
                Some(log) => self.run_driver(log, run).await,
                None => {
                    match Box::pin(OwnedLog::open(&self.owned, &self.names, &self.assets)).await {
                        Ok(log) => {
                            let log = state.insert(log);
                            self.run_driver(log, run).await
                        }
                        Err(error) => (RunEnd::Exited(Err(error)), false),
                    }
                }
            };
            match end {
                RunEnd::Stopped(stop) => return Err(stop),
                RunEnd::Exited(Ok(())) => return Ok(Outcome::Complete(None)),
                RunEnd::Exited(Err(error)) => {
                    let Some(delay) = backoff.failed(progressed) else {
                        return Ok(Outcome::Failed(format!(
                            "the driver failed {} times in a row; last: {error}",
                            backoff.failures()
                        )));
                    };
                    tracing::warn!(failures = backoff.failures(), error = %error, "monitor driver failed; restarting it after {delay:?}");
                    metrics::counter!("zf_driver_restarts_total").increment(1);
                    tokio::select! {
                        _ = self.owned.stopper().token().cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// `Err` once the run was stopped, saying how.
    fn stopped(&self) -> Result<(), Stop> {
        let stopper = self.owned.stopper();
        if !stopper.is_stopped() {
            return Ok(());
        }
        Err(match stopper.why() {
            Some(StopWhy::Cancel) => Stop::Cancelled,
            Some(why) => Stop::Fenced(format!("{why:?}")),
            None => Stop::Released,
        })
    }

    /// One run of the driver; how it ended and whether it wrote a checkpoint.
    async fn run_driver(&mut self, state: &mut OwnedLog, run: u32) -> (RunEnd, bool) {
        let run_name = format!("{}-{run}", self.owned.ctx().epoch);
        let prepare = Box::pin(self.runner.prepare(self.owned.ctx(), &run_name));
        let (prepared, invocation) = match prepare.await {
            Ok(p) => p,
            Err(e) => return (RunEnd::Exited(Err(e.to_string())), false),
        };
        let (tx, mut rx) = mpsc::channel(256);
        let driver_token = self.owned.stopper().token().child_token();
        let token = driver_token.clone();
        let driver = tokio::spawn(
            async move { driver::run(invocation, &token, tx).await }.in_current_span(),
        );
        let (state_tx, state_rx) = mpsc::channel(16);
        let state_writer = tokio::spawn(
            self.runner
                .clone()
                .report_states(self.owned.ctx().resource.clone(), state_rx),
        );
        let mut batch = EncodedEvents::default();
        let mut checkpointed = false;
        let mut stop = None;
        while let Some(output) = rx.recv().await {
            if let Err(s) = self.stopped() {
                stop = Some(s);
                break;
            }
            match output {
                Output::Event { data, key } => {
                    let event = self.event(&prepared, state, data, key);
                    let Some((seq, encoded)) = event else {
                        continue;
                    };
                    if rules::batch_full(batch.len(), batch.bytes(), encoded.len()) {
                        if let Err(s) = self.flush(state, &mut batch).await {
                            stop = Some(s);
                            break;
                        }
                    }
                    batch.push(seq, &encoded);
                    // Append when the driver has nothing more queued.
                    if rx.is_empty() {
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
                    prepared.mask(&mut data);
                    let at = CheckpointPosition {
                        seq: state.seq.last_seq(),
                        log_position: state.log.last_position(),
                    };
                    match Box::pin(self.owned.checkpoint(data, at)).await {
                        Ok(()) => {
                            state.seq.checkpointed();
                            checkpointed = true;
                        }
                        Err(e) => {
                            stop = Some(self.stop_for(e));
                            break;
                        }
                    }
                }
                Output::ResourceState(mut data) => {
                    prepared.mask(&mut data);
                    let _ = state_tx.send(data).await;
                }
                Output::Log { level, msg } => Box::pin(prepared.log(&level, &msg)).await,
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
        // Whatever is still queued is dropped: the driver is stopping.
        drop(rx);
        let outcome = driver
            .await
            .unwrap_or_else(|e| Err(driver::DriverError::Io(e.to_string())));
        drop(state_tx);
        let _ = state_writer.await;
        let stop = stop.or_else(|| self.stopped().err());
        let end = match stop {
            Some(stop) => RunEnd::Stopped(stop),
            None => RunEnd::Exited(outcome.map_err(|e| prepared.mask_str(&e.to_string()))),
        };
        (end, checkpointed)
    }

    /// The event for a driver's `event` line, masked, numbered and
    /// encoded, with its sequence number; `None` if its key is in the log
    /// already. An event too large to append is replaced by an error event
    /// (same key and seq).
    fn event(
        &self,
        run: &Run,
        state: &mut OwnedLog,
        mut data: serde_json::Value,
        key: Option<String>,
    ) -> Option<(u64, Vec<u8>)> {
        let key = key.map(|k| run.mask_str(&k));
        run.mask(&mut data);
        let mut event = state.event(&self.owned, data, key)?;
        let mut encoded = eventlog::encode(&event);
        if encoded.len() > rules::MAX_EVENT_BYTES {
            tracing::warn!(
                seq = event.seq,
                bytes = encoded.len(),
                "the driver wrote an event larger than the limit; an error event stands in for it"
            );
            event.data = rules::oversized_event(encoded.len());
            encoded = eventlog::encode(&event);
        }
        Some((event.seq, encoded))
    }

    fn stop_for(&self, e: OwnError) -> Stop {
        match (e, self.owned.stopper().why()) {
            (_, Some(StopWhy::Cancel)) => Stop::Cancelled,
            (e, _) => Stop::Fenced(e.to_string()),
        }
    }

    async fn flush(&self, state: &mut OwnedLog, batch: &mut EncodedEvents) -> Result<(), Stop> {
        let batch = std::mem::take(batch);
        match Box::pin(state.append(&self.owned, &batch)).await {
            Ok(()) => Ok(()),
            Err(AppendError::Fenced) => Err(Stop::Fenced(
                "the event log was written by another owner".into(),
            )),
            Err(e) => Err(Stop::Fenced(e.to_string())),
        }
    }
}
