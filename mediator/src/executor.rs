//! Executors run validated jobs on a slot's arena data. All of them sit behind
//! [`Executor`]; the CPU executor is always built.

use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vgpu_ring::{ErrorCode, Opcode, PoolId, Slot};
use zerocopy::IntoBytes;

/// A validated request: the operation and arena ranges that were checked against the
/// slot's arena.
///
/// ```
/// use vgpu_mediator::executor::Job;
/// use vgpu_ring::Opcode;
/// // VECTOR_ADD of 1,024 floats: operands a ‖ b at 0, the sum at 8,192.
/// let job = Job { op: Opcode::VectorAdd, args: [1024, 0, 0], input: (0, 8192), output: (8192, 4096) };
/// assert!(job.is_compute() && !job.is_long());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// The operation.
    pub op: Opcode,
    /// Its arguments.
    pub args: [u32; 3],
    /// Input range (offset, length) in the arena.
    pub input: (u32, u32),
    /// Output range (offset, capacity) in the arena.
    pub output: (u32, u32),
}

impl Job {
    /// Work this large or larger goes to the pool's executor thread; smaller jobs run
    /// inline on the dispatcher (cheaper than a thread handoff).
    pub const INLINE_LIMIT: u64 = 64 * 1024;

    /// Whether the job is arithmetic on f32 data (what a GPU executor runs).
    ///
    /// ```
    /// use vgpu_mediator::executor::Job;
    /// use vgpu_ring::Opcode;
    /// let job = |op| Job { op, args: [0; 3], input: (0, 0), output: (0, 0) };
    /// assert!(job(Opcode::Matmul).is_compute());
    /// assert!(!job(Opcode::Echo).is_compute());
    /// ```
    #[must_use]
    pub fn is_compute(&self) -> bool {
        matches!(self.op, Opcode::VectorAdd | Opcode::Saxpy | Opcode::Dot | Opcode::Matmul)
    }

    /// Whether the job is long enough to run off the dispatcher thread.
    ///
    /// ```
    /// use vgpu_mediator::executor::Job;
    /// use vgpu_ring::Opcode;
    /// let add = |n| Job { op: Opcode::VectorAdd, args: [n, 0, 0], input: (0, 0), output: (0, 0) };
    /// assert!(!add(8191).is_long(), "inline on the dispatcher");
    /// assert!(add(8192).is_long(), "64 KiB of operands: the executor thread");
    /// ```
    #[must_use]
    pub fn is_long(&self) -> bool {
        let [a, b, c] = self.args.map(u64::from);
        match self.op {
            Opcode::Noop => false,
            Opcode::Sleep => a > 0,
            Opcode::Echo => u64::from(self.input.1) >= Self::INLINE_LIMIT,
            Opcode::VectorAdd | Opcode::Saxpy | Opcode::Dot => a * 8 >= Self::INLINE_LIMIT,
            Opcode::Matmul => a * b * c >= Self::INLINE_LIMIT,
        }
    }
}

/// Read a range of `slot`'s arena as little-endian f32s (`len / 4` of them), copied once
/// into a new vector (the tests' check of what an executor wrote; executors stream
/// through reused buffers instead).
#[cfg(test)]
pub(crate) fn read_f32s(slot: &Slot, (offset, len): (u32, u32)) -> Result<Vec<f32>, ErrorCode> {
    let mut values = vec![0f32; len as usize / 4];
    slot.arena_read(u64::from(offset), values.as_mut_bytes()).map_err(|_| ErrorCode::BadRange)?;
    Ok(values)
}

