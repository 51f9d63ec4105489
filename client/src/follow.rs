//! Following work the API accepted (a task, a renewal, a return) until it
//! settles, by polling with a deadline.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

use crate::error::Failure;

/// Calls `probe` until it says done or `timeout` passes. Starts polling
/// quickly (most work settles in milliseconds) and backs off to 200 ms so a
/// long wait does not hammer the API. Returns `Ok(value)` when done, or
/// `Err(last value seen)` when time ran out.
pub async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Result<Result<T, T>, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(bool, T), Failure>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let (done, value) = probe().await?;
        if done {
            return Ok(Ok(value));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Err(value));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
