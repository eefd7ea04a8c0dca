//! The reconcile handler: what the demo's controller does with an object, the few objects that
//! misbehave, and the long job.

use super::{object_key, report, DemoArgs, LONG_JOB_KEY};
use opentelemetry::trace::{Span as _, Status, Tracer as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};
use traceq::engine::{Attempt, Handler};

/// How an object misbehaves; most objects do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Behaviour {
    /// Every reconcile waits 50 to 150 ms.
    Slow,
    /// Every attempt fails: the object exhausts its retries and is forgotten.
    Poisoned,
    /// The first attempt of each life of the object panics; the engine catches the panic and
    /// the retry succeeds.
    PanicsOnce,
}

/// One slow and one poisoned object per hundred (at least one of each), drawn from `rng`, and
/// object 0 panics once. A later pick of the same object wins.
pub(super) fn pick_behaviours(rng: &mut StdRng, objects: usize) -> HashMap<String, Behaviour> {
    let mut behaviours = HashMap::new();
    for _ in 0..(objects / 100).max(1) {
        behaviours.insert(object_key(rng.random_range(0..objects)), Behaviour::Slow);
        behaviours.insert(
            object_key(rng.random_range(0..objects)),
            Behaviour::Poisoned,
        );
    }
    behaviours.insert(object_key(0), Behaviour::PanicsOnce);
    behaviours
}

/// The engine's handler: reconciles an object in a `reconcile` span under the attempt's, or runs
/// the long job.
#[derive(Debug)]
pub(super) struct Reconciler {
    tracer: SdkTracer,
    behaviours: HashMap<String, Behaviour>,
    error_rate: f64,
    /// Seeds each attempt's own generator, with the key and the attempt number, so an attempt's
    /// delays and failures do not depend on which worker ran what before it.
    seed: u64,
    long_job_len: Duration,
}

impl Reconciler {
    pub(super) fn new(
        tracer: SdkTracer,
        behaviours: HashMap<String, Behaviour>,
        args: &DemoArgs,
        long_job_len: Duration,
    ) -> Self {
        Self {
            tracer,
            behaviours,
            error_rate: args.error_rate,
            seed: args.seed,
            long_job_len,
        }
    }

    async fn reconcile(&self, a: Attempt<String>) -> Result<(), String> {
        if a.key == LONG_JOB_KEY {
            return long_job(&self.tracer, &a, self.long_job_len).await;
        }
        let (namespace, name) = a.key.split_once('/').unwrap_or(("", a.key.as_str()));
        let mut span = self
            .tracer
            .span_builder("reconcile")
            .with_attributes([
                KeyValue::new("k8s.namespace.name", namespace.to_owned()),
                KeyValue::new("k8s.object.name", name.to_owned()),
            ])
            .start_with_context(&self.tracer, &a.context());
        let mut rng = StdRng::seed_from_u64(self.seed ^ hash(&a.key) ^ u64::from(a.number));
        let behaviour = self.behaviours.get(&a.key).copied();
        match behaviour {
            Some(Behaviour::Slow) => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
            }
            // Most reconciles find nothing to do; some wait on an API call.
            _ if rng.random_bool(0.8) => tokio::task::yield_now().await,
            _ => tokio::time::sleep(Duration::from_millis(rng.random_range(1..4))).await,
        }
        let result = match behaviour {
            Some(Behaviour::Poisoned) => Err(format!("{}: invalid spec", a.key)),
            Some(Behaviour::PanicsOnce) if a.number == 1 => {
                span.end();
                panic!("{}: nil pointer", a.key)
            }
            _ if rng.random_bool(self.error_rate) => {
                Err(format!("{}: conflict updating status", a.key))
            }
            _ => Ok(()),
        };
        if let Err(e) = &result {
            span.set_status(Status::error(e.clone()));
        }
        span.end();
        result
    }
}

impl Handler<String> for Reconciler {
    type Error = String;

    fn handle(&self, attempt: Attempt<String>) -> impl Future<Output = Result<(), String>> + Send {
        report::as_handler(self.reconcile(attempt))
    }
}

/// The long job: steps for `len`, each a span started under the job's current context, so the
/// steps after a cut land in the next segment.
async fn long_job(
    tracer: &SdkTracer,
    attempt: &Attempt<String>,
    len: Duration,
) -> Result<(), String> {
    let job = attempt.job().clone();
    let step = Duration::from_millis(50);
    let started = Instant::now();
    let mut shard = 0;
    while started.elapsed() < len {
        let mut span = tracer.start_with_context(format!("reindex shard {shard}"), &job.context());
        tokio::time::sleep(step).await;
        span.end();
        shard += 1;
    }
    Ok(())
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