/// Write `bytes` into `slot`'s arena at `offset`; returns the bytes written.
///
/// ```
/// use vgpu_mediator::executor::write_bytes;
/// use vgpu_ring::ErrorCode;
/// # let dir = tempfile::tempdir()?;
/// # let geometry = vgpu_ring::Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 };
/// # let region = std::sync::Arc::new(vgpu_ring::Region::create(&dir.path().join("r"), 1 << 16, geometry, &[], false)?);
/// let slot = region.slot(0)?;
/// assert_eq!(write_bytes(&slot, 0, b"answer"), Ok(6));
/// assert_eq!(write_bytes(&slot, 4094, b"answer"), Err(ErrorCode::BadRange), "past the arena");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`ErrorCode::BadRange`] if the range is outside the arena.
pub fn write_bytes(slot: &Slot, offset: u32, bytes: &[u8]) -> Result<u32, ErrorCode> {
    slot.arena_write(u64::from(offset), bytes).map_err(|_| ErrorCode::BadRange)?;
    u32::try_from(bytes.len()).map_err(|_| ErrorCode::OutputTooSmall)
}

/// Write f32s little-endian into `slot`'s arena at `offset`; returns the bytes written.
///
/// ```
/// use vgpu_mediator::executor::write_f32s;
/// # let dir = tempfile::tempdir()?;
/// # let geometry = vgpu_ring::Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 };
/// # let region = std::sync::Arc::new(vgpu_ring::Region::create(&dir.path().join("r"), 1 << 16, geometry, &[], false)?);
/// let slot = region.slot(0)?;
/// assert_eq!(write_f32s(&slot, 64, &[1.0, 2.0]), Ok(8));
/// let mut bytes = [0; 4];
/// slot.arena_read(68, &mut bytes)?;
/// assert_eq!(f32::from_le_bytes(bytes), 2.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// As [`write_bytes`].
pub fn write_f32s(slot: &Slot, offset: u32, values: &[f32]) -> Result<u32, ErrorCode> {
    write_bytes(slot, offset, values.as_bytes())
}

