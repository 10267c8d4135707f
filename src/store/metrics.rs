//! The datastore's Prometheus metrics, as handles resolved once in the default registry.
//!
//! Relationships stored, the head revision, write commit latency, garbage collection, and the
//! catch-up of nodes sharing a datastore.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};

/// Buckets of `pemba_datastore_write_commit_seconds`.
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// Buckets of `spicedb_datastore_gc_duration_seconds`.
const GC_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every datastore metric.
pub(crate) struct StoreMetrics {
    /// `pemba_datastore_relationships`
    pub(crate) relationships: IntGauge,
    /// `pemba_datastore_head_revision`
    pub(crate) head_revision: IntGauge,
    /// `pemba_datastore_write_commit_seconds`
    pub(crate) commit_seconds: Histogram,
    /// `spicedb_datastore_gc_duration_seconds`
    pub(crate) gc_seconds: Histogram,
    /// `spicedb_datastore_gc_relationships_total`
    pub(crate) gc_relationships: IntCounter,
    /// `spicedb_datastore_gc_transactions_total`
    pub(crate) gc_transactions: IntCounter,
    /// `pemba_datastore_gc_schemas_total`
    pub(crate) gc_schemas: IntCounter,
    /// `spicedb_datastore_gc_failure_total`
    pub(crate) gc_failures: IntCounter,
    /// `pemba_datastore_catch_up_seconds`
    pub(crate) catch_up_seconds: Histogram,
    /// `pemba_datastore_replayed_revisions_total`
    pub(crate) replayed_revisions: IntCounter,
}

fn build() -> Result<StoreMetrics, prometheus::Error> {
    let m = StoreMetrics {
        relationships: IntGauge::new(
            "pemba_datastore_relationships",
            "Relationships stored at the head revision, in every open datastore (expired ones \
             count until garbage collection removes them).",
        )?,
        head_revision: IntGauge::new(
            "pemba_datastore_head_revision",
            "The newest committed revision of the datastore.",
        )?,
        commit_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "pemba_datastore_write_commit_seconds",
                "Time to commit one write (relationships, deletions or schema) durably and \
                 publish it.",
            )
            .buckets(COMMIT_BUCKETS.to_vec()),
        )?,
        gc_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "spicedb_datastore_gc_duration_seconds",
                "Duration of one garbage collection pass (its count is the number of passes).",
            )
            .buckets(GC_BUCKETS.to_vec()),
        )?,
        gc_relationships: IntCounter::new(
            "spicedb_datastore_gc_relationships_total",
            "Relationship versions removed by garbage collection (deleted before the horizon, \
             or expired).",
        )?,
        gc_transactions: IntCounter::new(
            "spicedb_datastore_gc_transactions_total",
            "Revision records (commit times) removed by garbage collection.",
        )?,
        gc_schemas: IntCounter::new(
            "pemba_datastore_gc_schemas_total",
            "Superseded schema versions removed by garbage collection.",
        )?,
        gc_failures: IntCounter::new(
            "spicedb_datastore_gc_failure_total",
            "Garbage collection passes that failed.",
        )?,
        catch_up_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "pemba_datastore_catch_up_seconds",
                "Time of one catch-up with a shared datastore (PostgreSQL) that replayed what \
                 other nodes committed.",
            )
            .buckets(COMMIT_BUCKETS.to_vec()),
        )?,
        replayed_revisions: IntCounter::new(
            "pemba_datastore_replayed_revisions_total",
            "Revisions other nodes committed that this node replayed from the change log.",
        )?,
    };
    let collectors: [Box<dyn prometheus::core::Collector>; 10] = [
        Box::new(m.relationships.clone()),
        Box::new(m.head_revision.clone()),
        Box::new(m.commit_seconds.clone()),
        Box::new(m.gc_seconds.clone()),
        Box::new(m.gc_relationships.clone()),
        Box::new(m.gc_transactions.clone()),
        Box::new(m.gc_schemas.clone()),
        Box::new(m.gc_failures.clone()),
        Box::new(m.catch_up_seconds.clone()),
        Box::new(m.replayed_revisions.clone()),
    ];
    for c in collectors {
        prometheus::register(c)?;
    }
    Ok(m)
}

static METRICS: LazyLock<Option<StoreMetrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "cannot register the datastore's metrics");
        None
    }
});

/// The datastore's metrics, registered on first use; `None` if registering failed (logged
/// once).
pub(crate) fn get() -> Option<&'static StoreMetrics> {
    METRICS.as_ref()
}

/// Registers the datastore's metrics in the default registry now, so a scrape shows them
/// before the first write. True if they are registered.
pub fn init_metrics() -> bool {
    get().is_some()
}

/// A signed gauge step from a count.
pub(crate) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register() {
        assert!(init_metrics());
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for name in [
            "pemba_datastore_relationships",
            "pemba_datastore_head_revision",
            "pemba_datastore_write_commit_seconds",
            "spicedb_datastore_gc_duration_seconds",
            "spicedb_datastore_gc_relationships_total",
            "spicedb_datastore_gc_transactions_total",
            "pemba_datastore_gc_schemas_total",
            "spicedb_datastore_gc_failure_total",
            "pemba_datastore_catch_up_seconds",
            "pemba_datastore_replayed_revisions_total",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
        }
    }
}
