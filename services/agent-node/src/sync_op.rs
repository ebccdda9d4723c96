//! Runs a sync operation this node owns: one driver run, its result (or
//! error) masked and written by the owner guard. A submission's driver
//! starts while the take is written and gets its stdin only once it landed;
//! if the take fails the driver is stopped unfed.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zerofoot_shared::protocol::{ExecutionContext, Output};
use zerofoot_shared::telemetry::{micros_since, TIMING};

use crate::driver;
use crate::ownership::{Claim, Outcome, Owned, Owners, Stopper, TakeError, Taken};
use crate::rules::StopWhy;
use crate::run::Runner;

/// Starts a claimed submission: the driver is spawned at once, the take is
/// written meanwhile. Returns once the take is written (or refused).
pub async fn start_claimed(
    owners: &Owners,
    runner: &Runner,
    claim: Claim,
) -> Result<(), TakeError> {
    let (committed_tx, committed_rx) = oneshot::channel();
    spawn(
        owners,
        runner,
        claim.ctx().clone(),
        claim.stopper().clone(),
        committed_rx,
    );
    match claim.commit().await? {
        Taken::Run(owned) => {
            let _ = committed_tx.send(*owned);
            Ok(())
        }
        Taken::Closed => Ok(()),
    }
}

/// Runs a sync operation whose take is written already.
pub fn start_owned(owners: &Owners, runner: &Runner, owned: Owned) {
    let (committed_tx, committed_rx) = oneshot::channel();
    spawn(
        owners,
        runner,
        owned.ctx().clone(),
        owned.stopper().clone(),
        committed_rx,
    );
    let _ = committed_tx.send(owned);
}

fn spawn(
    owners: &Owners,
    runner: &Runner,
    ctx: ExecutionContext,
    stopper: Stopper,
    committed: oneshot::Receiver<Owned>,
) {
    let span = tracing::info_span!("operation", op = %ctx.id, module = %ctx.module, operation = %ctx.operation, node = %owners.node());
    let runner = runner.clone();
    owners.spawn(run(runner, ctx, stopper, committed).instrument(span));
}

async fn run(
    runner: Runner,
    ctx: ExecutionContext,
    stopper: Stopper,
    committed: oneshot::Receiver<Owned>,
) {
    let started = Instant::now();
    let (feed, fed) = oneshot::channel();
    let token = stopper.token().clone();
    let committed = async {
        match committed.await {
            Ok(owned) => {
                let _ = feed.send(());
                Some((owned, micros_since(started)))
            }
            Err(_) => {
                token.cancel();
                None
            }
        }
    };
    let mut prepared_us = 0;
    let (outcome, owned) = tokio::join!(
        drive(
            &runner,
            &ctx,
            stopper.token(),
            fed,
            &mut prepared_us,
            started
        ),
        committed
    );
    let driver_done_us = micros_since(started);
    let Some((owned, fed_us)) = owned else {
        tracing::debug!("the take was not written; the driver was stopped before its input");
        return;
    };
    let outcome = match (outcome, stopper.why()) {
        (_, Some(StopWhy::Cancel)) => Outcome::Cancelled,
        (Ok(result), _) => Outcome::Complete(result),
        (Err(_), Some(why)) => {
            tracing::warn!(
                ?why,
                "driver stopped; the outcome is left to the operation's next owner"
            );
            return;
        }
        (Err(_), None) if stopper.is_stopped() => {
            tracing::info!("node stopping; the operation is left to another node");
            return;
        }
        (Err(error), None) => Outcome::Failed(error),
    };
    match owned.finish(outcome).await {
        Ok(state) => {
            tracing::debug!(
                target: TIMING,
                prepared_us,
                fed_us,
                driver_done_us,
                finish_us = micros_since(started) - driver_done_us,
                "sync operation run"
            );
            tracing::info!(
                state = state.as_str(),
                ms = started.elapsed().as_millis() as u64,
                "operation finished"
            )
        }
        Err(e) => tracing::warn!(error = %e, "outcome not written"),
    }
}

/// Runs the driver; the masked result, or a masked error message.
async fn drive(
    runner: &Runner,
    ctx: &ExecutionContext,
    token: &CancellationToken,
    stdin_after: oneshot::Receiver<()>,
    prepared_us: &mut u64,
    started: Instant,
) -> Result<Option<serde_json::Value>, String> {
    let (run, mut invocation) = runner
        .prepare(ctx, &ctx.attempts.len().to_string())
        .await
        .map_err(|e| e.to_string())?;
    *prepared_us = micros_since(started);
    invocation.stdin_after = Some(stdin_after);
    let (outputs, mut rx) = mpsc::channel(64);
    let (state_tx, state_rx) = mpsc::channel(16);
    let state_writer = tokio::spawn(runner.clone().report_states(ctx.resource.clone(), state_rx));
    let collect = async {
        let mut result = None;
        while let Some(output) = rx.recv().await {
            match output {
                Output::Result(mut data) => {
                    run.mask(&mut data);
                    result = Some(data);
                }
                Output::ResourceState(mut data) => {
                    run.mask(&mut data);
                    let _ = state_tx.send(data).await;
                }
                Output::Log { level, msg } => run.log(&level, &msg).await,
                Output::Event { .. } | Output::Checkpoint(_) => {
                    tracing::debug!("a sync operation wrote an event or checkpoint; ignored")
                }
            }
        }
        result
    };
    let (ran, result) = tokio::join!(driver::run(invocation, token, outputs), collect);
    drop(state_tx);
    let _ = state_writer.await;
    ran.map(|()| result)
        .map_err(|e| run.mask_str(&e.to_string()))
}
