use super::*;
use crate::queue::{Fairness, PANICKED_GROUP};
use std::num::NonZeroUsize;

/// Keys are their own slot positions here; `groups` puts key k in group k % groups.
fn fair(groups: u32) -> Ranked<u32> {
    Ranked::new(Some(Fairness::by(move |k: &u32| k % groups).plan()))
}

fn add(r: &mut Ranked<u32>, key: u32, prio: i32) {
    let group = r.group_of(&key);
    r.enter(key, group, prio);
}

/// Hands out and settles at once, `n` times (a single worker that takes no time).
fn cycle(r: &mut Ranked<u32>, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let at = r.pop().expect("a key is queued");
            r.settle(at, false, None);
            at
        })
        .collect()
}

#[test]
fn ranked_should_hand_out_higher_priorities_first_and_fifo_within_one() {
    let mut r = Ranked::<u32>::new(None);
    for (key, prio) in [(0, 0), (1, 5), (2, 0), (3, -3), (4, 5), (5, 0)] {
        add(&mut r, key, prio);
    }
    let order: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
    assert_eq!(order, [1, 4, 0, 2, 5, 3]);
    assert!(r.order.is_empty(), "bands go with their last key");
    assert_eq!(r.top, NONE);
}

#[test]
fn ranked_should_move_a_raised_key_to_the_end_of_its_new_level() {
    let mut r = Ranked::<u32>::new(None);
    for key in 0..3 {
        add(&mut r, key, 0);
    }
    add(&mut r, 3, 2);
    r.raise(0, 2); // joins behind 3
    r.raise(1, -1); // lower: no change
    let order: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
    assert_eq!(order, [3, 0, 1, 2]);
}

#[test]
fn ranked_should_take_turns_between_groups_and_keep_fifo_within_each() {
    let mut r = fair(3);
    // Group 0 queues a burst first; groups 1 and 2 one key each, later.
    for key in [0, 3, 6, 9, 12, 1, 2] {
        add(&mut r, key, 0);
    }
    assert_eq!(cycle(&mut r, 7), [0, 1, 2, 3, 6, 9, 12]);
    assert_eq!(r.groups_len(), 0, "groups go with their last key");
}

#[test]
fn ranked_should_keep_priorities_strict_and_take_turns_within_a_band() {
    let mut r = fair(2);
    for key in [0, 2, 4, 1] {
        add(&mut r, key, 0);
    }
    add(&mut r, 3, 1);
    add(&mut r, 6, 1);
    assert_eq!(cycle(&mut r, 6), [3, 6, 0, 1, 2, 4]);
}

#[test]
fn ranked_should_give_a_group_as_many_hand_outs_per_turn_as_its_weight() {
    let plan = Fairness::by(|k: &u32| k % 2)
        .with_weight(|g: &u32| if *g == 0 { 3 } else { 0 })
        .plan();
    let mut r = Ranked::new(Some(plan));
    for key in 0..12 {
        add(&mut r, key, 0);
    }
    // Group 0 (even keys) has weight 3; group 1's weight 0 counts as 1.
    assert_eq!(cycle(&mut r, 12), [0, 2, 4, 1, 6, 8, 10, 3, 5, 7, 9, 11]);
}

#[test]
fn ranked_should_skip_a_group_at_its_cap_until_one_of_its_keys_is_done() {
    let plan = Fairness::by(|k: &u32| k % 2)
        .with_max_in_process(NonZeroUsize::new(1).unwrap())
        .plan();
    let mut r = Ranked::new(Some(plan));
    for key in [0, 2, 4, 1] {
        add(&mut r, key, 0);
    }
    assert_eq!(r.pop(), Some(0));
    assert_eq!(r.pop(), Some(1), "group 0 is at its cap");
    assert_eq!(
        r.pop(),
        None,
        "both groups are at their cap, two keys queued"
    );
    assert!(!r.settle(1, false, None), "group 1 has nothing queued");
    assert_eq!(r.pop(), None);
    assert!(r.settle(0, false, None), "group 0 can go on");
    assert_eq!(r.pop(), Some(2));
    assert_eq!(r.pop(), None);
}

