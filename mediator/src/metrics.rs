//! Metrics: values the dispatchers own and an exporter thread serves in the Prometheus
//! text format (`[metrics] listen`, docs/OPERATIONS.md).
//!
//! Every value has one writer, its pool's dispatcher thread: an update is a Relaxed load
//! and store of an atomic word (no lock, no allocation, no read-modify-write on the
//! request path). The exporter reads them with Relaxed loads when it is scraped; the
//! values of one scrape are each exact at some instant of the scrape, not a snapshot
//! of one instant (as with any exporter). Label sets are bounded: VMs and pools come
//! from the configuration, opcodes and error codes from the protocol.
// The values live in process memory and belong to no shared-memory protocol: no loom
// model covers them, so they use std's atomics directly.
#![allow(clippy::disallowed_types, reason = "process-local values, outside the loom models")]

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vgpu_ring::{ErrorCode, Opcode, PoolId, Priority, Response, Status};

/// A value with one writing thread.
///
/// ```
/// use vgpu_mediator::metrics::Value;
/// let requests = Value::default();
/// requests.add(2);
/// requests.add(1);
/// assert_eq!(requests.get(), 3);
/// requests.set(7);
/// assert_eq!(requests.get(), 7);
/// ```
#[derive(Debug, Default)]
pub struct Value(AtomicU64);

impl Value {
    /// Add `n` (only the owning thread writes, so load and store need no atomic add).
    ///
    /// ```
    /// let value = vgpu_mediator::metrics::Value::default();
    /// value.add(5);
    /// assert_eq!(value.get(), 5);
    /// ```
    #[inline]
    pub fn add(&self, n: u64) {
        // SYNC: Relaxed: a single writer; readers want the value, not an order.
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Set the value.
    ///
    /// ```
    /// let depth = vgpu_mediator::metrics::Value::default();
    /// depth.set(12);
    /// depth.set(3);
    /// assert_eq!(depth.get(), 3);
    /// ```
    #[inline]
    pub fn set(&self, value: u64) {
        // SYNC: Relaxed: a single writer; readers want the value, not an order.
        self.0.store(value, Ordering::Relaxed);
    }

    /// The value now.
    ///
    /// ```
    /// assert_eq!(vgpu_mediator::metrics::Value::default().get(), 0);
    /// ```
    #[must_use]
    pub fn get(&self) -> u64 {
        // SYNC: Relaxed: pairs with nothing; a scrape reads values, not an order.
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the histogram buckets, in nanoseconds (1 µs to 10 s).
const BOUNDS_NS: [u64; 18] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// A histogram of durations with fixed buckets (1 µs to 10 s).
///
/// ```
/// use vgpu_mediator::metrics::Histogram;
/// let wait = Histogram::default();
/// wait.observe(800); // 0.8 µs
/// wait.observe(3_000_000); // 3 ms
/// assert_eq!(wait.count(), 2);
/// ```
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last counts what is above every bound.
    buckets: [Value; BOUNDS_NS.len() + 1],
    sum_ns: Value,
}

impl Histogram {
    /// Count one observation of `ns` nanoseconds.
    ///
    /// ```
    /// let exec = vgpu_mediator::metrics::Histogram::default();
    /// exec.observe(1_500); // 1.5 µs
    /// assert_eq!(exec.count(), 1);
    /// ```
    #[inline]
    pub fn observe(&self, ns: u64) {
        self.buckets[BOUNDS_NS.partition_point(|&bound| bound < ns)].add(1);
        self.sum_ns.add(ns);
    }

    /// Observations so far.
    ///
    /// ```
    /// let exec = vgpu_mediator::metrics::Histogram::default();
    /// (0..10).for_each(|i| exec.observe(i * 1_000_000));
    /// assert_eq!(exec.count(), 10);
    /// ```
    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(Value::get).sum()
    }
}

impl EncodeMetric for &Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = BOUNDS_NS
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(Value::get))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(
            self.sum_ns.get() as f64 / 1e9,
            count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Opcode label values: the protocol's opcodes, then one for an unknown opcode.
const OPCODES: usize = Opcode::ALL.len() + 1;

fn opcode_index(opcode: u16) -> usize {
    Opcode::try_from(opcode).map_or(OPCODES - 1, |op| op as usize - 1)
}

fn opcode_name(index: usize) -> &'static str {
    Opcode::ALL.get(index).map_or("unknown", |op| op.name())
}

