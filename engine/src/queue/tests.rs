use super::*;
use crate::clock::ManualClock;
use crate::metrics::PriorityLabel;
use crate::rate_limit::{ExponentialBackoff, NoDelay};
use std::time::Duration;
use tokio::time::timeout;

fn manual_queue(clock: &ManualClock) -> Queue<&'static str> {
    Queue::with_config(
        QueueConfig::default()
            .with_clock(Arc::new(clock.clone()))
            .with_rate_limiter(
                ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1)).unwrap(),
            ),
    )
}

#[test]
fn queue_should_hand_out_keys_in_fifo_order_once_each() {
    let q = Queue::<u32>::new();
    for k in [3, 1, 2, 1, 3] {
        q.add(k);
    }
    assert_eq!(q.len(), 3);
    assert_eq!(q.try_get(), Some(3));
    assert_eq!(q.try_get(), Some(1));
    assert_eq!(q.try_get(), Some(2));
    assert_eq!(q.try_get(), None);
}

#[test]
fn queue_should_requeue_dirty_key_on_done() {
    let q = Queue::<&str>::new();
    q.add("a");
    let a = q.try_get().unwrap();
    q.add("a");
    q.add("a");
    assert_eq!(q.len(), 0, "a key in process is not queued again");
    assert_eq!(q.try_get(), None, "never to two workers at once");
    q.done(&a);
    assert_eq!(q.len(), 1);
    assert_eq!(q.try_get(), Some("a"));
    q.done(&"a");
    assert_eq!(q.try_get(), None, "done on a clean key does not requeue");
}

#[test]
fn queue_should_ignore_done_for_unknown_key() {
    let q = Queue::<&str>::new();
    q.add("a");
    q.done(&"a");
    q.done(&"zzz");
    assert_eq!(q.try_get(), Some("a"));
}

#[test]
fn queue_should_let_the_earliest_delay_win_on_re_add() {
    let clock = ManualClock::new();
    let q = manual_queue(&clock);
    q.add_after("a", Duration::from_secs(10));
    q.add_after("a", Duration::from_secs(2));
    q.add_after("a", Duration::from_secs(5));
    assert_eq!(q.waiting_len(), 1);
    clock.advance(Duration::from_millis(1999));
    assert_eq!(q.try_get(), None);
    clock.advance(Duration::from_millis(1));
    assert_eq!(q.try_get(), Some("a"));
    q.done(&"a");
    // The later deadlines were replaced, not kept: nothing fires at 5 s or 10 s.
    clock.advance(Duration::from_secs(20));
    assert_eq!(q.try_get(), None);
    assert_eq!(q.waiting_len(), 0);
}

#[test]
fn queue_should_drop_superseded_delay_entries_when_a_deadline_moves_earlier() {
    let clock = ManualClock::new();
    let q = manual_queue(&clock);
    // Each add moves the key's deadline one second earlier, from a year down to 10_000 s less.
    for i in 0..10_000u64 {
        q.add_after("a", MAX_DELAY - Duration::from_secs(i));
        assert!(
            q.heap_len() <= 2 * q.waiting_len(),
            "{} heap entries for {} waiting key after {} moves",
            q.heap_len(),
            q.waiting_len(),
            i + 1
        );
    }
    assert_eq!(q.waiting_len(), 1);
    // The earliest deadline still wins, and the key fires once.
    clock.advance(MAX_DELAY - Duration::from_secs(10_000));
    assert_eq!(q.try_get(), None);
    clock.advance(Duration::from_secs(1));
    assert_eq!(q.try_get(), Some("a"));
    q.done(&"a");
    clock.advance(Duration::from_secs(20_000));
    assert_eq!(q.try_get(), None);
    assert_eq!(q.heap_len(), 0);
}

#[test]
fn queue_should_drop_stale_delay_entries_once_the_live_ones_fire() {
    let clock = ManualClock::new();
    let q = Queue::<u32>::with_config(QueueConfig::default().with_clock(Arc::new(clock.clone())));
    // Every key moved earlier once: as many stale entries as live ones, not yet too many.
    for k in 0..1_000 {
        q.add_after(k, MAX_DELAY);
        q.add_after(k, Duration::from_secs(1));
    }
    assert_eq!((q.waiting_len(), q.heap_len()), (1_000, 2_000));
    // The live entries fire; the stale ones would otherwise wait for a year.
    clock.advance(Duration::from_secs(1));
    assert_eq!(q.len(), 1_000);
    assert_eq!(
        (q.waiting_len(), q.heap_len()),
        (0, 0),
        "stale entries left"
    );
}

