//! The engine's Prometheus metrics, as handles resolved once in the default registry.
//!
//! Sub-problems dispatched, the fast path's hit rate, the answers of Check and CheckBulk, and
//! how LookupResources pages resumed.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

use crate::engine::Permissionship;

/// Buckets of `pemba_dispatches_per_evaluation`.
const DISPATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 20000.0,
];

/// The answers of one RPC method, one counter per permissionship.
pub(crate) struct Answers {
    no: IntCounter,
    has: IntCounter,
    conditional: IntCounter,
}

impl Answers {
    fn new(vec: &IntCounterVec, method: &str) -> Answers {
        Answers {
            no: vec.with_label_values(&[method, "NO_PERMISSION"]),
            has: vec.with_label_values(&[method, "HAS_PERMISSION"]),
            conditional: vec.with_label_values(&[method, "CONDITIONAL_PERMISSION"]),
        }
    }

    /// Counts one answer.
    pub(crate) fn count(&self, p: Permissionship) {
        match p {
            Permissionship::NoPermission => self.no.inc(),
            Permissionship::HasPermission => self.has.inc(),
            Permissionship::ConditionalPermission => self.conditional.inc(),
        }
    }

    /// Counts many answers, with one atomic addition per permissionship.
    pub(crate) fn count_all(&self, answers: impl Iterator<Item = Permissionship>) {
        let mut n = [0u64; 3];
        for p in answers {
            let i = match p {
                Permissionship::NoPermission => 0,
                Permissionship::HasPermission => 1,
                Permissionship::ConditionalPermission => 2,
            };
            if let Some(c) = n.get_mut(i) {
                *c += 1;
            }
        }
        for (counter, k) in [&self.no, &self.has, &self.conditional].into_iter().zip(n) {
            if k > 0 {
                counter.inc_by(k);
            }
        }
    }
}

/// Every engine metric.
pub(crate) struct EngineMetrics {
    /// `pemba_dispatch_total`
    dispatches: IntCounter,
    /// `pemba_dispatches_per_evaluation`
    per_evaluation: Histogram,
    /// `pemba_check_fast_path_total{result="answered"}`
    pub(crate) fast_answered: IntCounter,
    /// `pemba_check_fast_path_total{result="gave_up"}`
    pub(crate) fast_gave_up: IntCounter,
    /// `spicedb_v1_check_permissionship_total{method="CheckPermission"}`
    pub(crate) check: Answers,
    /// `spicedb_v1_check_permissionship_total{method="CheckBulkPermissions"}`
    pub(crate) check_bulk: Answers,
    /// `pemba_lookup_resources_resumes_total{walk="kept"}`
    resume_kept: IntCounter,
    /// `pemba_lookup_resources_resumes_total{walk="redone"}`
    resume_redone: IntCounter,
}

impl EngineMetrics {
    /// Counts one evaluation (a check, a CheckBulk chunk, a lookup, an expand, or a fast-path
    /// walk) that dispatched `n` sub-problems.
    pub(crate) fn evaluation(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.dispatches.inc_by(n);
        // Counts are far below 2^53: the conversion is exact.
        self.per_evaluation.observe(n as f64);
    }

    /// Counts one LookupResources page resumed from a cursor, which found its walk kept or
    /// had to walk again.
    pub(crate) fn lookup_resume(&self, kept: bool) {
        if kept {
            self.resume_kept.inc();
        } else {
            self.resume_redone.inc();
        }
    }
}

fn build() -> Result<EngineMetrics, prometheus::Error> {
    let dispatches = IntCounter::new(
        "pemba_dispatch_total",
        "Sub-problems dispatched by the engine (every nested check, lookup or expand step).",
    )?;
    let per_evaluation = Histogram::with_opts(
        HistogramOpts::new(
            "pemba_dispatches_per_evaluation",
            "Sub-problems dispatched by one evaluation: a Check, a CheckBulk chunk, an Expand, \
             a lookup, or a fast-path walk.",
        )
        .buckets(DISPATCH_BUCKETS.to_vec()),
    )?;
    let fast = IntCounterVec::new(
        Opts::new(
            "pemba_check_fast_path_total",
            "Checks (Check and CheckBulk items) the in-memory fast path answered, or gave up on \
             for the general checker.",
        ),
        &["result"],
    )?;
    let answers = IntCounterVec::new(
        Opts::new(
            "spicedb_v1_check_permissionship_total",
            "Answers of CheckPermission and CheckBulkPermissions, by permissionship.",
        ),
        &["method", "permissionship"],
    )?;
    let resumes = IntCounterVec::new(
        Opts::new(
            "pemba_lookup_resources_resumes_total",
            "LookupResources pages resumed from a cursor, by whether the walk was kept from \
             the previous page or had to be done again.",
        ),
        &["walk"],
    )?;
    for c in [
        Box::new(dispatches.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(per_evaluation.clone()),
        Box::new(fast.clone()),
        Box::new(answers.clone()),
        Box::new(resumes.clone()),
    ] {
        prometheus::register(c)?;
    }
    Ok(EngineMetrics {
        dispatches,
        per_evaluation,
        fast_answered: fast.with_label_values(&["answered"]),
        fast_gave_up: fast.with_label_values(&["gave_up"]),
        check: Answers::new(&answers, "CheckPermission"),
        check_bulk: Answers::new(&answers, "CheckBulkPermissions"),
        resume_kept: resumes.with_label_values(&["kept"]),
        resume_redone: resumes.with_label_values(&["redone"]),
    })
}

static METRICS: LazyLock<Option<EngineMetrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "cannot register the engine's metrics");
        None
    }
});

/// The engine's metrics, registered on first use; `None` if registering failed (logged once).
pub(crate) fn get() -> Option<&'static EngineMetrics> {
    METRICS.as_ref()
}

/// Registers the engine's metrics in the default registry now, so a scrape shows them before
/// the first request. True if they are registered.
pub fn init_metrics() -> bool {
    get().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_count() {
        let m = get().unwrap();
        let before = m.dispatches.get();
        m.evaluation(3);
        m.evaluation(0);
        assert!(m.dispatches.get() >= before + 3);
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for name in [
            "pemba_dispatch_total",
            "pemba_dispatches_per_evaluation",
            "pemba_check_fast_path_total",
            "spicedb_v1_check_permissionship_total",
            "pemba_lookup_resources_resumes_total",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
        }
    }
}