/// A VM's state as `vgpu_vm_state` reports it (see [`VmMetrics::set_state`]).
///
/// ```
/// use vgpu_mediator::metrics::{VmMetrics, VmState};
/// let vm = VmMetrics::new(2);
/// assert!(!vm.is_quarantined());
/// vm.set_state(VmState::Quarantined);
/// assert!(vm.is_quarantined());
/// vm.set_state(VmState::Attached);
/// assert!(!vm.is_quarantined());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum VmState {
    /// Served.
    Attached = 0,
    /// Not served: its region is unusable (retried periodically).
    Quarantined = 1,
    /// Attached, but the response ring's consumer index is impossible: isolated until the
    /// guest resets it.
    Poisoned = 2,
}

impl VmState {
    const ALL: [Self; 3] = [Self::Attached, Self::Quarantined, Self::Poisoned];

    fn name(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Quarantined => "quarantined",
            Self::Poisoned => "poisoned",
        }
    }
}

/// One VM's values (written by its pool's dispatcher).
///
/// ```
/// use vgpu_mediator::metrics::{VmMetrics, VmState};
/// use vgpu_ring::{ErrorCode, Opcode, PoolId, Priority, Request, Response, VmIdentity};
/// let vm = VmMetrics::new(7);
/// let id = VmIdentity { vm_id: 7, pool: PoolId::new(b'A').unwrap(), priority: Priority::LOW };
/// let request = Request { opcode: Opcode::Noop as u16, ..Request::default() };
/// vm.answered(&Response::answer(&request, &id, Ok(0)));
/// vm.answered(&Response::answer(&request, &id, Err(ErrorCode::QuotaExceeded)));
/// assert_eq!(vm.requests(Opcode::Noop, false), 1);
/// assert_eq!(vm.requests(Opcode::Noop, true), 1);
/// assert_eq!(vm.answered_total(), 2);
/// assert_eq!((vm.answered_with(false), vm.answered_with(true)), (1, 1));
/// vm.set_state(VmState::Quarantined);
/// assert!(vm.is_quarantined());
/// ```
#[derive(Debug)]
pub struct VmMetrics {
    /// The VM's id (a label).
    pub id: u32,
    /// Answered requests by opcode and status (0: success, 1: error).
    requests: [[Value; 2]; OPCODES],
    /// Error answers by error code.
    errors: [Value; ErrorCode::ALL.len()],
    /// Requests queued or executing.
    pub in_flight: Value,
    /// Responses waiting for room in the response ring.
    pub parked: Value,
    state: Value,
    /// Ring resets carried out at the guest's request.
    pub resets: Value,
    /// Log lines about this VM suppressed by its log budget.
    pub suppressed_lines: Value,
}

impl VmMetrics {
    /// The values of VM `id`, all zero (state: attached).
    ///
    /// ```
    /// let vm = vgpu_mediator::metrics::VmMetrics::new(4);
    /// assert_eq!((vm.id, vm.answered_total(), vm.in_flight.get()), (4, 0, 0));
    /// ```
    #[must_use]
    pub fn new(id: u32) -> Self {
        Self {
            id,
            requests: Default::default(),
            errors: Default::default(),
            in_flight: Value::default(),
            parked: Value::default(),
            state: Value::default(),
            resets: Value::default(),
            suppressed_lines: Value::default(),
        }
    }