#[test]
fn ranked_should_share_handler_time_rather_than_hand_outs() {
    let plan = Fairness::by(|k: &u32| k % 2)
        .with_handler_time_quantum(Duration::from_millis(1))
        .plan();
    let mut r = Ranked::new(Some(plan));
    // Group 0's keys take 10 ms each, group 1's 1 ms; both always have keys queued.
    let cost = |k: u32| Duration::from_millis(if k.is_multiple_of(2) { 10 } else { 1 });
    let mut next = [0u32, 1];
    for key in &mut next {
        for _ in 0..4 {
            add(&mut r, *key, 0);
            *key += 2;
        }
    }
    let mut time = [Duration::ZERO; 2];
    let mut handed = [0u32; 2];
    for _ in 0..2_000 {
        let at = r.pop().expect("both groups are backlogged");
        let g = (at % 2) as usize;
        r.settle(at, false, Some(cost(at)));
        time[g] += cost(at);
        handed[g] += 1;
        add(&mut r, next[g], 0);
        next[g] += 2;
    }
    let share = time[0].as_secs_f64() / (time[0] + time[1]).as_secs_f64();
    assert!(
        (0.4..=0.6).contains(&share),
        "group 0 had {share:.2} of the handler time ({handed:?} hand-outs)"
    );
    assert!(handed[1] > 7 * handed[0], "{handed:?}");
}

#[test]
fn ranked_should_credit_groups_in_deep_debt_without_going_round_for_each_turn() {
    let plan = Fairness::by(|k: &u32| k % 2)
        .with_handler_time_quantum(Duration::from_nanos(1)) // raised to MIN_QUANTUM
        .plan();
    let mut r = Ranked::new(Some(plan));
    for key in 0..4 {
        add(&mut r, key, 0);
    }
    // Each group's first key ran for an hour: a debt of 3.6e9 quanta each.
    for _ in 0..2 {
        let at = r.pop().unwrap();
        r.settle(at, false, Some(Duration::from_secs(3600)));
    }
    let started = std::time::Instant::now();
    assert!(r.pop().is_some());
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn ranked_should_put_keys_whose_group_function_panics_in_a_group_of_their_own() {
    let plan = Fairness::by(|k: &u32| {
        assert!(*k != 7, "no group for 7");
        *k % 2
    })
    .plan();
    let mut r = Ranked::new(Some(plan));
    add(&mut r, 7, 0);
    add(&mut r, 2, 0);
    let at = r.pop().unwrap();
    assert_eq!(at, 7);
    assert_eq!(r.group_name(at).map(|g| &**g), Some(PANICKED_GROUP));
    assert_eq!(r.fair.as_ref().unwrap().panics, 1);
    r.settle(at, false, None);
    assert_eq!(r.groups_len(), 1, "the fallback group went with its key");
    assert_eq!(r.pop(), Some(2));
}

#[test]
fn ranked_should_cap_the_priority_labels_and_count_the_rest_as_other() {
    let mut r = Ranked::<u32>::new(None);
    for key in 0..40u32 {
        add(&mut r, key, key as i32 + 1);
    }
    let depth = r.depth_by_priority();
    assert_eq!(depth.len(), MAX_PRIORITY_LABELS + 1);
    assert_eq!(
        depth[0],
        (PriorityLabel::Priority(MAX_PRIORITY_LABELS as i32 - 1), 1)
    );
    assert!(depth.contains(&(PriorityLabel::Priority(0), 0)));
    assert_eq!(
        depth.last(),
        Some(&(PriorityLabel::Other, 40 - (MAX_PRIORITY_LABELS as u64 - 1)))
    );
}

#[test]
fn ranked_should_reuse_lanes_and_groups_across_cycles() {
    let mut r = fair(10);
    for round in 0..50 {
        for key in 0..100 {
            add(&mut r, key, round % 3);
        }
        cycle(&mut r, 100);
    }
    assert_eq!(r.groups_len(), 0);
    assert!(r.lanes.len() <= 10, "{} lanes for 10 groups", r.lanes.len());
    assert!(r.fair.as_ref().unwrap().groups.len() <= 10);
    assert!(r.bands.len() <= 1, "one band at a time");
}