/// Something that runs jobs.
///
/// ```
/// use vgpu_mediator::executor::{Executor, Job};
/// use vgpu_ring::{ErrorCode, Slot};
/// /// An executor that refuses every job.
/// struct Closed;
/// impl Executor for Closed {
///     fn execute(&mut self, _job: &Job, _slot: &Slot) -> Result<u32, ErrorCode> {
///         Err(ErrorCode::ExecutorFailed)
///     }
/// }
/// // The provided methods: small compute jobs stay on the dispatcher, reported as the CPU.
/// assert!(!Closed.offloads_compute());
/// assert_eq!(Closed.describe(), ("cpu", "cpu".to_owned()));
/// ```
pub trait Executor: Send {
    /// Run `job` on `slot`'s arena; returns the number of output bytes written.
    ///
    /// ```
    /// use vgpu_mediator::executor::{CpuExecutor, Executor, Job, write_f32s};
    /// use vgpu_ring::Opcode;
    /// # let dir = tempfile::tempdir()?;
    /// # let geometry = vgpu_ring::Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 };
    /// # let region = std::sync::Arc::new(vgpu_ring::Region::create(&dir.path().join("r"), 1 << 16, geometry, &[], false)?);
    /// let slot = region.slot(0)?;
    /// write_f32s(&slot, 0, &[1.0, 2.0, 10.0, 20.0])?; // a ‖ b
    /// let job = Job { op: Opcode::VectorAdd, args: [2, 0, 0], input: (0, 16), output: (64, 8) };
    /// assert_eq!(CpuExecutor::default().execute(&job, &slot), Ok(8));
    /// let mut sum = [0; 8];
    /// slot.arena_read(64, &mut sum)?;
    /// assert_eq!(sum, [11.0f32, 22.0].map(f32::to_le_bytes).concat()[..]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The [`ErrorCode`] to answer with.
    fn execute(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode>;

    /// Whether every compute job (see [`Job::is_compute`]) should go to this executor,
    /// however small; otherwise small jobs run inline on the dispatcher, on the CPU.
    ///
    /// ```
    /// use vgpu_mediator::executor::{CpuExecutor, Executor};
    /// // A CPU pool runs small compute jobs inline; a CUDA pool's executor takes them all.
    /// assert!(!CpuExecutor::default().offloads_compute());
    /// ```
    fn offloads_compute(&self) -> bool {
        false
    }

    /// The backend (`cpu`, `cuda`) and the device, as metrics report them.
    ///
    /// ```
    /// use vgpu_mediator::executor::{CpuExecutor, Executor};
    /// assert_eq!(CpuExecutor::default().describe(), ("cpu", "cpu".to_owned()));
    /// ```
    fn describe(&self) -> (&'static str, String) {
        ("cpu", "cpu".to_owned())
    }

    /// `slot` was attached (at start, or again after a quarantine): prepare for its
    /// jobs. The CUDA executor registers the slot's arena with the driver here, so that
    /// the GPU copies operands and results straight from and to it. Called on the
    /// executor's thread, before any job of that attach.
    ///
    /// ```
    /// use vgpu_mediator::executor::{CpuExecutor, Executor};
    /// # let dir = tempfile::tempdir()?;
    /// # let geometry = vgpu_ring::Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 };
    /// # let region = std::sync::Arc::new(vgpu_ring::Region::create(&dir.path().join("r"), 1 << 16, geometry, &[], false)?);
    /// let slot = region.slot(0)?;
    /// let mut executor = CpuExecutor::default();
    /// executor.attach(&slot); // the CPU needs nothing; a GPU registers the arena
    /// executor.detach(&slot);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn attach(&mut self, _slot: &Slot) {}

    /// `slot` is let go (its VM was quarantined): undo [`attach`](Self::attach). Called
    /// after every job of that slot handed to the executor before has finished. At
    /// stop the executor is dropped instead.
    ///
    /// ```
    /// use vgpu_mediator::executor::{CpuExecutor, Executor};
    /// # let dir = tempfile::tempdir()?;
    /// # let geometry = vgpu_ring::Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 };
    /// # let region = std::sync::Arc::new(vgpu_ring::Region::create(&dir.path().join("r"), 1 << 16, geometry, &[], false)?);
    /// let slot = region.slot(0)?;
    /// let mut executor = CpuExecutor::default();
    /// executor.attach(&slot);
    /// // ... jobs of the slot ...
    /// executor.detach(&slot); // its VM was quarantined
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn detach(&mut self, _slot: &Slot) {}
}

/// What the executor thread (or the dispatcher, inline) did with a job.
pub(crate) struct Executed<T> {
    /// What the job was submitted with.
    pub(crate) item: T,
    /// Bytes written, or the error to answer with.
    pub(crate) result: Result<u32, ErrorCode>,
    /// When execution started (the end of the request's wait in the queue).
    pub(crate) started: Instant,
    /// How long it ran.
    pub(crate) exec: Duration,
}

/// What the dispatcher hands its executor thread, in order.
enum Work<T> {
    /// Run a job on a slot; `T` comes back with the result.
    Run(T, Job, Slot),
    /// See [`Executor::attach`].
    Attach(Slot),
    /// See [`Executor::detach`].
    Detach(Slot),
}

/// A pool's executor thread: runs one long job at a time with the pool's [`Executor`],
/// on the slot it is handed, and reports each one back over a channel. Attaches and
/// detaches of slots reach the executor on the same channel, so in order with the jobs.
pub(crate) struct ExecutorThread<T> {
    jobs: Option<Sender<Work<T>>>,
    done: Receiver<Executed<T>>,
    thread: Option<JoinHandle<()>>,
}

/// The next work for the executor thread: polled for `spin` after `idle_since`, then
/// waited for; `None` once the dispatcher is gone.
fn next_work<T>(jobs: &Receiver<Work<T>>, spin: Duration, idle_since: Instant) -> Option<Work<T>> {
    let mut polls: u32 = 0;
    while !spin.is_zero() {
        match jobs.try_recv() {
            Ok(work) => return Some(work),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        polls = polls.wrapping_add(1);
        // The clock (tens of ns in a VM) once per 64 polls.
        if polls.is_multiple_of(64) && idle_since.elapsed() > spin {
            break;
        }
        vgpu_ring::spin_hint();
    }
    jobs.recv().ok()
}

impl<T: Send + 'static> ExecutorThread<T> {
    /// Start the thread (`pool-<name>-exec`) running `executor`. After each job it polls
    /// for the next one for `spin` before it sleeps: where every compute job is handed
    /// over (a GPU pool), waking a sleeping thread for each would cost more than the
    /// job's own work.
    pub(crate) fn spawn(
        pool: PoolId,
        mut executor: Box<dyn Executor>,
        spin: Duration,
    ) -> std::io::Result<Self> {
        let (jobs, job_rx) = channel::<Work<T>>();
        let (done_tx, done) = channel();
        let thread =
            std::thread::Builder::new().name(format!("pool-{pool}-exec")).spawn(move || {
                let mut idle_since = Instant::now();
                while let Some(work) = next_work(&job_rx, spin, idle_since) {
                    let (item, job, slot) = match work {
                        Work::Run(item, job, slot) => (item, job, slot),
                        Work::Attach(slot) => {
                            executor.attach(&slot);
                            continue;
                        }
                        Work::Detach(slot) => {
                            executor.detach(&slot);
                            continue;
                        }
                    };
                    let started = Instant::now();
                    let result = executor.execute(&job, &slot);
                    let exec = started.elapsed();
                    // The slot (and so the mapping) is let go before the answer.
                    drop(slot);
                    if done_tx.send(Executed { item, result, started, exec }).is_err() {
                        break;
                    }
                    idle_since = Instant::now();
                }
            })?;
        Ok(Self { jobs: Some(jobs), done, thread: Some(thread) })
    }

    /// Hand `job` on `slot` to the thread; `item` comes back with its result. Gives
    /// `item` back if the thread has died.
    pub(crate) fn submit(&self, item: T, job: Job, slot: Slot) -> Result<(), T> {
        match &self.jobs {
            Some(tx) => match tx.send(Work::Run(item, job, slot)) {
                Err(std::sync::mpsc::SendError(Work::Run(item, ..))) => Err(item),
                // Sent; a refused send gives back what was sent, a `Run`.
                _ => Ok(()),
            },
            None => Err(item),
        }
    }

    /// Tell the executor that `slot` was attached (see [`Executor::attach`]).
    pub(crate) fn attach(&self, slot: Slot) {
        self.send(Work::Attach(slot));
    }

    /// Tell the executor that `slot` is let go (see [`Executor::detach`]).
    pub(crate) fn detach(&self, slot: Slot) {
        self.send(Work::Detach(slot));
    }

    /// Hand `work` over; a dead thread has nothing left to prepare or undo.
    fn send(&self, work: Work<T>) {
        if let Some(tx) = &self.jobs {
            let _ = tx.send(work);
        }
    }

    /// The finished job, if there is one.
    pub(crate) fn try_done(&self) -> Result<Executed<T>, TryRecvError> {
        self.done.try_recv()
    }

    /// Wait for the job in hand (at shutdown); `None` if the thread died.
    pub(crate) fn wait_done(&self) -> Option<Executed<T>> {
        self.done.recv().ok()
    }
}

impl<T> Drop for ExecutorThread<T> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs every operation on the CPU.
///
/// Operands stream through small buffers that live as long as the executor (so after
/// the first jobs no request allocates or touches a fresh page): a chunk of each input
/// is copied out of the arena once, computed on, and the chunk of results copied back.
/// Input and output never overlap (validation refuses it), so streaming gives the same
/// answer as copying everything first. MATMUL, which reads its operands out of order,
/// copies them whole into the same reused buffers.
///
/// ```
/// use vgpu_mediator::executor::{CpuExecutor, Executor, Job, write_bytes};
/// use vgpu_ring::Opcode;
/// # let dir = tempfile::tempdir()?;
/// # let geometry = vgpu_ring::Geometry { slot_count: 1, ring_entries: 16, arena_size: 4096 };
/// # let region = std::sync::Arc::new(vgpu_ring::Region::create(&dir.path().join("r"), 1 << 16, geometry, &[], false)?);
/// let slot = region.slot(0)?;
/// write_bytes(&slot, 0, b"ping")?;
/// let echo = Job { op: Opcode::Echo, args: [0; 3], input: (0, 4), output: (64, 4) };
/// let mut executor = CpuExecutor::default();
/// assert_eq!(executor.execute(&echo, &slot), Ok(4));
/// let mut back = [0; 4];
/// slot.arena_read(64, &mut back)?;
/// assert_eq!(&back, b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct CpuExecutor {
    a: Vec<f32>,
    b: Vec<f32>,
    out: Vec<f32>,
    bytes: Vec<u8>,
}