    /// Count `response`, just published.
    ///
    /// ```
    /// use vgpu_mediator::metrics::VmMetrics;
    /// use vgpu_ring::{Opcode, Response, Status};
    /// let vm = VmMetrics::new(1);
    /// vm.answered(&Response { status: Status::Success as u32, opcode: Opcode::Dot as u16, ..Response::default() });
    /// assert_eq!(vm.requests(Opcode::Dot, false), 1);
    /// ```
    #[inline]
    pub fn answered(&self, response: &Response) {
        let failed = response.status != Status::Success as u32;
        self.requests[opcode_index(response.opcode)][usize::from(failed)].add(1);
        if failed && let Some(counter) = self.errors.get(response.error as usize) {
            counter.add(1);
        }
    }

    /// Record the VM's state.
    ///
    /// ```
    /// use vgpu_mediator::metrics::{VmMetrics, VmState};
    /// let vm = VmMetrics::new(1);
    /// vm.set_state(VmState::Poisoned); // until the guest resets its rings
    /// assert!(!vm.is_quarantined());
    /// ```
    pub fn set_state(&self, state: VmState) {
        self.state.set(state as u64);
    }

    /// Every request answered so far.
    ///
    /// ```
    /// use vgpu_mediator::metrics::VmMetrics;
    /// use vgpu_ring::{Opcode, Response};
    /// let vm = VmMetrics::new(1);
    /// for opcode in [Opcode::Noop, Opcode::Echo] {
    ///     vm.answered(&Response { status: 1, opcode: opcode as u16, ..Response::default() });
    /// }
    /// assert_eq!(vm.answered_total(), 2);
    /// ```
    #[must_use]
    pub fn answered_total(&self) -> u64 {
        self.requests.iter().flatten().map(Value::get).sum()
    }

    /// Requests answered so far that succeeded (`failed` false) or failed, whatever
    /// their opcode.
    ///
    /// ```
    /// use vgpu_mediator::metrics::VmMetrics;
    /// use vgpu_ring::{ErrorCode, Response};
    /// let vm = VmMetrics::new(1);
    /// vm.answered(&Response { status: 2, error: ErrorCode::BadRange as u32, opcode: 4, ..Response::default() });
    /// assert_eq!((vm.answered_with(false), vm.answered_with(true)), (0, 1));
    /// ```
    #[must_use]
    pub fn answered_with(&self, failed: bool) -> u64 {
        self.requests.iter().map(|by_status| by_status[usize::from(failed)].get()).sum()
    }

    /// Whether the VM is quarantined.
    ///
    /// ```
    /// use vgpu_mediator::metrics::{VmMetrics, VmState};
    /// let vm = VmMetrics::new(1);
    /// vm.set_state(VmState::Quarantined);
    /// assert!(vm.is_quarantined());
    /// ```
    #[must_use]
    pub fn is_quarantined(&self) -> bool {
        self.state.get() == VmState::Quarantined as u64
    }

    /// Answered requests of `opcode` that succeeded (`failed` false) or failed.
    ///
    /// ```
    /// use vgpu_mediator::metrics::VmMetrics;
    /// use vgpu_ring::{Opcode, Response};
    /// let vm = VmMetrics::new(1);
    /// vm.answered(&Response { status: 1, opcode: Opcode::Matmul as u16, ..Response::default() });
    /// assert_eq!((vm.requests(Opcode::Matmul, false), vm.requests(Opcode::Noop, false)), (1, 0));
    /// ```
    #[must_use]
    pub fn requests(&self, opcode: Opcode, failed: bool) -> u64 {
        self.requests[opcode_index(opcode as u16)][usize::from(failed)].get()
    }
}

