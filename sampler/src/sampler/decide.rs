//! One decision round: traces already taken out of a shard are decided with no shard lock held,
//! then the decisions are recorded in the shard under a brief lock.
//!
//! Everything that reads a trace's spans (policies, job-id and segment lookups, annotating kept
//! spans, freeing dropped ones) happens in [`TailSampler::judge`], outside the lock. The locked
//! part, [`TailSampler::settle`], only adds counters and writes the decision caches.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use opentelemetry::trace::TraceId;
use opentelemetry::KeyValue;
use parking_lot::Mutex;

use super::TailSampler;
use crate::buffer::{Shard, Taken};
use crate::cache::fingerprint;
use crate::decision::{KeptDecision, SEGMENT_ATTRIBUTE};
use crate::metrics::{DecisionTally, Trigger};
use crate::policy::{EvalContext, Outcome, PolicySet};
use crate::span::{AttrValue, SpanView, StatusKind};

/// The working set of one round, reused from round to round by one caller.
pub(super) struct Round<S> {
    /// Traces taken out of the shard, to decide.
    pub(super) taken: Vec<Taken<S>>,
    /// Each decided trace and its decision (`None`: not kept), to record.
    verdicts: Vec<(TraceId, Option<Arc<KeptDecision>>)>,
    /// Spans that arrived while their trace was decided, with that decision.
    late: Vec<(Vec<S>, Option<Arc<KeptDecision>>)>,
    /// Votes and counts of this round, added to the shard's when recorded.
    tally: DecisionTally,
    /// The policies this round decides by (taken when the round began).
    policies: Arc<PolicySet>,
}

impl<S: SpanView> Round<S> {
    pub(super) fn new(policies: Arc<PolicySet>) -> Self {
        Self {
            taken: Vec::new(),
            verdicts: Vec::new(),
            late: Vec::new(),
            tally: DecisionTally::new(Arc::clone(policies.names())),
            policies,
        }
    }
}

impl<S: SpanView> TailSampler<S> {
    /// Decides `round.taken`, which the caller took out of `slot` and released the lock of,
    /// then records the decisions in `slot`; kept spans are appended to `kept`.
    pub(super) fn decide_round(
        &self,
        slot: &Mutex<Shard<S>>,
        round: &mut Round<S>,
        now: u64,
        resource: &[KeyValue],
        kept: &mut Vec<S>,
    ) {
        self.judge(round, now, resource, kept);
        if let Some(hook) = &self.decision_hook {
            hook(&round.verdicts);
        }
        self.settle(&mut slot.lock(), round);
        // Late spans are annotated and freed with the lock released, like the trace's own.
        for (spans, decision) in round.late.drain(..) {
            if let Some(decision) = decision {
                kept.extend(spans.into_iter().map(|mut span| {
                    span.annotate(&decision);
                    span
                }));
            }
        }
    }

    /// Decides every taken trace. Holds no shard lock: it reads every span.
    fn judge(&self, round: &mut Round<S>, now: u64, resource: &[KeyValue], kept: &mut Vec<S>) {
        let policies = &*round.policies;
        for taken in round.taken.drain(..) {
            let trace_id = taken.trace_id;
            let decision = self.judge_one(policies, taken, now, resource, &mut round.tally, kept);
            round.verdicts.push((trace_id, decision));
        }
    }

    /// Records the round's decisions and counts in `shard` (locked by the caller).
    fn settle(&self, shard: &mut Shard<S>, round: &mut Round<S>) {
        round.tally.drain_into(&mut shard.tally);
        shard.settle(&mut round.verdicts, &mut round.late);
    }

    /// The job id of a trace: the first span carrying the job attribute decides.
    fn job_of(&self, spans: &[S]) -> Option<u64> {
        if self.job_key.is_empty() {
            return None;
        }
        spans
            .iter()
            .find_map(|s| match s.attribute(&self.job_key)? {
                AttrValue::Str(v) => Some(fingerprint(&self.job_ids, v)),
                AttrValue::I64(i) => Some(fingerprint(&self.job_ids, i.to_string().as_str())),
                _ => None,
            })
    }

    /// The trace's segment number within its job, if the engine split it.
    fn segment_of(spans: &[S]) -> Option<i64> {
        spans
            .iter()
            .find_map(|s| match s.attribute(SEGMENT_ATTRIBUTE)? {
                AttrValue::I64(i) => Some(i),
                _ => None,
            })
    }

    /// Decides one trace: counts in `tally`, kept spans annotated into `kept`, the rest freed.
    fn judge_one(
        &self,
        policies: &PolicySet,
        taken: Taken<S>,
        now: u64,
        resource: &[KeyValue],
        tally: &mut DecisionTally,
        kept: &mut Vec<S>,
    ) -> Option<Arc<KeptDecision>> {
        let Taken {
            trace_id,
            mut entry,
            trigger,
        } = taken;
        let cx = EvalContext {
            trace_id,
            resource,
            bytes: entry.bytes,
            now_nanos: now,
        };
        let outcome = policies.evaluate(&entry.spans, &cx, &mut tally.policies);
        let mut credited = None;
        // Job ids are only looked up when they can matter: a kept error trace records its job,
        // and a trace no policy kept is kept if its job was.
        let decision = match outcome {
            Outcome::Keep { index } => {
                credited = Some(index);
                Some(policies.decision(index).clone())
            }
            Outcome::Dropped { .. } => None,
            // Later segments follow an error segment; earlier ones, decided after it, do not.
            Outcome::NotSampled if self.any_job.load(Relaxed) => match self.job_of(&entry.spans) {
                Some(job) => {
                    let from = self.jobs.lock().get(&job).copied();
                    let segment = Self::segment_of(&entry.spans);
                    match from {
                        Some(from) if segment.is_none_or(|seg| seg >= from) => {
                            tally.job_linked += 1;
                            Some(self.job_decision.clone())
                        }
                        _ => None,
                    }
                }
                None => None,
            },
            Outcome::NotSampled => None,
        };
        if decision.is_some() && entry.spans.iter().any(|s| s.status() == StatusKind::Error) {
            if let Some(job) = self.job_of(&entry.spans) {
                let segment = Self::segment_of(&entry.spans).unwrap_or(i64::MIN);
                let mut jobs = self.jobs.lock();
                if jobs.get(&job).is_none_or(|&from| segment < from) {
                    jobs.insert(job, segment);
                }
                self.any_job.store(true, Relaxed);
            }
        }
        tally.by_trigger[trigger as usize] += 1;
        tally.record_latency(now.saturating_sub(entry.first_seen));
        let spans = entry.spans.len() as u64;
        match &decision {
            Some(decision) => {
                tally.traces_sampled += 1;
                tally.spans_sampled += spans;
                if trigger == Trigger::Pressure {
                    tally.early_sampled += 1;
                }
                if let Some(index) = credited {
                    tally.policies[index].credited_traces += 1;
                    tally.policies[index].credited_spans += spans;
                }
                for span in &mut entry.spans {
                    span.annotate(decision);
                }
                kept.append(&mut entry.spans);
            }
            None => {
                tally.traces_not_sampled += 1;
                tally.spans_not_sampled += spans;
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests;