#[test]
fn queue_should_clamp_absurd_delays() {
    let clock = ManualClock::new();
    let q = manual_queue(&clock);
    q.add_after("a", Duration::MAX);
    q.add_after("b", Duration::from_secs(u64::MAX / 2));
    assert_eq!(q.waiting_len(), 2);
    clock.advance(MAX_DELAY);
    assert_eq!(q.len(), 2);
}

#[test]
fn queue_should_keep_a_plain_add_and_the_pending_delay_of_a_waiting_key() {
    let clock = ManualClock::new();
    let q = manual_queue(&clock);
    q.add_after("a", Duration::from_secs(1));
    q.add("a");
    assert_eq!((q.len(), q.waiting_len()), (1, 1));
    assert_eq!(q.try_get(), Some("a"));
    q.done(&"a");
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        q.try_get(),
        Some("a"),
        "the delayed add still fires, as in client-go"
    );
}

#[test]
fn queue_should_not_count_or_take_a_token_for_coalesced_rate_limited_adds() {
    let clock = ManualClock::new();
    let q = manual_queue(&clock);
    q.add_rate_limited("a");
    q.add_rate_limited("a");
    q.add_rate_limited("a");
    assert_eq!(q.num_requeues(&"a"), 1, "a key already waiting coalesces");
    q.add("b");
    q.add_rate_limited("b");
    assert_eq!(q.num_requeues(&"b"), 0, "a key already queued coalesces");
    clock.advance(Duration::from_millis(10));
    assert_eq!(q.len(), 2);
    assert_eq!(q.metrics().retries_total, 1);
}

#[test]
fn queue_should_back_off_exponentially_per_failed_attempt() {
    let clock = ManualClock::new();
    let q = manual_queue(&clock);
    let mut gaps = Vec::new();
    for _ in 0..4 {
        q.add_rate_limited("a");
        let mut waited = 0;
        while q.try_get().is_none() {
            clock.advance(Duration::from_millis(1));
            waited += 1;
        }
        q.done(&"a");
        gaps.push(waited);
    }
    assert_eq!(gaps, vec![10, 20, 40, 80]);
    assert_eq!(q.num_requeues(&"a"), 4);
    q.forget(&"a");
    assert_eq!(q.num_requeues(&"a"), 0);
}

#[test]
fn queue_should_refuse_and_count_adds_after_shutdown() {
    let q = Queue::<u8>::new();
    q.add(1);
    q.shutdown();
    q.add(2);
    q.add_after(3, Duration::from_secs(1));
    q.add_rate_limited(4);
    assert_eq!(q.try_get(), None, "shutdown stops handing out work");
    assert_eq!(
        q.len(),
        1,
        "the key queued before shutdown is still reported"
    );
    assert_eq!(q.metrics().dropped_adds_total, 3);
}

#[tokio::test(start_paused = true)]
async fn get_should_wait_for_an_add() {
    let q = Queue::<u8>::new();
    let getter = tokio::spawn({
        let q = q.clone();
        async move { q.get().await }
    });
    tokio::task::yield_now().await;
    q.add(7);
    assert_eq!(getter.await.unwrap(), Some(7));
}

#[tokio::test(start_paused = true)]
async fn get_should_wake_for_a_delayed_key_when_its_time_comes() {
    let q = Queue::<u8>::with_config(QueueConfig::default().with_rate_limiter(NoDelay));
    let start = tokio::time::Instant::now();
    let getter = tokio::spawn({
        let q = q.clone();
        async move { q.get().await }
    });
    tokio::task::yield_now().await;
    q.add_after(1, Duration::from_secs(30));
    q.add_after(2, Duration::from_secs(5)); // earlier: the parked getter re-arms for it
    assert_eq!(getter.await.unwrap(), Some(2));
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn shutdown_should_release_every_waiting_getter() {
    let q = Queue::<u8>::new();
    let getters: Vec<_> = (0..8)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.get().await })
        })
        .collect();
    tokio::task::yield_now().await;
    q.shutdown();
    for g in getters {
        assert_eq!(
            timeout(Duration::from_secs(1), g).await.unwrap().unwrap(),
            None
        );
    }
}