/// One pool's values (written by its dispatcher).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use vgpu_mediator::metrics::{PoolMetrics, VmMetrics};
/// use vgpu_ring::{Opcode, PoolId, Priority};
/// let vms = vec![Arc::new(VmMetrics::new(1))];
/// let pool = PoolMetrics::new(PoolId::new(b'A').unwrap(), ("cpu", "cpu".into()), vms);
/// pool.executed(Opcode::Echo as u16, Duration::from_micros(3), Duration::from_micros(1));
/// pool.set_queue_depth(Priority::HIGH, 4);
/// assert_eq!(pool.queue_wait.count(), 1);
/// assert_eq!(pool.busy_ns.get(), 1_000);
/// assert_eq!(pool.queue_depth[Priority::HIGH.index()].get(), 4);
/// ```
#[derive(Debug)]
pub struct PoolMetrics {
    /// The pool.
    pub pool: PoolId,
    /// The executor's backend (`cpu`, `cuda`) and device.
    pub executor: (&'static str, String),
    /// The pool's VMs, in the dispatcher's order.
    pub vms: Vec<Arc<VmMetrics>>,
    /// Time from a request's arrival to the start of its execution.
    pub queue_wait: Histogram,
    /// Execution time by opcode.
    exec: [Histogram; OPCODES],
    /// Requests waiting in the queue, by priority.
    pub queue_depth: [Value; 3],
    /// Nanoseconds spent executing requests.
    pub busy_ns: Value,
    /// Dispatcher passes, empty ones included (the watchdog's sign of progress; under
    /// load, requests per pass tell how far the dispatcher is behind its VMs).
    pub passes: Value,
}

impl PoolMetrics {
    /// The values of `pool`, whose executor is `executor` and VMs `vms`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vgpu_mediator::metrics::{PoolMetrics, VmMetrics};
    /// use vgpu_ring::PoolId;
    /// let vms = vec![Arc::new(VmMetrics::new(1)), Arc::new(VmMetrics::new(2))];
    /// let pool = PoolMetrics::new(PoolId::new(b'G').unwrap(), ("cuda", "0".to_owned()), vms);
    /// assert_eq!((pool.vms.len(), pool.busy_ns.get()), (2, 0));
    /// ```
    #[must_use]
    pub fn new(pool: PoolId, executor: (&'static str, String), vms: Vec<Arc<VmMetrics>>) -> Self {
        Self {
            pool,
            executor,
            vms,
            queue_wait: Histogram::default(),
            exec: Default::default(),
            queue_depth: Default::default(),
            busy_ns: Value::default(),
            passes: Value::default(),
        }
    }

    /// Record a request of `opcode` that waited `queued` and ran for `exec`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use vgpu_mediator::metrics::PoolMetrics;
    /// use vgpu_ring::{Opcode, PoolId};
    /// let pool = PoolMetrics::new(PoolId::new(b'A').unwrap(), ("cpu", "cpu".to_owned()), vec![]);
    /// pool.executed(Opcode::Sleep as u16, Duration::ZERO, Duration::from_millis(2));
    /// assert_eq!(pool.busy_ns.get(), 2_000_000);
    /// ```
    #[inline]
    pub fn executed(&self, opcode: u16, queued: Duration, exec: Duration) {
        let exec = exec.as_nanos() as u64;
        self.queue_wait.observe(queued.as_nanos() as u64);
        self.exec[opcode_index(opcode)].observe(exec);
        self.busy_ns.add(exec);
    }

    /// Record how many requests of `priority` wait in the queue.
    ///
    /// ```
    /// use vgpu_mediator::metrics::PoolMetrics;
    /// use vgpu_ring::{PoolId, Priority};
    /// let pool = PoolMetrics::new(PoolId::new(b'A').unwrap(), ("cpu", "cpu".to_owned()), vec![]);
    /// pool.set_queue_depth(Priority::LOW, 9);
    /// assert_eq!(pool.queue_depth[Priority::LOW.index()].get(), 9);
    /// ```
    #[inline]
    pub fn set_queue_depth(&self, priority: Priority, depth: usize) {
        self.queue_depth[priority.index()].set(depth as u64);
    }
}

/// Everything a mediator reports, encoded at each scrape.
///
/// ```
/// use prometheus_client::registry::Registry;
/// use std::sync::Arc;
/// use vgpu_mediator::metrics::{Metrics, PoolMetrics, VmMetrics};
/// use vgpu_ring::PoolId;
/// let pool = PoolMetrics::new(
///     PoolId::new(b'A').unwrap(),
///     ("cpu", "cpu".into()),
///     vec![Arc::new(VmMetrics::new(1))],
/// );
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(Metrics { epoch: 5, pools: vec![Arc::new(pool)] }));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"vgpu_requests_total{pool="A",vm="1",opcode="NOOP",status="success"} 0"#));
/// assert!(text.contains(r#"vgpu_vm_state{vm="1",state="attached"} 1"#));
/// assert!(text.contains("vgpu_mediator_epoch 5"));
/// ```
#[derive(Debug)]
pub struct Metrics {
    /// The session epoch.
    pub epoch: u64,
    /// Every pool.
    pub pools: Vec<Arc<PoolMetrics>>,
}

/// A per-VM metric: name, help, type and how to read it.
type PerVm = (&'static str, &'static str, MetricType, fn(&VmMetrics) -> u64);

/// One metric family: its descriptor, then one encoded value per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    values: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, value) in values {
        value.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let vms = || {
            self.pools.iter().flat_map(|p| {
                p.vms.iter().map(move |vm| (p.pool.name().to_string(), vm.id.to_string(), vm))
            })
        };
        let requests = vms().flat_map(|(pool, id, vm)| {
            (0..OPCODES).flat_map(move |op| {
                let (pool, id) = (pool.clone(), id.clone());
                ["success", "error"].into_iter().enumerate().map(move |(failed, status)| {
                    let labels = vec![
                        ("pool", pool.clone()),
                        ("vm", id.clone()),
                        ("opcode", opcode_name(op).to_owned()),
                        ("status", status.to_owned()),
                    ];
                    (labels, counter(vm.requests[op][failed].get()))
                })
            })
        });
        family(&mut e, "vgpu_requests", "Requests answered", None, MetricType::Counter, requests)?;
        let errors = vms().flat_map(|(pool, id, vm)| {
            ErrorCode::ALL.into_iter().skip(1).map(move |code| {
                let labels = vec![
                    ("pool", pool.clone()),
                    ("vm", id.clone()),
                    ("code", (code as u32).to_string()),
                ];
                (labels, counter(vm.errors[code as usize].get()))
            })
        });
        family(
            &mut e,
            "vgpu_request_errors",
            "Requests answered with an error, by error code (docs/LAYOUT.md)",
            None,
            MetricType::Counter,
            errors,
        )?;
        let pool_label = |p: &PoolMetrics| vec![("pool", p.pool.name().to_string())];
        family(
            &mut e,
            "vgpu_queue_wait",
            "Time from a request's arrival to the start of its execution",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            self.pools.iter().map(|p| (pool_label(p), &p.queue_wait)),
        )?;
        let exec = self.pools.iter().flat_map(|p| {
            (0..OPCODES).filter(|&op| p.exec[op].count() > 0).map(move |op| {
                let mut labels = pool_label(p);
                labels.push(("opcode", opcode_name(op).to_owned()));
                (labels, &p.exec[op])
            })
        });
        family(
            &mut e,
            "vgpu_exec",
            "Execution time of a request",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            exec,
        )?;
        let depth = self.pools.iter().flat_map(|p| {
            Priority::ALL.into_iter().map(move |priority| {
                let mut labels = pool_label(p);
                labels.push(("priority", priority.get().to_string()));
                (labels, gauge(p.queue_depth[priority.index()].get()))
            })
        });
        family(&mut e, "vgpu_queue_depth", "Requests waiting", None, MetricType::Gauge, depth)?;
        let per_vm: [PerVm; 4] = [
            ("vgpu_inflight", "Requests queued or executing", MetricType::Gauge, |vm| {
                vm.in_flight.get()
            }),
            (
                "vgpu_parked_responses",
                "Responses waiting for room in the response ring",
                MetricType::Gauge,
                |vm| vm.parked.get(),
            ),
            (
                "vgpu_ring_resets",
                "Ring resets carried out at the guest's request",
                MetricType::Counter,
                |vm| vm.resets.get(),
            ),
            (
                "vgpu_log_lines_suppressed",
                "Log lines about the VM suppressed by its log budget",
                MetricType::Counter,
                |vm| vm.suppressed_lines.get(),
            ),
        ];
        for (name, help, metric_type, value) in per_vm {
            let mut family = e.encode_descriptor(name, help, None, metric_type)?;
            for (_, id, vm) in vms() {
                let labels = [("vm", id)];
                let encoder = family.encode_family(&labels)?;
                match metric_type {
                    MetricType::Counter => counter(value(vm)).encode(encoder)?,
                    _ => gauge(value(vm)).encode(encoder)?,
                }
            }
        }
        let states = vms().flat_map(|(_, id, vm)| {
            VmState::ALL.into_iter().map(move |state| {
                let labels = vec![("vm", id.clone()), ("state", state.name().to_owned())];
                (labels, gauge(u64::from(vm.state.get() == state as u64)))
            })
        });
        family(&mut e, "vgpu_vm_state", "1 for the VM's state", None, MetricType::Gauge, states)?;
        family(
            &mut e,
            "vgpu_dispatcher_busy",
            "Time the pool spent executing requests",
            Some(&Unit::Seconds),
            MetricType::Counter,
            self.pools
                .iter()
                .map(|p| (pool_label(p), ConstCounter::new(p.busy_ns.get() as f64 / 1e9))),
        )?;
        family(
            &mut e,
            "vgpu_dispatcher_passes",
            "Passes the pool's dispatcher made over its VMs' rings",
            None,
            MetricType::Counter,
            self.pools.iter().map(|p| (pool_label(p), counter(p.passes.get()))),
        )?;
        let epoch = ConstGauge::new(self.epoch as f64);
        family(
            &mut e,
            "vgpu_mediator_epoch",
            "The session epoch the mediator announced in every region",
            None,
            MetricType::Gauge,
            [(Vec::new(), epoch)],
        )?;
        let info = self.pools.iter().map(|p| {
            let mut labels = pool_label(p);
            labels.push(("backend", p.executor.0.to_owned()));
            labels.push(("device", p.executor.1.clone()));
            (labels, gauge(1))
        });
        family(&mut e, "vgpu_executor_info", "A pool's executor", None, MetricType::Gauge, info)
    }
}

