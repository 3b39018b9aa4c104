//! What the server counts, and its rendering in the Prometheus text format
//! (served apart from the API, on `metrics_bind`). A leaf: counters are
//! atomics and small maps filled by the middleware and the handlers; gauges
//! read at scrape time (connections, pool, fleet) are handed to [`render`].
//!
//! Hand-rolled rather than a global recorder: each server state
//! owns its numbers, so several servers in one process (the tests) never mix
//! them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    /// Count per bucket of [`LATENCY_BUCKETS`] (not cumulative), then `+Inf`.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// How a pushed item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PushOutcome {
    New,
    Duplicate,
    Failed,
    /// A new copy past its client's quota (also counted as new).
    Overdraft,
}

impl PushOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Duplicate => "duplicate",
            Self::Failed => "failed",
            Self::Overdraft => "overdraft",
        }
    }
}

/// Counters of what the server did.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Argon2 password checks run.
    pub password_checks: AtomicU64,
    /// Logins refused for a wrong name or password (kiosks and people).
    pub login_failures: AtomicU64,
    /// Standing re-checks of open WebSockets in PostgreSQL.
    pub ws_standing_checks: AtomicU64,
    /// Requests answered 503 at once because too many were already waiting
    /// for a database connection (`db_queue_max`).
    pub shed: AtomicU64,
    /// Transactions that stored kiosk heartbeats, and the heartbeats they
    /// stored (one per kiosk per write): their ratio is the batching.
    pub heartbeat_writes: AtomicU64,
    pub heartbeats_stored: AtomicU64,
    /// Whether the change listener is LISTENing now (changes made by other
    /// processes reach this server's sockets only then).
    pub listening: AtomicBool,
    /// (route pattern, method, status) → requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Route pattern → latency.
    latency: Mutex<BTreeMap<String, Histogram>>,
    push_items: Mutex<BTreeMap<PushOutcome, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// Counts one answered request. `route` is the matched pattern (never
    /// the path itself: ids would make a series per kiosk and client).
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        let mut latency = lock(&self.latency);
        let h = latency.entry(route.to_owned()).or_default();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        h.buckets[slot] += 1;
        h.sum += seconds;
        h.count += 1;
    }

    /// Counts pushed items by outcome.
    pub fn push_items(&self, outcome: PushOutcome, n: u64) {
        if n > 0 {
            *lock(&self.push_items).entry(outcome).or_default() += n;
        }
    }

    /// Counts a push's items by outcome, from its answer.
    pub fn count_push(&self, response: &propass_protocol::PushResponse) {
        use propass_protocol::PushStatus;
        let (mut new, mut duplicate, mut failed, mut overdraft) = (0, 0, 0, 0);
        for r in &response.data {
            match (r.status, r.duplicate) {
                (PushStatus::Synced, true) => duplicate += 1,
                (PushStatus::Synced, false) => {
                    new += 1;
                    overdraft += u64::from(r.overdraft);
                }
                _ => failed += 1,
            }
        }
        self.push_items(PushOutcome::New, new);
        self.push_items(PushOutcome::Duplicate, duplicate);
        self.push_items(PushOutcome::Failed, failed);
        self.push_items(PushOutcome::Overdraft, overdraft);
    }

    /// Requests counted for `route` (tests).
    pub fn requests_of(&self, route: &str) -> u64 {
        lock(&self.requests)
            .iter()
            .filter(|((r, _, _), _)| r == route)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A gauge read at scrape time: name, help, and its samples (labels, value).
#[derive(Debug, Clone)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// A label value escaped as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The Prometheus text exposition of `m` and `gauges`.
pub fn render(m: &Metrics, gauges: &[Gauge]) -> String {
    let mut out = String::new();
    let counters = [
        ("propass_login_failures_total", "Logins refused for a wrong username or password.", &m.login_failures),
        ("propass_password_checks_total", "Argon2 password checks run.", &m.password_checks),
        ("propass_http_shed_total", "Requests answered 503 at once because too many were waiting for a database connection (db_queue_max).", &m.shed),
        ("propass_heartbeat_writes_total", "Transactions that stored kiosk heartbeats (each stores every heartbeat pending then).", &m.heartbeat_writes),
        ("propass_heartbeats_stored_total", "Kiosk heartbeats stored (the latest of each kiosk per write).", &m.heartbeats_stored),
    ];
    for (name, help, v) in counters {
        let v = v.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let _ = writeln!(out, "# HELP propass_listener_up Whether the change listener is LISTENing to PostgreSQL.\n# TYPE propass_listener_up gauge\npropass_listener_up {}", u8::from(m.listening.load(Ordering::Relaxed)));

    render_http(&mut out, m);
    render_push_items(&mut out, m);
    for g in gauges {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", g.name, g.help, g.name);
        for (l, v) in &g.samples {
            let _ = writeln!(out, "{}{} {v}", g.name, labels(l));
        }
    }
    out
}

/// Requests by route, method and status, and the latency histogram.
fn render_http(out: &mut String, m: &Metrics) {
    let _ = writeln!(out, "# HELP propass_http_requests_total HTTP requests answered, by route pattern, method and status.\n# TYPE propass_http_requests_total counter");
    for ((route, method, status), n) in lock(&m.requests).iter() {
        let l = labels(&[
            ("route", route.clone()),
            ("method", method.clone()),
            ("status", status.to_string()),
        ]);
        let _ = writeln!(out, "propass_http_requests_total{l} {n}");
    }
    let _ = writeln!(out, "# HELP propass_http_request_duration_seconds Time to the response's head, by route pattern.\n# TYPE propass_http_request_duration_seconds histogram");
    for (route, h) in lock(&m.latency).iter() {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS
            .iter()
            .map(ToString::to_string)
            .chain(["+Inf".to_string()])
            .enumerate()
        {
            cumulative += h.buckets[i];
            let l = labels(&[("route", route.clone()), ("le", bound)]);
            let _ = writeln!(
                out,
                "propass_http_request_duration_seconds_bucket{l} {cumulative}"
            );
        }
        let l = labels(&[("route", route.clone())]);
        let _ = writeln!(out, "propass_http_request_duration_seconds_sum{l} {}\npropass_http_request_duration_seconds_count{l} {}", h.sum, h.count);
    }
}

/// Pushed items by outcome.
fn render_push_items(out: &mut String, m: &Metrics) {
    let _ = writeln!(out, "# HELP propass_push_items_total Pushed items by outcome (an overdraft is also counted as new).\n# TYPE propass_push_items_total counter");
    let pushed = lock(&m.push_items);
    for o in [
        PushOutcome::New,
        PushOutcome::Duplicate,
        PushOutcome::Failed,
        PushOutcome::Overdraft,
    ] {
        let l = labels(&[("outcome", o.as_str().to_owned())]);
        let _ = writeln!(
            out,
            "propass_push_items_total{l} {}",
            pushed.get(&o).copied().unwrap_or(0)
        );
    }
    drop(pushed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lands_in_its_bucket_and_every_bucket_above() {
        let m = Metrics::default();
        m.request("/api/sync/push", "POST", 200, 0.03);
        let text = render(&m, &[]);
        assert!(text.contains("propass_http_request_duration_seconds_bucket{route=\"/api/sync/push\",le=\"0.025\"} 0"), "{text}");
        assert!(text.contains("propass_http_request_duration_seconds_bucket{route=\"/api/sync/push\",le=\"0.05\"} 1"), "{text}");
        assert!(text.contains("propass_http_request_duration_seconds_bucket{route=\"/api/sync/push\",le=\"+Inf\"} 1"), "{text}");
        assert!(text.contains("propass_http_requests_total{route=\"/api/sync/push\",method=\"POST\",status=\"200\"} 1"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let g = Gauge {
            name: "propass_device_online",
            help: "h",
            samples: vec![(vec![("device", "a\"b\\c\nd".into())], 1.0)],
        };
        let text = render(&Metrics::default(), &[g]);
        assert!(
            text.contains(r#"propass_device_online{device="a\"b\\c\nd"} 1"#),
            "{text}"
        );
    }
}
