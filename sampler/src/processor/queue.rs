//! The bounded hand-off between `on_end` and the background thread: spans travel in batches.
//!
//! Why batches and not a channel of spans: an SDK `SpanData` is about 350 bytes. A channel of
//! spans moves each one into a slot and out again and pays the channel's synchronisation for
//! every span. Here `on_end` appends the span to an open batch under a short lock (one move, no
//! allocation), and the background thread takes whole batches at once (a swap of three words) and
//! buffers the spans straight out of them. Emptied batches come back as spares, so a steady load
//! allocates nothing here. The lock is held for a push or a swap, never across I/O.
//!
//! The bound is in spans: spans in the open batch plus spans in full batches not yet taken.
//! A span offered beyond it is handed back, for the caller to count and drop.

use std::collections::VecDeque;
use std::mem;

use parking_lot::Mutex;

/// Most emptied batches kept for reuse (each holds room for one batch of spans).
const MAX_SPARES: usize = 2;

/// What [`SpanQueue::push`] did with a span.
#[derive(Debug)]
pub(super) enum Pushed<T> {
    /// Queued; the open batch has room left.
    Queued,
    /// Queued, and it filled the open batch: time to wake the consumer.
    BatchFull,
    /// Refused: the queue holds its capacity. The span is handed back.
    Full(T),
}

/// A bounded queue of spans, filled span by span and emptied batch by batch.
#[derive(Debug)]
pub(super) struct SpanQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    batch: usize,
}

#[derive(Debug)]
struct State<T> {
    /// The batch `push` appends to.
    open: Vec<T>,
    /// Batches that reached `batch` spans, oldest first.
    full: VecDeque<Vec<T>>,
    /// Spans in `full`.
    in_full: usize,
    /// Emptied batches, ready to become the open one again.
    spares: Vec<Vec<T>>,
}

impl<T> SpanQueue<T> {
    /// A queue holding at most `capacity` spans, handing them over in batches of `batch`.
    ///
    /// # Panics
    ///
    /// If `batch` is zero.
    pub(super) fn new(capacity: usize, batch: usize) -> Self {
        assert!(batch > 0, "a batch holds at least one span");
        Self {
            state: Mutex::new(State {
                open: Vec::new(),
                full: VecDeque::new(),
                in_full: 0,
                spares: Vec::new(),
            }),
            capacity,
            batch,
        }
    }

    /// Appends `span` to the open batch, unless the queue is at capacity.
    pub(super) fn push(&self, span: T) -> Pushed<T> {
        let mut s = self.state.lock();
        if s.open.len() + s.in_full >= self.capacity {
            return Pushed::Full(span);
        }
        if s.open.capacity() == 0 {
            let room = s
                .spares
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.batch));
            s.open = room;
        }
        s.open.push(span);
        if s.open.len() < self.batch {
            return Pushed::Queued;
        }
        let next = s.spares.pop().unwrap_or_default();
        let full = mem::replace(&mut s.open, next);
        s.in_full += full.len();
        s.full.push_back(full);
        Pushed::BatchFull
    }

    /// The oldest batch: a full one if any, else the open one if it holds spans.
    pub(super) fn take(&self) -> Option<Vec<T>> {
        let mut s = self.state.lock();
        if let Some(full) = s.full.pop_front() {
            s.in_full -= full.len();
            return Some(full);
        }
        if s.open.is_empty() {
            return None;
        }
        let next = s.spares.pop().unwrap_or_default();
        Some(mem::replace(&mut s.open, next))
    }

    /// Every queued batch, oldest first, appended to `out`: what `force_flush` must buffer.
    pub(super) fn take_all(&self, out: &mut Vec<Vec<T>>) {
        let mut s = self.state.lock();
        s.in_full = 0;
        out.extend(s.full.drain(..));
        if !s.open.is_empty() {
            let next = s.spares.pop().unwrap_or_default();
            out.push(mem::replace(&mut s.open, next));
        }
    }

    /// Gives back a batch emptied by its consumer, to be reused.
    pub(super) fn recycle(&self, mut batch: Vec<T>) {
        batch.clear();
        if batch.capacity() < self.batch {
            return;
        }
        let mut s = self.state.lock();
        if s.spares.len() < MAX_SPARES {
            s.spares.push(batch);
        }
    }

    /// Drops every queued span; returns how many there were.
    pub(super) fn discard(&self) -> usize {
        let mut s = self.state.lock();
        let n = s.open.len() + s.in_full;
        s.open.clear();
        s.full.clear();
        s.in_full = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_should_report_a_full_batch_and_take_should_hand_batches_over_in_order() {
        let q = SpanQueue::new(10, 2);
        assert!(matches!(q.push(1), Pushed::Queued));
        assert!(matches!(q.push(2), Pushed::BatchFull));
        assert!(matches!(q.push(3), Pushed::Queued));
        assert_eq!(q.take(), Some(vec![1, 2]));
        assert_eq!(q.take(), Some(vec![3]));
        assert_eq!(q.take(), None);
    }

    #[test]
    fn push_should_refuse_spans_beyond_capacity_until_some_are_taken() {
        let q = SpanQueue::new(3, 2);
        for i in 0..3 {
            assert!(!matches!(q.push(i), Pushed::Full(_)));
        }
        assert!(matches!(q.push(3), Pushed::Full(3)));
        let batch = q.take().unwrap();
        assert_eq!(batch, [0, 1]);
        q.recycle(batch);
        assert!(matches!(q.push(4), Pushed::BatchFull));
        let mut all = Vec::new();
        q.take_all(&mut all);
        assert_eq!(all, [vec![2, 4]]);
        assert_eq!(q.discard(), 0);
    }

    #[test]
    fn recycled_batches_should_be_reused_without_allocating() {
        let q = SpanQueue::new(10, 4);
        q.push(1);
        let batch = q.take().unwrap();
        let ptr = batch.as_ptr();
        q.recycle(batch);
        q.push(2);
        let again = q.take().unwrap();
        assert_eq!(again.as_ptr(), ptr);
    }
}