/// The exporter: an HTTP server thread answering `GET /metrics`.
///
/// ```
/// use vgpu_mediator::metrics::{Exporter, Metrics};
/// let exporter = Exporter::start("127.0.0.1:0".parse().unwrap(), Metrics { epoch: 1, pools: vec![] })
///     .unwrap();
/// drop(exporter); // stops the thread
/// ```
pub struct Exporter {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Serve `metrics` on `listen` from a thread of its own until dropped.
    ///
    /// ```
    /// use vgpu_mediator::metrics::{Exporter, Metrics};
    /// let exporter = Exporter::start("127.0.0.1:0".parse()?, Metrics { epoch: 1, pools: vec![] })?;
    /// drop(exporter);
    /// // An address that cannot be bound is an error, not a panic.
    /// assert!(Exporter::start("192.0.2.1:9464".parse()?, Metrics { epoch: 1, pools: vec![] }).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub fn start(listen: SocketAddr, metrics: Metrics) -> Result<Self, String> {
        let server = Arc::new(tiny_http::Server::http(listen).map_err(|e| e.to_string())?);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics));
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&serving, &registry))
            .map_err(|e| e.to_string())?;
        Ok(Self { server, thread: Some(thread) })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answer requests until the server is unblocked (at shutdown).
fn serve(server: &tiny_http::Server, registry: &Registry) {
    while let Ok(request) = server.recv() {
        let path = request.url().split('?').next().unwrap_or_default();
        let mut text = String::new();
        let response = if path != "/metrics" {
            tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
        } else if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
            tiny_http::Response::from_string("encoding failed\n").with_status_code(500)
        } else {
            let response = tiny_http::Response::from_string(text);
            match tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE) {
                Ok(header) => response.with_header(header),
                Err(()) => response,
            }
        };
        // A scraper that went away is its own problem.
        let _ = request.respond(response);
    }
}
