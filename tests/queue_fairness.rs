//! Starvation: one group's burst must not delay another group's single key. With F groups that
//! have keys ready, a fair queue makes a group wait at most F - 1 hand-outs (with weights, at
//! most the sum of the other groups' weights), however many keys the others queued; a plain FIFO
//! makes it wait for the whole burst.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use traceq_engine::rate_limit::NoDelay;
use traceq_engine::{AddOptions, Attempt, Engine, Fairness, Queue, QueueConfig, LOW_PRIORITY};

/// A key: its group (a tenant) and an id within it.
type Key = (u8, u32);

const BURST: u32 = 100_000;
const SMALL_GROUPS: u8 = 9;

fn tenant(key: &Key) -> u8 {
    key.0
}

/// Queues the burst of group 0, then one key for each of groups 1 to 9.
fn fill(queue: &Queue<Key>) {
    for id in 0..BURST {
        queue.add((0, id));
    }
    for g in 1..=SMALL_GROUPS {
        queue.add((g, 0));
    }
}

/// The position (1 for the first get) at which each small group's key is handed out, taking
/// `gets` keys.
fn positions(queue: &Queue<Key>, gets: usize) -> HashMap<u8, usize> {
    let mut seen = HashMap::new();
    for n in 1..=gets {
        let key = queue.try_get().expect("keys are queued");
        queue.done(&key);
        if key.0 != 0 {
            seen.insert(key.0, n);
        }
    }
    seen
}

#[test]
fn fair_queue_should_hand_out_each_small_group_within_the_first_ten_gets() {
    let queue = Queue::with_config(QueueConfig::default().with_fairness(tenant));
    fill(&queue);
    let seen = positions(&queue, 10);
    assert_eq!(seen.len(), SMALL_GROUPS as usize, "{seen:?}");
    assert!(seen.values().all(|&n| n <= 10), "{seen:?}");
    assert_eq!(queue.len(), BURST as usize - 1);
}

#[test]
fn plain_queue_should_starve_the_small_groups_behind_the_burst() {
    // The problem the fair queue solves: in FIFO order the nine keys come after the burst.
    let queue = Queue::<Key>::new();
    fill(&queue);
    assert!(positions(&queue, 10).is_empty());
}

#[test]
fn fair_queue_should_serve_groups_that_arrive_in_the_middle_of_a_burst() {
    let queue = Queue::with_config(QueueConfig::default().with_fairness(tenant));
    for id in 0..BURST {
        queue.add((0, id));
    }
    for _ in 0..BURST / 2 {
        let key = queue.try_get().unwrap();
        queue.done(&key);
    }
    for g in 1..=SMALL_GROUPS {
        queue.add((g, 0));
    }
    let seen = positions(&queue, 10);
    assert_eq!(seen.len(), SMALL_GROUPS as usize, "{seen:?}");
}

#[test]
fn weighted_fair_queue_should_keep_each_group_within_the_sum_of_the_others_weights() {
    const BURST_WEIGHT: u32 = 4;
    let fairness =
        Fairness::by(tenant).with_weight(|g: &u8| if *g == 0 { BURST_WEIGHT } else { 1 });
    let queue = Queue::with_config(QueueConfig::default().with_fairness(fairness));
    fill(&queue);
    // A small group waits at most the others' weights: the burst's 4 and 8 other small groups.
    let bound = BURST_WEIGHT as usize + (SMALL_GROUPS as usize - 1);
    let seen = positions(&queue, bound + 1);
    assert_eq!(seen.len(), SMALL_GROUPS as usize, "{seen:?}");
    assert!(seen.values().all(|&n| n <= bound + 1), "{seen:?}");
    // And the burst gets its weight: 4 of the first 5 hand-outs.
    let queue = Queue::with_config(QueueConfig::default().with_fairness(
        Fairness::by(tenant).with_weight(|g: &u8| if *g == 0 { BURST_WEIGHT } else { 1 }),
    ));
    fill(&queue);
    let first: Vec<u8> = (0..5)
        .map(|_| {
            let key = queue.try_get().unwrap();
            queue.done(&key);
            key.0
        })
        .collect();
    assert_eq!(first, [0, 0, 0, 0, 1]);
}