/// Elements per streamed chunk: three chunks (two inputs, the output) stay in L2.
const CHUNK: usize = 8192;

/// Copy `n` f32s at byte `offset` of `slot`'s arena into `buf` (resized, not reallocated
/// once it is large enough).
fn fill(slot: &Slot, offset: u64, buf: &mut Vec<f32>, n: usize) -> Result<(), ErrorCode> {
    buf.resize(n, 0.0);
    slot.arena_read(offset, buf.as_mut_bytes()).map_err(|_| ErrorCode::BadRange)
}

impl CpuExecutor {
    /// `out[i] = f(a[i], b[i])` for the job's `n`, the input being a ‖ b.
    fn elementwise(
        &mut self,
        job: &Job,
        slot: &Slot,
        f: impl Fn(f32, f32) -> f32,
    ) -> Result<u32, ErrorCode> {
        let n = job.args[0] as usize;
        let input = u64::from(job.input.0);
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            fill(slot, input + 4 * start as u64, &mut self.a, len)?;
            fill(slot, input + 4 * (n + start) as u64, &mut self.b, len)?;
            self.out.clear();
            self.out.extend(self.a.iter().zip(&self.b).map(|(&x, &y)| f(x, y)));
            write_f32s(slot, job.output.0 + 4 * start as u32, &self.out)?;
        }
        u32::try_from(4 * n).map_err(|_| ErrorCode::OutputTooSmall)
    }

    /// `Σ x[i] * y[i]`, summed in order (as [`dot`]), the input being x ‖ y.
    fn dot(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode> {
        let n = job.args[0] as usize;
        let input = u64::from(job.input.0);
        let mut sum = 0.0f32;
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            fill(slot, input + 4 * start as u64, &mut self.a, len)?;
            fill(slot, input + 4 * (n + start) as u64, &mut self.b, len)?;
            sum = self.a.iter().zip(&self.b).fold(sum, |acc, (&x, &y)| acc + x * y);
        }
        write_f32s(slot, job.output.0, &[sum])
    }

    /// Copy the input range to the output range through the reused byte buffer.
    fn echo(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode> {
        let (offset, len) = job.input;
        for start in (0..len as usize).step_by(4 * CHUNK) {
            let chunk = (4 * CHUNK).min(len as usize - start);
            self.bytes.resize(chunk, 0);
            slot.arena_read(u64::from(offset) + start as u64, &mut self.bytes)
                .map_err(|_| ErrorCode::BadRange)?;
            write_bytes(slot, job.output.0 + start as u32, &self.bytes)?;
        }
        Ok(len)
    }
}

