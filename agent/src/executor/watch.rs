//! The replica's watch over its runs' rows: every `cancel_poll` it reads which of its runs
//! were cancelled (or finished) through another replica and stops them; every
//! `heartbeat_interval` it renews their heartbeat; on start and every `stale_after` it marks
//! the crew's runs whose pod went silent as interrupted.

use super::ActiveRuns;
use crate::store::RunRecords;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The watch loop; aborted when dropped.
#[derive(Debug)]
pub struct WatchTask(tokio::task::JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the loop.
pub fn spawn(records: Arc<RunRecords>, active: ActiveRuns) -> WatchTask {
    WatchTask(tokio::spawn(run(records, active)))
}

async fn run(records: Arc<RunRecords>, active: ActiveRuns) {
    let timing = records.timing();
    let mut ticker = tokio::time::interval(timing.cancel_poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_heartbeat, mut last_sweep) = (Instant::now(), None::<Instant>);
    loop {
        ticker.tick().await;
        if last_sweep.is_none_or(|t| t.elapsed() >= timing.stale_after) {
            last_sweep = Some(Instant::now());
            match records.sweep().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(runs = n, "marked runs interrupted: their pods stopped while they were in flight")
                }
                Err(e) => tracing::warn!(error = %e, "cannot check for interrupted runs"),
            }
        }
        let ids = active.ids();
        if ids.is_empty() {
            continue;
        }
        match records.stop_requests(&ids).await {
            Ok(stops) => {
                for (id, reason) in stops {
                    if let Some(run) = active.get(&id)
                        && run.request_stop(reason)
                    {
                        tracing::info!(run = %id, ?reason, "stopping the run as its row asks");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the runs for cancels"),
        }
        if due(last_heartbeat.elapsed(), timing.heartbeat_interval, timing.cancel_poll) {
            match records.heartbeat(&ids).await {
                Ok(_) => last_heartbeat = Instant::now(),
                Err(e) => tracing::warn!(error = %e, "cannot renew the runs' heartbeat"),
            }
        }
    }
}

/// A heartbeat is due when waiting one more poll would make it late.
fn due(since: Duration, interval: Duration, poll: Duration) -> bool {
    since + poll > interval
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_never_late_by_a_poll() {
        let s = Duration::from_secs;
        assert!(!due(s(1), s(5), s(1)));
        assert!(!due(s(4), s(5), s(1)));
        assert!(due(Duration::from_millis(4100), s(5), s(1)));
        assert!(due(s(0), s(1), s(2)), "a poll slower than the heartbeat beats every time");
    }
}
