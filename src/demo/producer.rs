//! The watch events: what a controller's informer would see. Every object once at the start,
//! with the long job, then random objects at a steady rate until the run's time is up; most of
//! them find their key already queued or in process and are coalesced by the queue.

use super::report::Tally;
use super::{object_key, LONG_JOB_KEY};
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::Rng;
use std::time::{Duration, Instant};
use traceq::engine::EngineHandle;

/// Random objects added per round.
const EVENTS_PER_ROUND: usize = 20;
/// The pause between rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(5);
/// How often the progress bar is brought up to date.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Adds the long job and each of the `objects`, then random objects (drawn from `rng`) in rounds
/// for `watch`, keeping the progress bar up to date. Returns the number of adds.
pub(super) async fn send_watch_events(
    handle: &EngineHandle<String>,
    mut rng: StdRng,
    objects: usize,
    watch: Duration,
    progress: &ProgressBar,
    tally: &Tally,
) -> u64 {
    let started = Instant::now();
    let until = started + watch;
    let mut next_tick = started;
    handle.add(LONG_JOB_KEY.to_owned());
    for i in 0..objects {
        handle.add(object_key(i));
    }
    let mut adds = objects as u64 + 1;
    while Instant::now() < until {
        for _ in 0..EVENTS_PER_ROUND {
            handle.add(object_key(rng.random_range(0..objects)));
            adds += 1;
        }
        tokio::time::sleep(ROUND_PAUSE).await;
        if Instant::now() >= next_tick {
            next_tick += PROGRESS_EVERY;
            progress.set_position(started.elapsed().as_millis() as u64);
            progress.set_message(tally.progress_message());
        }
    }
    adds
}