impl Executor for CpuExecutor {
    fn execute(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode> {
        match job.op {
            Opcode::Noop => Ok(0),
            Opcode::Sleep => {
                std::thread::sleep(Duration::from_micros(u64::from(job.args[0])));
                Ok(0)
            }
            Opcode::Echo => self.echo(job, slot),
            Opcode::VectorAdd => self.elementwise(job, slot, |x, y| x + y),
            Opcode::Saxpy => {
                let alpha = f32::from_bits(job.args[1]);
                self.elementwise(job, slot, |x, y| alpha * x + y)
            }
            Opcode::Dot => self.dot(job, slot),
            Opcode::Matmul => {
                let [m, k, n] = job.args.map(|v| v as usize);
                let input = u64::from(job.input.0);
                fill(slot, input, &mut self.a, m * k)?;
                fill(slot, input + 4 * (m * k) as u64, &mut self.b, k * n)?;
                self.out.clear();
                self.out.resize(m * n, 0.0);
                matmul_into(&self.a, &self.b, m, k, n, &mut self.out);
                write_f32s(slot, job.output.0, &self.out)
            }
        }
    }
}

/// `a + b`, element-wise.
///
/// ```
/// assert_eq!(vgpu_mediator::executor::vector_add(&[1.0, 2.0], &[3.0, 4.0]), [4.0, 6.0]);
/// ```
#[must_use]
pub fn vector_add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// `alpha * x + y`, element-wise.
///
/// ```
/// assert_eq!(vgpu_mediator::executor::saxpy(2.0, &[1.0, 2.0], &[1.0, 1.0]), [3.0, 5.0]);
/// ```
#[must_use]
pub fn saxpy(alpha: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(x, y)| alpha * x + y).collect()
}