#[test]
fn weighted_small_groups_should_bound_the_burst_groups_wait_by_their_weights() {
    // The other way round: nine heavy groups (weight 3, three keys each) and the burst (weight 1)
    // that became ready last. The burst waits at most 9 × 3 hand-outs.
    let fairness = Fairness::by(tenant).with_weight(|g: &u8| if *g == 0 { 1 } else { 3 });
    let queue = Queue::with_config(QueueConfig::default().with_fairness(fairness));
    for g in 1..=SMALL_GROUPS {
        for id in 0..3 {
            queue.add((g, id));
        }
    }
    for id in 0..BURST {
        queue.add((0, id));
    }
    let bound = 3 * SMALL_GROUPS as usize;
    let first_burst = (1..=bound + 1)
        .find(|_| {
            let key = queue.try_get().unwrap();
            queue.done(&key);
            key.0 == 0
        })
        .expect("the burst group is served within its bound");
    assert_eq!(first_burst, bound + 1);
}

#[test]
fn priority_bands_should_stay_strict_in_a_fair_queue() {
    let queue = Queue::with_config(QueueConfig::default().with_fairness(tenant));
    // A resync of everything at low priority, then fresh changes of two tenants.
    for id in 0..1_000 {
        queue.add_with((0, id), AddOptions::new().with_priority(LOW_PRIORITY));
    }
    queue.add((1, 0));
    queue.add((1, 1));
    queue.add((2, 0));
    let first: Vec<Key> = (0..4)
        .map(|_| {
            let key = queue.try_get().unwrap();
            queue.done(&key);
            key
        })
        .collect();
    // Fresh changes first, taking turns between tenants; the low band after.
    assert_eq!(first, [(1, 0), (2, 0), (1, 1), (0, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_engine_should_never_run_more_of_a_group_than_its_cap() {
    const CAP: usize = 2;
    let engine = Engine::<Key>::builder()
        .with_workers(8)
        .with_rate_limiter(NoDelay)
        .with_fairness(Fairness::by(tenant).with_max_in_process(NonZeroUsize::new(CAP).unwrap()))
        .build()
        .unwrap();
    let handle = engine.handle();
    for id in 0..200 {
        handle.add((0, id));
    }
    for g in 1..=SMALL_GROUPS {
        handle.add((g, 0));
    }
    // Per group: keys in process now, the most at once, and the order of first attempts.
    let running: Arc<Mutex<HashMap<u8, (usize, usize)>>> = Arc::default();
    let order: Arc<Mutex<Vec<u8>>> = Arc::default();
    let run = tokio::spawn({
        let (running, order) = (Arc::clone(&running), Arc::clone(&order));
        async move {
            engine
                .run(move |attempt: Attempt<Key>| {
                    let (running, order) = (Arc::clone(&running), Arc::clone(&order));
                    async move {
                        let g = attempt.key.0;
                        assert_eq!(attempt.group.as_deref(), Some(g.to_string().as_str()));
                        order.lock().push(g);
                        {
                            let mut r = running.lock();
                            let entry = r.entry(g).or_default();
                            entry.0 += 1;
                            entry.1 = entry.1.max(entry.0);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        running.lock().get_mut(&g).unwrap().0 -= 1;
                        Ok::<(), std::convert::Infallible>(())
                    }
                })
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(30), handle.queue().wait_idle())
        .await
        .expect("the engine works through every key");
    handle.shutdown_with_drain().await;
    run.await.unwrap();
    let most = running.lock().get(&0).map_or(0, |e| e.1);
    assert!(
        most <= CAP,
        "{most} keys of the burst group in process at once"
    );
    assert_eq!(most, CAP, "the burst group used its cap");
    let order = order.lock();
    assert_eq!(order.len(), 200 + SMALL_GROUPS as usize);
    // With the burst group held to two workers, the small groups take the other six at once.
    let small_done_by = order.iter().rposition(|&g| g != 0).unwrap();
    assert!(
        small_done_by < 20,
        "last small group ran at attempt {small_done_by}"
    );
}