#[tokio::test(start_paused = true)]
async fn drain_should_wait_for_keys_in_flight_only() {
    let q = Queue::<u8>::new();
    q.add(1);
    q.add(2);
    let one = q.get().await.unwrap();
    let drain = tokio::spawn({
        let q = q.clone();
        async move { q.shutdown_with_drain().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!drain.is_finished(), "drain waits for the key in flight");
    q.add(3);
    q.done(&one);
    timeout(Duration::from_secs(1), drain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.len(), 1, "key 2 stays queued, key 3 was refused");
}

#[tokio::test(start_paused = true)]
async fn drain_queued_should_hand_out_queued_and_dirty_keys_then_stop() {
    let q = Queue::<u8>::new();
    for k in 0..3 {
        q.add(k);
    }
    let first = q.get().await.unwrap();
    q.add(first); // dirty: must run again during the drain
    let drain = tokio::spawn({
        let q = q.clone();
        async move { q.shutdown_with_drain_queued().await }
    });
    tokio::task::yield_now().await;
    q.add(9); // refused
    q.done(&first);
    let mut seen = Vec::new();
    while let Some(k) = q.get().await {
        seen.push(k);
        q.done(&k);
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2]);
    timeout(Duration::from_secs(1), drain)
        .await
        .unwrap()
        .unwrap();
    assert!(q.is_shutting_down());
}

#[tokio::test(start_paused = true)]
async fn drain_of_an_idle_queue_should_return_at_once() {
    let q = Queue::<u8>::new();
    timeout(Duration::from_secs(1), q.shutdown_with_drain())
        .await
        .unwrap();
    timeout(Duration::from_secs(1), q.shutdown_with_drain_queued())
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_get_should_take_no_key() {
    let q = Queue::<u8>::new();
    assert!(timeout(Duration::from_millis(10), q.get()).await.is_err());
    q.add(1);
    assert_eq!(q.try_get(), Some(1));
    assert_eq!(
        q.shared.getters.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the cancelled getter unparked"
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_should_measure_queue_and_work_time() {
    let q = Queue::<u8>::with_config(QueueConfig::default().with_metrics(true).with_name("m"));
    q.add(1);
    tokio::time::advance(Duration::from_millis(3)).await;
    let k = q.get().await.unwrap();
    tokio::time::advance(Duration::from_millis(7)).await;
    let m = q.metrics();
    assert_eq!(m.processing, 1);
    assert!((m.longest_running_processor_seconds - 0.007).abs() < 1e-6);
    q.done(&k);
    let m = q.metrics();
    assert_eq!(m.queue_duration.count, 1);
    assert_eq!(m.queue_duration.mean(), Duration::from_millis(3));
    assert_eq!(m.work_duration.mean(), Duration::from_millis(7));
    assert_eq!(m.adds_total, 1);
    assert_eq!(m.name, "m");
}

#[tokio::test(start_paused = true)]
async fn wait_idle_should_return_once_nothing_is_queued_waiting_or_in_process() {
    let q = Queue::<u8>::with_config(QueueConfig::default().with_rate_limiter(NoDelay));
    timeout(Duration::from_secs(1), q.wait_idle())
        .await
        .expect("an empty queue is idle");
    q.add(1);
    q.add_after(2, Duration::from_secs(10));
    let idle = tokio::spawn({
        let q = q.clone();
        async move { q.wait_idle().await }
    });
    let one = q.get().await.unwrap();
    q.done(&one);
    tokio::task::yield_now().await;
    assert!(!idle.is_finished(), "key 2 still waits out its delay");
    let two = q.get().await.unwrap(); // wakes when key 2's delay passes
    tokio::task::yield_now().await;
    assert!(!idle.is_finished(), "key 2 is in process");
    q.done(&two);
    timeout(Duration::from_secs(1), idle)
        .await
        .unwrap()
        .unwrap();
}

fn prio(p: i32) -> AddOptions {
    AddOptions::new().with_priority(p)
}

fn drain(q: &Queue<u32>) -> Vec<u32> {
    std::iter::from_fn(|| {
        let k = q.try_get()?;
        q.done(&k);
        Some(k)
    })
    .collect()
}

#[test]
fn queue_should_hand_out_higher_priorities_first_and_fifo_within_a_priority() {
    let q = Queue::<u32>::new();
    q.add(1);
    q.add(2);
    q.add_with(3, prio(LOW_PRIORITY));
    q.add_with(4, prio(10));
    q.add(5);
    q.add_with(6, prio(10));
    assert_eq!(q.len(), 6);
    let claim = q.try_claim().unwrap();
    assert_eq!((claim.key, claim.priority, claim.group), (4, 10, None));
    q.done(&4);
    assert_eq!(drain(&q), [6, 1, 2, 5, 3]);
}

#[test]
fn queue_should_raise_a_queued_key_to_the_end_of_its_new_level_and_never_lower_it() {
    let q = Queue::<u32>::new();
    for k in 0..3 {
        q.add(k);
    }
    q.add_with(9, prio(5));
    q.add_with(0, prio(5)); // raised: behind 9
    q.add_with(1, prio(-5)); // lower: stays where it is
    q.add(9); // coalesced: stays at 5
    assert_eq!(q.len(), 4);
    assert_eq!(drain(&q), [9, 0, 1, 2]);
}

#[test]
fn queue_should_queue_a_dirty_key_again_at_the_highest_priority_added_while_in_process() {
    let q = Queue::<u32>::new();
    q.add(1);
    q.add(2);
    assert_eq!(q.try_claim().map(|c| (c.key, c.priority)), Some((1, 0)));
    q.add_with(1, prio(3));
    q.add_with(1, prio(-1));
    q.done(&1);
    let claim = q.try_claim().unwrap();
    assert_eq!((claim.key, claim.priority), (1, 3));
}

#[test]
fn queue_should_give_a_re_added_key_the_higher_priority_and_the_earlier_ready_time() {
    let clock = ManualClock::new();
    let q = Queue::<u32>::with_config(QueueConfig::default().with_clock(Arc::new(clock.clone())));
    q.add(0);
    q.add_with(1, prio(7).with_delay(Duration::from_secs(10)));
    q.add_with(1, prio(2).with_delay(Duration::from_secs(1)));
    assert_eq!((q.len(), q.waiting_len()), (1, 1));
    clock.advance(Duration::from_secs(1));
    // Ready at the earlier time, at the higher priority: ahead of key 0.
    let claim = q.try_claim().unwrap();
    assert_eq!((claim.key, claim.priority), (1, 7));
    q.done(&1);
    clock.advance(Duration::from_secs(20));
    assert_eq!(drain(&q), [0], "the later deadline was replaced");
}

#[test]
fn queue_should_raise_a_queued_key_by_a_delayed_add_of_a_higher_priority() {
    let clock = ManualClock::new();
    let q = Queue::<u32>::with_config(QueueConfig::default().with_clock(Arc::new(clock.clone())));
    q.add(0);
    q.add(1);
    q.add_with(1, prio(4).with_delay(Duration::from_secs(5)));
    assert_eq!(q.try_claim().map(|c| (c.key, c.priority)), Some((1, 4)));
    q.done(&1);
    // As in client-go, the delayed add still fires later, at the priority it shared.
    clock.advance(Duration::from_secs(5));
    assert_eq!(q.try_claim().map(|c| (c.key, c.priority)), Some((1, 4)));
}

#[test]
fn queue_should_let_a_coalesced_rate_limited_add_raise_the_priority_without_a_token() {
    let clock = ManualClock::new();
    let q = manual_queue(&clock);
    q.add("a");
    q.add("b");
    q.add_with(
        "b",
        AddOptions::new().with_rate_limited(true).with_priority(2),
    );
    assert_eq!(q.num_requeues(&"b"), 0, "coalesced: no requeue counted");
    assert_eq!(q.try_get(), Some("b"));
    q.done(&"b");
    // Not coalesced: after the limiter's delay (10 ms), or a shorter given delay.
    q.add_with(
        "c",
        AddOptions::new()
            .with_rate_limited(true)
            .with_delay(Duration::from_millis(3)),
    );
    assert_eq!(q.num_requeues(&"c"), 1);
    clock.advance(Duration::from_millis(3));
    assert_eq!(q.waiting_len(), 0);
    assert_eq!(q.len(), 2);
}

#[test]
fn queue_should_keep_its_backlog_in_order_when_the_first_priority_arrives() {
    let q = Queue::<u32>::new();
    for k in 0..100 {
        q.add(k);
    }
    let first = q.try_get().unwrap();
    q.add(first); // dirty
    q.add_with(1_000, prio(1));
    q.done(&first);
    let mut expected = vec![1_000];
    expected.extend(1..100);
    expected.push(first);
    assert_eq!(drain(&q), expected);
}

#[test]
fn queue_should_report_depth_by_priority() {
    let q = Queue::<u32>::new();
    assert_eq!(
        q.metrics().depth_by_priority,
        [(PriorityLabel::Priority(0), 0)]
    );
    q.add(1);
    q.add_with(2, prio(LOW_PRIORITY));
    q.add_with(3, prio(LOW_PRIORITY));
    let m = q.metrics();
    assert_eq!(m.depth, 3);
    assert_eq!(
        m.depth_by_priority,
        [
            (PriorityLabel::Priority(0), 1),
            (PriorityLabel::Priority(LOW_PRIORITY), 2)
        ]
    );
    drain(&q);
    assert_eq!(
        q.metrics().depth_by_priority,
        [
            (PriorityLabel::Priority(0), 0),
            (PriorityLabel::Priority(LOW_PRIORITY), 0)
        ],
        "a priority's series stays once seen"
    );
}

fn fair_queue(groups: u32) -> Queue<u32> {
    Queue::with_config(QueueConfig::default().with_fairness(move |k: &u32| k % groups))
}

#[test]
fn fair_queue_should_take_turns_between_groups() {
    let q = fair_queue(3);
    for k in [0, 3, 6, 9, 1, 4, 2] {
        q.add(k);
    }
    let claim = q.try_claim().unwrap();
    assert_eq!(claim.group.as_deref(), Some("0"));
    q.done(&claim.key);
    assert_eq!(drain(&q), [1, 2, 3, 4, 6, 9]);
    assert_eq!(q.metrics().groups, 0);
}

#[test]
fn fair_queue_should_keep_dedup_and_dirty_semantics() {
    let q = fair_queue(2);
    q.add(0);
    q.add(0);
    q.add(1);
    assert_eq!(q.len(), 2);
    let k = q.try_get().unwrap();
    q.add(k);
    assert_eq!(q.try_get(), Some(1));
    assert_eq!(q.try_get(), None, "never to two workers at once");
    q.done(&k);
    assert_eq!(q.try_get(), Some(0));
    assert_eq!(q.metrics().groups, 2);
}

#[tokio::test(start_paused = true)]
async fn fair_queue_should_wake_a_getter_when_a_group_under_its_cap_can_go_on() {
    let q = Queue::<u32>::with_config(QueueConfig::default().with_fairness(
        Fairness::by(|k: &u32| k % 2).with_max_in_process(std::num::NonZeroUsize::MIN),
    ));
    q.add(0);
    q.add(2);
    let first = q.get().await.unwrap();
    assert_eq!(first, 0);
    assert_eq!(q.len(), 1, "key 2 is still queued");
    let getter = tokio::spawn({
        let q = q.clone();
        async move { q.get().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!getter.is_finished(), "group 0 is at its cap");
    q.done(&first);
    let second = timeout(Duration::from_secs(1), getter)
        .await
        .expect("woken by done")
        .unwrap();
    assert_eq!(second, Some(2));
}

#[tokio::test(start_paused = true)]
async fn fair_drain_queued_should_hand_out_every_queued_key_despite_caps() {
    let q = Queue::<u32>::with_config(QueueConfig::default().with_fairness(
        Fairness::by(|k: &u32| k % 2).with_max_in_process(std::num::NonZeroUsize::MIN),
    ));
    for k in 0..10 {
        q.add_with(k, prio((k % 3) as i32));
    }
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(k) = q.get().await {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    seen.push(k);
                    q.done(&k);
                }
                seen
            })
        })
        .collect();
    timeout(Duration::from_secs(5), q.shutdown_with_drain_queued())
        .await
        .expect("the drain ends");
    let mut seen: Vec<u32> = Vec::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}