/// `Σ x[i] * y[i]`, summed in order.
///
/// ```
/// assert_eq!(vgpu_mediator::executor::dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
/// ```
#[must_use]
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(x, y)| x * y).sum()
}

/// `A (m×k) × B (k×n)`, row-major; each element summed in order of k.
///
/// ```
/// let c = vgpu_mediator::executor::matmul(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 2, 2);
/// assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
/// ```
#[must_use]
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    matmul_into(a, b, m, k, n, &mut c);
    c
}

/// [`matmul`] into `c` (m×n, zeroed by the caller).
fn matmul_into(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, c: &mut [f32]) {
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += aip * b[p * n + j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The voluntary context switches (sleeps) of this process's thread named `name`.
    fn sleeps_of(name: &str) -> u64 {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .and_then(|task| std::fs::read_to_string(task.path().join("status")).ok())
            .and_then(|status| {
                status.lines().find_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:").and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or_else(|| panic!("no thread {name}"))
    }

    /// An executor thread that spins between jobs takes 200 jobs handed to it one after
    /// another without sleeping; one that does not spin sleeps between many of them (96
    /// of 200 here: the channel's own brief spin catches the others).
    #[test]
    fn a_spinning_executor_thread_takes_jobs_without_sleeping() {
        use std::sync::Arc;
        use vgpu_ring::{Geometry, Region};
        let dir = tempfile::tempdir().unwrap();
        let geometry = Geometry { slot_count: 1, ring_entries: 8, arena_size: 4096 };
        let region =
            Arc::new(Region::create(&dir.path().join("r"), 1 << 16, geometry, &[], false).unwrap());
        let slot = region.slot(0).unwrap();
        let noop = Job { op: Opcode::Noop, args: [0; 3], input: (0, 0), output: (0, 0) };
        // Pool names of their own: the threads are found by name.
        for (pool, spin) in [(b'8', Duration::from_secs(5)), (b'9', Duration::ZERO)] {
            let pool = PoolId::new(pool).unwrap();
            let thread =
                ExecutorThread::<u32>::spawn(pool, Box::new(CpuExecutor::default()), spin).unwrap();
            let name = format!("pool-{pool}-exec");
            // The first job: the thread has started and is past its first wait.
            thread.submit(0, noop, slot.clone()).unwrap();
            while thread.try_done().is_err() {
                std::hint::spin_loop();
            }
            let before = sleeps_of(&name);
            for item in 1..=200 {
                thread.submit(item, noop, slot.clone()).unwrap();
                let done = loop {
                    if let Ok(done) = thread.try_done() {
                        break done;
                    }
                    std::hint::spin_loop();
                };
                assert_eq!(done.item, item);
            }
            let slept = sleeps_of(&name) - before;
            if spin.is_zero() {
                assert!(slept >= 20, "a thread that does not spin slept only {slept} times");
            } else {
                assert!(slept <= 2, "the spinning thread slept {slept} times");
            }
        }
    }

    /// The streaming CPU executor, on a real region, gives bit for bit what the plain
    /// kernels give, across chunk boundaries and with buffers reused between jobs.
    #[test]
    fn streaming_over_the_arena_equals_the_plain_kernels() {
        use std::sync::Arc;
        use vgpu_ring::{Geometry, Region};
        let dir = tempfile::tempdir().unwrap();
        let geometry = Geometry { slot_count: 1, ring_entries: 8, arena_size: 1 << 20 };
        let region =
            Arc::new(Region::create(&dir.path().join("r"), 2 << 20, geometry, &[], false).unwrap());
        let slot = region.slot(0).unwrap();
        let mut cpu = CpuExecutor::default();
        for n in [1usize, 7, CHUNK - 1, CHUNK, 2 * CHUNK + 3] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 7.0).collect();
            let y: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 1000) as f32 / 3.0).collect();
            let input = [x.as_slice(), y.as_slice()].concat();
            slot.arena_write(0, input.as_bytes()).unwrap();
            let out = (8 * n) as u32;
            let run = |cpu: &mut CpuExecutor, op, args: [u32; 3], out_len: usize| {
                let job = Job {
                    op,
                    args,
                    input: (0, (8 * n) as u32),
                    output: (out, (4 * out_len) as u32),
                };
                cpu.execute(&job, &slot).unwrap();
                read_f32s(&slot, (out, (4 * out_len) as u32)).unwrap()
            };
            let n32 = n as u32;
            assert_eq!(run(&mut cpu, Opcode::VectorAdd, [n32, 0, 0], n), vector_add(&x, &y));
            let alpha = -1.75f32;
            assert_eq!(
                run(&mut cpu, Opcode::Saxpy, [n32, alpha.to_bits(), 0], n),
                saxpy(alpha, &x, &y)
            );
            assert_eq!(run(&mut cpu, Opcode::Dot, [n32, 0, 0], 1), [dot(&x, &y)]);
            let echo = Job {
                op: Opcode::Echo,
                args: [0; 3],
                input: (0, (8 * n) as u32),
                output: (out, (8 * n) as u32),
            };
            assert_eq!(cpu.execute(&echo, &slot), Ok((8 * n) as u32));
            assert_eq!(read_f32s(&slot, (out, (8 * n) as u32)).unwrap(), input);
        }
        let (m, k, n) = (37usize, 19usize, 23usize);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.5).collect();
        slot.arena_write(0, [a.as_slice(), b.as_slice()].concat().as_bytes()).unwrap();
        let in_len = (4 * (m * k + k * n)) as u32;
        let job = Job {
            op: Opcode::Matmul,
            args: [m as u32, k as u32, n as u32],
            input: (0, in_len),
            output: (in_len, (4 * m * n) as u32),
        };
        cpu.execute(&job, &slot).unwrap();
        assert_eq!(read_f32s(&slot, job.output).unwrap(), matmul(&a, &b, m, k, n));
    }

    #[test]
    fn kernels_match_hand_computed_values() {
        assert_eq!(vector_add(&[1.0, 2.0], &[10.0, 20.0]), [11.0, 22.0]);
        assert_eq!(saxpy(2.0, &[1.0, 2.0], &[0.5, 0.5]), [2.5, 4.5]);
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
        // [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50]
        assert_eq!(
            matmul(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 2, 2),
            [19.0, 22.0, 43.0, 50.0]
        );
        // 1x3 times 3x1.
        assert_eq!(matmul(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0], 1, 3, 1), [6.0]);
    }
}
