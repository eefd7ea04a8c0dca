//! The watch events: what a controller's informer would see. Every object once at the start,
//! with the long job, then random objects at a steady rate until the run's time is up; most of
//! them find their key already queued or in process and are coalesced by the queue.

use super::report::Tally;
use super::{object_key, LONG_JOB_KEY};
use anyhow::Context as _;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::Rng;
use std::time::{Duration, Instant};
use traceq::engine::postgres::PgEngineHandle;
use traceq::engine::{AddOptions, EngineHandle, QueueMetrics};

/// The queue the events go to.
pub(super) enum Backend {
    /// In memory, this process's.
    Memory(EngineHandle<String>),
    /// The durable queue, shared with other demo processes.
    Durable(PgEngineHandle),
}

impl Backend {
    /// Adds `keys`: one statement for the lot on the durable queue.
    async fn add(&self, keys: &[String]) -> anyhow::Result<()> {
        match self {
            Self::Memory(handle) => {
                for key in keys {
                    handle.add(key.clone());
                }
                Ok(())
            }
            Self::Durable(handle) => {
                let items: Vec<(&str, Option<&[u8]>)> =
                    keys.iter().map(|k| (k.as_str(), None)).collect();
                handle
                    .add_many(&items, None, AddOptions::new())
                    .await
                    .context("adding to the durable queue")
            }
        }
    }

    /// Waits up to `settle` for the queue to go idle (on the durable queue: every process's
    /// share), takes the metrics, and drains this process's workers.
    pub(super) async fn drain(&self, settle: Duration) -> anyhow::Result<QueueMetrics> {
        match self {
            Self::Memory(handle) => {
                let _ = tokio::time::timeout(settle, handle.queue().wait_idle()).await;
                handle.shutdown_with_drain().await;
                Ok(handle.metrics())
            }
            Self::Durable(handle) => {
                let idle = handle.wait_idle(Duration::from_millis(100));
                if let Ok(result) = tokio::time::timeout(settle, idle).await {
                    result.context("waiting for the durable queue")?;
                }
                let metrics = handle.metrics().await.context("reading the queue")?;
                handle
                    .shutdown_with_drain()
                    .await
                    .context("draining the durable queue")?;
                Ok(metrics)
            }
        }
    }
}

/// Random objects added per round.
const EVENTS_PER_ROUND: usize = 20;
/// The pause between rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(5);
/// How often the progress bar is brought up to date.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Adds the long job and each of the `objects`, then random objects (drawn from `rng`) in rounds
/// for `watch`, keeping the progress bar up to date. Returns the number of adds.
pub(super) async fn send_watch_events(
    backend: &Backend,
    mut rng: StdRng,
    objects: usize,
    watch: Duration,
    progress: &ProgressBar,
    tally: &Tally,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let until = started + watch;
    let mut next_tick = started;
    let mut first: Vec<String> = vec![LONG_JOB_KEY.to_owned()];
    first.extend((0..objects).map(object_key));
    for chunk in first.chunks(1000) {
        backend.add(chunk).await?;
    }
    let mut adds = objects as u64 + 1;
    let mut round = Vec::with_capacity(EVENTS_PER_ROUND);
    while Instant::now() < until {
        round.clear();
        round.extend((0..EVENTS_PER_ROUND).map(|_| object_key(rng.random_range(0..objects))));
        backend.add(&round).await?;
        adds += EVENTS_PER_ROUND as u64;
        tokio::time::sleep(ROUND_PAUSE).await;
        if Instant::now() >= next_tick {
            next_tick += PROGRESS_EVERY;
            progress.set_position(started.elapsed().as_millis() as u64);
            progress.set_message(tally.progress_message());
        }
    }
    Ok(adds)
}
