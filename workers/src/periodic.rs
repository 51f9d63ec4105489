//! The loop of the workers' periodic passes (the scheduler, the hold
//! shelf): a pass every interval, another at once after a full one.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

/// Runs `pass` every `interval` until `shutdown`. A pass that handled
/// `batch` items or more may have left more behind, so the next runs at
/// once; a failed pass is logged (as `what`) and tried again next tick.
pub async fn every<F, Fut>(
    interval: Duration,
    batch: usize,
    what: &'static str,
    shutdown: CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            match pass().await {
                Ok(n) if n >= batch => {
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "{what} pass failed; trying again later");
                    break;
                }
            }
        }
    }
}
