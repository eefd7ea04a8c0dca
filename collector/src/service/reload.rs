//! Reloading the configuration while the collector runs (SIGHUP).
//!
//! What changes at once: the `tail_sampling` policies (with `sample_on_first_match`), the
//! exporters, and the `loadbalancing` exporter's static backends. Traces decided after the
//! reload, buffered ones included, are decided by the new policies and go to the new
//! exporters; nothing buffered is lost. An exporter whose configuration is unchanged keeps
//! running as it is (its queue and connections); a removed or changed one delivers what it has
//! queued for up to 30 seconds. Why not everything: receivers, storage and the buffer's bounds
//! hold accepted data and open sockets, and a restart (which replays the log with storage on)
//! is the safe way to change them; a reload names each such setting it did not apply.
//!
//! All or nothing: the new policies are compiled and the new exporters set up before anything
//! changes; an invalid configuration changes nothing and says why.

use std::sync::Arc;

use super::{CollectorError, ExporterEntry, Shared};
use crate::config::CollectorConfig;
use crate::metrics::get as read;
use crate::route::Resolver;

/// What a [reload](super::Collector::reload) changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// The number of `tail_sampling` policies now (`None` when sampling is off).
    pub policies: Option<usize>,
    /// Exporters started: new, or replaced because their configuration changed.
    pub exporters_started: Vec<String>,
    /// Exporters stopped (removed or replaced); each delivers what it had queued first.
    pub exporters_stopped: Vec<String>,
    /// Exporters left running as they were.
    pub exporters_unchanged: Vec<String>,
    /// The `loadbalancing` exporter's static backends, when they changed.
    pub backends: Option<Vec<String>>,
    /// Settings that differ in the new configuration but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Reloads the collector's configuration while it runs (see
/// [`Collector::reload`](super::Collector::reload)), e.g. from a SIGHUP handler. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Reloader {
    pub(super) shared: Arc<Shared>,
}

impl Reloader {
    /// See [`Collector::reload`](super::Collector::reload).
    ///
    /// # Errors
    ///
    /// As [`Collector::reload`](super::Collector::reload).
    pub fn reload(&self, config: &CollectorConfig) -> Result<ReloadReport, CollectorError> {
        reload(&self.shared, config)
    }
}

fn reload(shared: &Shared, new: &CollectorConfig) -> Result<ReloadReport, CollectorError> {
    // One reload at a time; the running configuration is what the new one is compared with.
    let mut running = shared.config.lock();
    let pipeline = &shared.pipeline;
    let sampling = pipeline.sampler().is_some() && new.sampling;
    if sampling {
        new.sampler.validate()?;
    }
    let change = pipeline.prepare_exporters(&new.exporters, new.storage.as_ref(), |name| {
        shared
            .exporters
            .read()
            .iter()
            .find(|e| e.name == name)
            .map(|e| Arc::clone(&e.metrics))
    })?;
    let mut report = ReloadReport {
        exporters_unchanged: change.kept.clone(),
        exporters_stopped: change.stopped.clone(),
        exporters_started: change.started.iter().map(|(n, _)| n.clone()).collect(),
        ..ReloadReport::default()
    };
    if let (Some(router), Some(lb)) = (pipeline.router(), &new.loadbalancing) {
        if let Resolver::Static(list) = &lb.resolver {
            if router.is_static() {
                let before = router.backends();
                // The exporters prepared above are dropped (stopped) if this fails.
                router.update(list)?;
                let after = router.backends();
                if after != before {
                    report.backends = Some(after);
                }
            }
        }
    }
    // Nothing can fail from here on.
    let started = change.started.clone();
    pipeline.apply(change);
    {
        let kept = read(&pipeline.spans_kept);
        let too_large = read(&pipeline.spans_too_large);
        let mut entries = shared.exporters.write();
        let mut old: Vec<ExporterEntry> = std::mem::take(&mut *entries);
        for config in &new.exporters {
            if let Some(i) = old.iter().position(|e| e.name == config.name) {
                entries.push(old.swap_remove(i));
            } else if let Some((name, metrics)) = started.iter().find(|(n, _)| *n == config.name) {
                entries.push(ExporterEntry {
                    name: name.clone(),
                    metrics: Arc::clone(metrics),
                    kept_before: kept,
                    too_large_before: too_large,
                });
            }
        }
    }
    if let Some(sampler) = pipeline.sampler().filter(|_| sampling) {
        report.policies = Some(sampler.set_policies(&new.sampler)?);
    }
    report.needs_restart = needs_restart(&running, new);
    running.exporters.clone_from(&new.exporters);
    if sampling {
        running.sampler.policies.clone_from(&new.sampler.policies);
        running.sampler.sample_on_first_match = new.sampler.sample_on_first_match;
    }
    if let (Some(run), Some(lb)) = (&mut running.loadbalancing, &new.loadbalancing) {
        if matches!(
            (&run.resolver, &lb.resolver),
            (Resolver::Static(_), Resolver::Static(_))
        ) {
            run.resolver = lb.resolver.clone();
        }
    }
    Ok(report)
}

/// The settings of `new` that differ from `running` and that a reload does not apply.
fn needs_restart(running: &CollectorConfig, new: &CollectorConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    check(running.grpc != new.grpc, "receivers.otlp.protocols.grpc");
    check(running.http != new.http, "receivers.otlp.protocols.http");
    check(
        running.admin != new.admin || running.metrics_bearer_token != new.metrics_bearer_token,
        "service.telemetry.metrics",
    );
    check(
        running.sampling != new.sampling,
        "processors.tail_sampling (on or off)",
    );
    let mut sampler = new.sampler.clone();
    sampler.policies.clone_from(&running.sampler.policies);
    sampler.sample_on_first_match = running.sampler.sample_on_first_match;
    check(
        running.sampling && new.sampling && sampler != running.sampler,
        "processors.tail_sampling (settings other than policies and sample_on_first_match)",
    );
    let storage_differs = match (&running.storage, &new.storage) {
        (Some(a), Some(b)) => {
            let mut b = b.clone();
            b.exporters.clone_from(&a.exporters);
            *a != b
        }
        (a, b) => a.is_some() != b.is_some(),
    };
    check(storage_differs, "extensions.file_storage");
    let lb_differs = match (&running.loadbalancing, &new.loadbalancing) {
        (Some(a), Some(b)) => {
            let mut b = b.clone();
            if let (Resolver::Static(_), Resolver::Static(_)) = (&a.resolver, &b.resolver) {
                b.resolver = a.resolver.clone();
            }
            *a != b
        }
        (a, b) => a.is_some() != b.is_some(),
    };
    check(
        lb_differs,
        "exporters.loadbalancing (settings other than static hostnames)",
    );
    check(
        running.send_batch_size != new.send_batch_size
            || running.batch_timeout != new.batch_timeout,
        "processors.batch",
    );
    check(
        running.on_buffer_full != new.on_buffer_full,
        "service.on_buffer_full",
    );
    check(
        running.shutdown_timeout != new.shutdown_timeout,
        "service.shutdown_timeout",
    );
    changed
}
