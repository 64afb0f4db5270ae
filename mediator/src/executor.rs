//! Executors run validated jobs on a slot's arena data. All of them sit behind
//! [`Executor`]; the CPU executor is always built.

use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vgpu_ring::{ErrorCode, Opcode, PoolId, Slot};
use zerocopy::IntoBytes;

/// A validated request: the operation and arena ranges that were checked against the
/// slot's arena.
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
    #[must_use]
    pub fn is_compute(&self) -> bool {
        matches!(self.op, Opcode::VectorAdd | Opcode::Saxpy | Opcode::Dot | Opcode::Matmul)
    }

    /// Whether the job is long enough to run off the dispatcher thread.
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

/// Copy a range of `slot`'s arena out, once.
///
/// # Errors
///
/// [`ErrorCode::BadRange`] if the range is outside the arena.
pub fn read_bytes(slot: &Slot, (offset, len): (u32, u32)) -> Result<Vec<u8>, ErrorCode> {
    let mut bytes = vec![0; len as usize];
    slot.arena_read(u64::from(offset), &mut bytes).map_err(|_| ErrorCode::BadRange)?;
    Ok(bytes)
}

/// Read a range of `slot`'s arena as little-endian f32s (`len / 4` of them), copied once.
///
/// # Errors
///
/// As [`read_bytes`].
pub fn read_f32s(slot: &Slot, (offset, len): (u32, u32)) -> Result<Vec<f32>, ErrorCode> {
    let mut values = vec![0f32; len as usize / 4];
    slot.arena_read(u64::from(offset), values.as_mut_bytes()).map_err(|_| ErrorCode::BadRange)?;
    Ok(values)
}

/// Write `bytes` into `slot`'s arena at `offset`; returns the bytes written.
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
/// # Errors
///
/// As [`write_bytes`].
pub fn write_f32s(slot: &Slot, offset: u32, values: &[f32]) -> Result<u32, ErrorCode> {
    write_bytes(slot, offset, values.as_bytes())
}

/// Something that runs jobs.
pub trait Executor: Send {
    /// Run `job` on `slot`'s arena; returns the number of output bytes written.
    ///
    /// # Errors
    ///
    /// The [`ErrorCode`] to answer with.
    fn execute(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode>;

    /// Whether every compute job (see [`Job::is_compute`]) should go to this executor,
    /// however small; otherwise small jobs run inline on the dispatcher, on the CPU.
    fn offloads_compute(&self) -> bool {
        false
    }
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

/// A pool's executor thread: runs one long job at a time with the pool's [`Executor`],
/// on the slot it is handed, and reports each one back over a channel.
pub(crate) struct ExecutorThread<T> {
    jobs: Option<Sender<(T, Job, Slot)>>,
    done: Receiver<Executed<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> ExecutorThread<T> {
    /// Start the thread (`pool-<name>-exec`) running `executor`.
    pub(crate) fn spawn(pool: PoolId, mut executor: Box<dyn Executor>) -> std::io::Result<Self> {
        let (jobs, job_rx) = channel::<(T, Job, Slot)>();
        let (done_tx, done) = channel();
        let thread =
            std::thread::Builder::new().name(format!("pool-{pool}-exec")).spawn(move || {
                for (item, job, slot) in job_rx {
                    let started = Instant::now();
                    let result = executor.execute(&job, &slot);
                    let exec = started.elapsed();
                    // The slot (and so the mapping) is let go before the answer.
                    drop(slot);
                    if done_tx.send(Executed { item, result, started, exec }).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { jobs: Some(jobs), done, thread: Some(thread) })
    }

    /// Hand `job` on `slot` to the thread; `item` comes back with its result. Gives
    /// `item` back if the thread has died.
    pub(crate) fn submit(&self, item: T, job: Job, slot: Slot) -> Result<(), T> {
        match &self.jobs {
            Some(tx) => tx.send((item, job, slot)).map_err(|e| e.0.0),
            None => Err(item),
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
#[derive(Debug, Default)]
pub struct CpuExecutor;

impl Executor for CpuExecutor {
    fn execute(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode> {
        match job.op {
            Opcode::Noop => Ok(0),
            Opcode::Sleep => {
                std::thread::sleep(Duration::from_micros(u64::from(job.args[0])));
                Ok(0)
            }
            Opcode::Echo => {
                let bytes = read_bytes(slot, job.input)?;
                write_bytes(slot, job.output.0, &bytes)
            }
            Opcode::VectorAdd => {
                let data = read_f32s(slot, job.input)?;
                let (a, b) = data.split_at(data.len() / 2);
                write_f32s(slot, job.output.0, &vector_add(a, b))
            }
            Opcode::Saxpy => {
                let data = read_f32s(slot, job.input)?;
                let (x, y) = data.split_at(data.len() / 2);
                write_f32s(slot, job.output.0, &saxpy(f32::from_bits(job.args[1]), x, y))
            }
            Opcode::Dot => {
                let data = read_f32s(slot, job.input)?;
                let (x, y) = data.split_at(data.len() / 2);
                write_f32s(slot, job.output.0, &[dot(x, y)])
            }
            Opcode::Matmul => {
                let [m, k, n] = job.args.map(|v| v as usize);
                let data = read_f32s(slot, job.input)?;
                let (a, b) = data.split_at(m * k);
                write_f32s(slot, job.output.0, &matmul(a, b, m, k, n))
            }
        }
    }
}

/// `a + b`, element-wise.
#[must_use]
pub fn vector_add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// `alpha * x + y`, element-wise.
#[must_use]
pub fn saxpy(alpha: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(x, y)| alpha * x + y).collect()
}

/// `Σ x[i] * y[i]`, summed in order.
#[must_use]
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(x, y)| x * y).sum()
}

/// `A (m×k) × B (k×n)`, row-major; each element summed in order of k.
#[must_use]
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += aip * b[p * n + j];
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

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
