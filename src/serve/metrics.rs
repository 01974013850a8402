//! The counters behind `GET /metrics`, in Prometheus' text format (version 0.0.4): requests by
//! route and status, where request time goes (tokenization, queue, inference), and the
//! batcher's work. A handful of atomics and one small map; no metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::batcher::Stats;

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram with [`BUCKETS`].
#[derive(Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything `/metrics` reports that the batcher does not count itself.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Answers by (route, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub request: Histogram,
    pub tokenization: Histogram,
    pub queue: Histogram,
    pub inference: Histogram,
    /// Texts and tokens of the requests answered with success.
    pub texts: AtomicU64,
    pub tokens: AtomicU64,
}

/// Gauges read when `/metrics` is asked.
pub(crate) struct Gauges {
    pub queued_texts: usize,
    pub in_flight_texts: usize,
    pub max_concurrent_requests: usize,
}

impl Metrics {
    pub fn answered(&self, route: &str, status: u16, took: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((route.to_owned(), status)).or_default() += 1;
        drop(requests);
        self.request.observe(took);
    }

    pub fn render(&self, batcher: &Stats, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP bge_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE bge_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "bge_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "bge_texts_total",
            "Texts of successful requests.",
            load(&self.texts),
        );
        counter(
            &mut out,
            "bge_tokens_total",
            "Tokens of successful requests, special tokens included.",
            load(&self.tokens),
        );
        counter(
            &mut out,
            "bge_batches_total",
            "Packed batches the model ran.",
            load(&batcher.batches),
        );
        counter(
            &mut out,
            "bge_batch_texts_total",
            "Texts the model ran.",
            load(&batcher.texts),
        );
        counter(
            &mut out,
            "bge_batch_tokens_total",
            "Tokens the model ran (no padding).",
            load(&batcher.tokens),
        );
        counter(
            &mut out,
            "bge_cancelled_texts_total",
            "Queued texts dropped uncomputed because their client went away.",
            load(&batcher.cancelled),
        );
        gauge(
            &mut out,
            "bge_queue_texts",
            "Texts waiting for the model.",
            gauges.queued_texts,
        );
        gauge(
            &mut out,
            "bge_in_flight_texts",
            "Texts of requests being served.",
            gauges.in_flight_texts,
        );
        gauge(
            &mut out,
            "bge_max_concurrent_requests",
            "The most texts in flight before 429.",
            gauges.max_concurrent_requests,
        );
        let histograms = [
            (
                &self.request,
                "bge_request_duration_seconds",
                "Time to answer a request.",
            ),
            (
                &self.tokenization,
                "bge_tokenization_duration_seconds",
                "Time a request spends in tokenization.",
            ),
            (
                &self.queue,
                "bge_queue_duration_seconds",
                "Time a request waits for its first batch.",
            ),
            (
                &self.inference,
                "bge_inference_duration_seconds",
                "Time from a request's first batch to its last.",
            ),
        ];
        for (h, name, help) in histograms {
            h.render(&mut out, name, help);
        }
        out
    }
}
