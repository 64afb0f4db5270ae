//! The CUDA executor (cargo feature `cuda`): VECTOR_ADD, SAXPY, DOT and MATMUL on a GPU
//! through [cudarc](https://docs.rs/cudarc), with the driver loaded at run time. NOOP,
//! ECHO and SLEEP stay on the host.
//!
//! One context per device (the driver's primary context), one stream per pool, and
//! device buffers reused across requests (grown when a request needs more, never freed
//! per request). The kernels are PTX made ahead of time (`kernels.ptx`, from
//! `kernels.cu`), loaded when the pool starts, so that a host needs nothing but the
//! driver; on a GPU that PTX does not suit (compute capability below 7.5) they are
//! compiled from source by NVRTC, where it is installed.
//!
//! Operands go from the guest's arena to the GPU and results back without a host copy:
//! each attached VM's arena is registered with the driver (`cuMemHostRegister`, on the
//! pool's executor thread when the dispatcher attaches the VM), and the copies are
//! asynchronous DMA between the registered arena and the device buffers on the pool's
//! stream, waited for before the answer. A quarantined VM's arena is unregistered after
//! its last job, and every arena when the pool stops. An arena the driver refuses
//! (logged once) is staged: copied out of the arena once into reused host buffers, and
//! the result copied back.
//!
//! This module and `vgpu-ring` are the only places with `unsafe` code: launching a
//! kernel is unsafe by nature (the argument list is not checked against the kernel's
//! signature), and so is asking whether the driver libraries are present.
#![allow(unsafe_code)]

use crate::executor::{CpuExecutor, Executor, Job, write_f32s};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchConfig, PushKernelArg, sys,
};
use cudarc::nvrtc::Ptx;
use std::ffi::c_void;
use std::sync::Arc;
use thiserror::Error;
use vgpu_ring::{ErrorCode, Opcode, Slot};
use zerocopy::IntoBytes;

/// The kernels' CUDA source (what they compute and how exactly: see its comments).
const KERNELS: &str = include_str!("kernels.cu");

/// The PTX that `scripts/kernels-ptx.py` made from [`KERNELS`] (compute_75, PTX ISA 7.8):
/// loaded by the driver alone, so that a host needs no NVRTC. Its first line names the
/// hash of the source it was made from (checked by the unit tests).
const KERNELS_PTX: &str = include_str!("kernels.ptx");

/// Where a pool's kernels came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelSource {
    /// [`KERNELS_PTX`], made ahead of time.
    Shipped,
    /// [`KERNELS`] compiled by NVRTC at the start (a GPU the shipped PTX does not suit).
    Nvrtc,
}

/// Why the CUDA executor cannot start.
///
/// ```
/// use vgpu_mediator::cuda::{CudaError, CudaExecutor};
/// match CudaExecutor::new(0) {
///     Ok(_) => println!("GPU 0 is usable"),
///     // On a host without the NVIDIA driver, the pool refuses to start (or falls back).
///     Err(CudaError::NoDriver) => println!("no CUDA driver here"),
///     Err(e) => println!("GPU 0 unusable: {e}"),
/// }
/// ```
#[derive(Debug, Error)]
pub enum CudaError {
    /// The driver library (`libcuda.so`) is not installed.
    #[error("the CUDA driver library (libcuda.so) was not found")]
    NoDriver,
    /// The shipped PTX does not load on this GPU or driver, and NVRTC, which would
    /// compile the kernels for it, is not installed.
    #[error(
        "the kernels' PTX does not load here ({0}): it needs a GPU of compute capability 7.5 or newer and a driver for CUDA 11.8 or newer; otherwise install NVRTC (libnvrtc.so), which compiles the kernels for this GPU"
    )]
    ShippedPtx(cudarc::driver::DriverError),
    /// NVRTC was asked for and is not installed.
    #[error("the NVRTC library (libnvrtc.so) was not found")]
    NoNvrtc,
    /// A driver call failed (no device with that ordinal, out of memory, ...).
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// [`CudaExecutor::compute`] was given fewer floats than the operation reads.
    #[error("{have} floats of input, the operation reads {need}")]
    ShortInput {
        /// Floats given.
        have: usize,
        /// Floats the operation reads.
        need: usize,
    },
    /// The kernels did not compile.
    #[error("NVRTC: {0}")]
    Compile(#[from] cudarc::nvrtc::CompileError),
}

struct Kernels {
    vector_add: CudaFunction,
    saxpy: CudaFunction,
    dot: CudaFunction,
    matmul: CudaFunction,
}

/// A slot's arena registered with the driver (page-locked, so the GPU reaches it by
/// DMA) while the slot is attached.
struct Registered {
    /// Holds the mapping: registered memory must stay mapped until it is unregistered.
    slot: Slot,
    /// The page-aligned start handed to `cuMemHostRegister`.
    base: usize,
}

/// Runs a pool's compute operations on one GPU.
///
/// ```
/// use vgpu_mediator::executor::Executor;
/// match vgpu_mediator::cuda::CudaExecutor::new(0) {
///     Ok(gpu) => {
///         assert!(gpu.offloads_compute(), "every compute job goes to the GPU");
///         assert_eq!(gpu.describe().0, "cuda");
///     }
///     Err(e) => println!("no GPU here: {e}"),
/// }
/// ```
pub struct CudaExecutor {
    /// The device's ordinal and name (for metrics).
    device: String,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// Reused device buffers: two inputs and one output.
    buffers: [Option<CudaSlice<f32>>; 3],
    /// The attached slots whose arenas the driver accepted.
    registered: Vec<Registered>,
    /// Whether a failed registration was logged (only the first is).
    registration_failed: bool,
    /// Reused host buffers for slots that could not be registered (staging).
    staged_in: Vec<f32>,
    staged_out: Vec<f32>,
    host: CpuExecutor,
}

/// Host page size assumed for aligning registrations (also right inside huge pages).
const PAGE: usize = 4096;

/// Whether the driver library can be loaded (checked before any cudarc driver call,
/// which would otherwise panic when it is missing).
fn driver_present() -> bool {
    // SAFETY: this only tries to dlopen the library and reports whether it loaded;
    // nothing from it is called here.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether the NVRTC library can be loaded (checked before any cudarc NVRTC call,
/// which would otherwise panic when it is missing).
fn nvrtc_present() -> bool {
    // SAFETY: as in `driver_present`, for NVRTC.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Load the kernels into `ctx`: the shipped PTX, or (if it does not load and NVRTC is
/// there, or if `only` asks for it) the source compiled by NVRTC.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    only: Option<KernelSource>,
) -> Result<(Arc<CudaModule>, KernelSource), CudaError> {
    if only != Some(KernelSource::Nvrtc) {
        match ctx.load_module(Ptx::from_src(KERNELS_PTX)) {
            Ok(module) => return Ok((module, KernelSource::Shipped)),
            Err(e) if only.is_none() && nvrtc_present() => {
                tracing::info!(
                    "the kernels' PTX does not load on this GPU or driver ({e}): compiling them with NVRTC"
                );
            }
            Err(e) => return Err(CudaError::ShippedPtx(e)),
        }
    }
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let ptx = cudarc::nvrtc::compile_ptx(KERNELS)?;
    Ok((ctx.load_module(ptx)?, KernelSource::Nvrtc))
}

/// Whether `a` and `b` are the same slot of the same mapping.
fn same_slot(a: &Slot, b: &Slot) -> bool {
    Arc::ptr_eq(a.region(), b.region()) && a.index() == b.index()
}

/// Floats the operation reads and writes: (first operand, second operand, result).
fn shape(op: Opcode, [a0, a1, a2]: [u32; 3]) -> (usize, usize, usize) {
    let [a0, a1, a2] = [a0, a1, a2].map(|v| v as usize);
    match op {
        Opcode::VectorAdd | Opcode::Saxpy => (a0, a0, a0),
        Opcode::Dot => (a0, a0, 1),
        Opcode::Matmul => (a0 * a1, a1 * a2, a0 * a2),
        Opcode::Noop | Opcode::Echo | Opcode::Sleep => (0, 0, 0),
    }
}

impl CudaExecutor {
    /// Open device `device` (its primary context), create this pool's stream and compile
    /// the kernels.
    ///
    /// ```
    /// if let Ok(gpu) = vgpu_mediator::cuda::CudaExecutor::new(0) {
    ///     println!("{:?}", vgpu_mediator::executor::Executor::describe(&gpu));
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`CudaError`] if there is no usable GPU.
    pub fn new(device: u32) -> Result<Self, CudaError> {
        Self::with_kernels(device, None)
    }

    /// [`CudaExecutor::new`], with the kernels from `only` if given.
    fn with_kernels(device: u32, only: Option<KernelSource>) -> Result<Self, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(device as usize)?;
        let device = match ctx.name() {
            Ok(name) => format!("{device}: {name}"),
            Err(_) => device.to_string(),
        };
        let stream = ctx.new_stream()?;
        let (module, source) = load_kernels(&ctx, only)?;
        tracing::info!(
            "CUDA device {device}: kernels {}",
            match source {
                KernelSource::Shipped => "loaded from the shipped PTX",
                KernelSource::Nvrtc => "compiled by NVRTC",
            }
        );
        let kernels = Kernels {
            vector_add: module.load_function("vector_add")?,
            saxpy: module.load_function("saxpy")?,
            dot: module.load_function("dot")?,
            matmul: module.load_function("matmul")?,
        };
        Ok(Self {
            device,
            stream,
            kernels,
            buffers: [None, None, None],
            registered: Vec::new(),
            registration_failed: false,
            staged_in: Vec::new(),
            staged_out: Vec::new(),
            host: CpuExecutor::default(),
        })
    }

    /// Device buffer `index` with room for at least `len` floats.
    fn buffer(&mut self, index: usize, len: usize) -> Result<CudaSlice<f32>, CudaError> {
        match self.buffers[index].take() {
            Some(buf) if buf.len() >= len => Ok(buf),
            _ => Ok(self.stream.alloc_zeros::<f32>(len.max(1024))?),
        }
    }

    /// Run `op` on the GPU: copy its operands from `input` to the device, launch, copy
    /// the result to `output` and wait for it. Buffers go back to the pool whatever
    /// happens.
    ///
    /// # Safety
    ///
    /// `input` must be readable for the operands' floats and `output` writable for the
    /// result's (see [`shape`]) until this returns, the two disjoint. They may be shared
    /// memory another process changes meanwhile: only the result is spoiled then, as the
    /// host decides nothing on these bytes. Page-locked (registered) memory is copied by
    /// DMA; other memory is staged by the driver.
    unsafe fn run(
        &mut self,
        op: Opcode,
        args: [u32; 3],
        input: *const f32,
        output: *mut f32,
    ) -> Result<(), CudaError> {
        let (a_len, b_len, out_len) = shape(op, args);
        let mut da = self.buffer(0, a_len)?;
        let mut db = self.buffer(1, b_len)?;
        let mut out = self.buffer(2, out_len)?;
        let result = (|| {
            self.stream.context().bind_to_thread()?;
            let cu_stream = self.stream.cu_stream();
            {
                let (a_ptr, _a_done) = da.device_ptr_mut(&self.stream);
                let (b_ptr, _b_done) = db.device_ptr_mut(&self.stream);
                // SAFETY: the device buffers hold at least a_len and b_len floats; the
                // caller guarantees `input` holds a_len + b_len readable floats; the
                // stream is synchronized below, before the caller's memory may go.
                unsafe {
                    sys::cuMemcpyHtoDAsync_v2(a_ptr, input.cast(), 4 * a_len, cu_stream)
                        .result()?;
                    sys::cuMemcpyHtoDAsync_v2(b_ptr, input.add(a_len).cast(), 4 * b_len, cu_stream)
                        .result()?;
                }
            }
            self.stream.memset_zeros(&mut out.slice_mut(0..out_len))?;
            self.launch(op, args, &mut out, &da, &db)?;
            let (out_ptr, _out_done) = out.device_ptr(&self.stream);
            // SAFETY: `out` holds out_len floats, the caller guarantees `output` has room
            // for them, and the copy is complete when synchronize returns.
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(output.cast(), out_ptr, 4 * out_len, cu_stream)
                    .result()?;
            }
            self.stream.synchronize()?;
            Ok(())
        })();
        if result.is_err() {
            // No copy may still touch the caller's memory (or a reused buffer) once this
            // returns: wait for what was queued, as far as the driver still can.
            let _ = self.stream.synchronize();
        }
        self.buffers = [Some(da), Some(db), Some(out)];
        result
    }

    /// Launch `op`'s kernel on (out, a, b).
    fn launch(
        &self,
        op: Opcode,
        args: [u32; 3],
        out: &mut CudaSlice<f32>,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let [a0, a1, a2] = args;
        let (function, cfg) = match op {
            Opcode::VectorAdd => (&self.kernels.vector_add, LaunchConfig::for_num_elems(a0)),
            Opcode::Saxpy => (&self.kernels.saxpy, LaunchConfig::for_num_elems(a0)),
            Opcode::Dot => (
                &self.kernels.dot,
                LaunchConfig {
                    grid_dim: (a0.div_ceil(256).clamp(1, 1024), 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
            Opcode::Matmul => (
                &self.kernels.matmul,
                LaunchConfig {
                    grid_dim: (a2.div_ceil(16), a0.div_ceil(16), 1),
                    block_dim: (16, 16, 1),
                    shared_mem_bytes: 0,
                },
            ),
            Opcode::Noop | Opcode::Echo | Opcode::Sleep => return Ok(()),
        };
        let mut launch = self.stream.launch_builder(function);
        launch.arg(out);
        let alpha = f32::from_bits(a1);
        if op == Opcode::Saxpy {
            launch.arg(&alpha);
        }
        launch.arg(a).arg(b).arg(&a0);
        if op == Opcode::Matmul {
            launch.arg(&a1).arg(&a2);
        }
        // SAFETY: the arguments match the kernels' parameter lists (out, [alpha,] x, y,
        // n) and matmul(c, a, b, m, k, n); every buffer holds what `shape` says the
        // operation reads or writes, and the kernels bound their indices by n (or m, n).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Run a compute job on input floats; returns the output floats (the direct,
    /// in-process call that `vgpu-cuda-bench` times).
    ///
    /// ```
    /// use vgpu_ring::Opcode;
    /// if let Ok(mut gpu) = vgpu_mediator::cuda::CudaExecutor::new(0) {
    ///     // a ‖ b, as a request's input.
    ///     let sum = gpu.compute(Opcode::VectorAdd, [2, 0, 0], &[1.0, 2.0, 10.0, 20.0])?;
    ///     assert_eq!(sum, [11.0, 22.0]);
    ///     assert!(gpu.compute(Opcode::VectorAdd, [2, 0, 0], &[1.0]).is_err(), "short input");
    /// }
    /// # Ok::<(), vgpu_mediator::cuda::CudaError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CudaError::ShortInput`] if `input` is shorter than the operands;
    /// [`CudaError`] on a driver failure.
    pub fn compute(
        &mut self,
        op: Opcode,
        args: [u32; 3],
        input: &[f32],
    ) -> Result<Vec<f32>, CudaError> {
        let (a_len, b_len, out_len) = shape(op, args);
        if input.len() < a_len + b_len {
            return Err(CudaError::ShortInput { have: input.len(), need: a_len + b_len });
        }
        let mut output = vec![0f32; out_len];
        // SAFETY: both are private buffers of the lengths `shape` gives.
        unsafe { self.run(op, args, input.as_ptr(), output.as_mut_ptr()) }?;
        Ok(output)
    }

    /// Register `slot`'s arena with the driver; false (logged the first time) if the
    /// driver refuses.
    fn register(&mut self, slot: &Slot) -> bool {
        let len = slot.arena_size() as usize;
        let Ok(start) = slot.arena_ptr(0, len) else { return false };
        let base = start as usize & !(PAGE - 1);
        let end = (start as usize + len).next_multiple_of(PAGE);
        let result = self.stream.context().bind_to_thread().and_then(|()| {
            // SAFETY: base..end covers the slot's arena rounded out to whole pages of the
            // same mapping (the region is mapped in whole pages), which stays mapped while
            // registered: `Registered` holds the slot until `cuMemHostUnregister`.
            unsafe {
                sys::cuMemHostRegister_v2(
                    base as *mut c_void,
                    end - base,
                    sys::CU_MEMHOSTREGISTER_PORTABLE,
                )
            }
            .result()
        });
        match result {
            Ok(()) => {
                tracing::info!(
                    "CUDA device {}: slot {} arena registered ({} KiB): operands move by DMA",
                    self.device,
                    slot.index(),
                    (end - base) / 1024
                );
                self.registered.push(Registered { slot: slot.clone(), base });
                true
            }
            Err(e) => {
                if !self.registration_failed {
                    self.registration_failed = true;
                    tracing::warn!(
                        "CUDA device {}: cannot register a VM's arena ({e}); its operands are staged through host buffers (further failures are not logged)",
                        self.device
                    );
                }
                false
            }
        }
    }

    /// Unregister `registered`'s arena; the slot (and so the mapping) goes after.
    fn unregister(&self, registered: Registered) {
        let result = self.stream.context().bind_to_thread().and_then(|()| {
            // SAFETY: `base` was registered by `register` and is still mapped (the slot is
            // held until after this call).
            unsafe { sys::cuMemHostUnregister(registered.base as *mut c_void) }.result()
        });
        if let Err(e) = result {
            tracing::warn!("CUDA device {}: unregistering an arena: {e}", self.device);
        }
        drop(registered.slot);
    }

    /// Run `job` through host buffers: operands copied out of the arena once, the result
    /// copied back.
    fn run_staged(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode> {
        let (a_len, b_len, out_len) = shape(job.op, job.args);
        let mut input = std::mem::take(&mut self.staged_in);
        let mut output = std::mem::take(&mut self.staged_out);
        input.resize(a_len + b_len, 0.0);
        output.resize(out_len, 0.0);
        let result = slot
            .arena_read(u64::from(job.input.0), input.as_mut_bytes())
            .map_err(|_| ErrorCode::BadRange)
            .and_then(|()| {
                // SAFETY: private buffers of the lengths `shape` gives.
                unsafe { self.run(job.op, job.args, input.as_ptr(), output.as_mut_ptr()) }
                    .map_err(failed)
            })
            .and_then(|()| write_f32s(slot, job.output.0, &output));
        self.staged_in = input;
        self.staged_out = output;
        result
    }
}

/// A driver failure during a job: logged, answered as the executor's failure.
fn failed(e: CudaError) -> ErrorCode {
    tracing::error!("CUDA executor: {e}");
    ErrorCode::ExecutorFailed
}

impl Executor for CudaExecutor {
    fn execute(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode> {
        if !job.is_compute() {
            return self.host.execute(job, slot);
        }
        if !self.registered.iter().any(|r| same_slot(&r.slot, slot)) {
            return self.run_staged(job, slot);
        }
        let (a_len, b_len, out_len) = shape(job.op, job.args);
        // Checked pointers into the registered arena: validation put both ranges inside
        // it and apart; these checks only keep this function honest on its own.
        let input = slot.arena_ptr(u64::from(job.input.0), 4 * (a_len + b_len));
        let output = slot.arena_ptr(u64::from(job.output.0), 4 * out_len);
        let (Ok(input), Ok(output)) = (input, output) else { return Err(ErrorCode::BadRange) };
        // SAFETY: both ranges are inside the slot's arena, which is registered and mapped
        // while `self.registered` holds the slot; validation keeps them disjoint. The guest
        // may change them meanwhile, which spoils only its own answer: no byte of them
        // steers the host. The CPU makes no reference to them; the DMA engine reads and
        // writes them.
        unsafe { self.run(job.op, job.args, input.cast::<f32>(), output.cast::<f32>()) }
            .map_err(failed)?;
        u32::try_from(4 * out_len).map_err(|_| ErrorCode::OutputTooSmall)
    }

    fn offloads_compute(&self) -> bool {
        true
    }

    fn describe(&self) -> (&'static str, String) {
        ("cuda", self.device.clone())
    }

    fn attach(&mut self, slot: &Slot) {
        if !self.registered.iter().any(|r| same_slot(&r.slot, slot)) {
            self.register(slot);
        }
    }

    fn detach(&mut self, slot: &Slot) {
        if let Some(at) = self.registered.iter().position(|r| same_slot(&r.slot, slot)) {
            let registered = self.registered.swap_remove(at);
            self.unregister(registered);
        }
    }
}

impl Drop for CudaExecutor {
    fn drop(&mut self) {
        for registered in std::mem::take(&mut self.registered) {
            self.unregister(registered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{dot, matmul, saxpy, vector_add};

    /// FNV-1a, 64 bits (as `scripts/kernels-ptx.py` computes it).
    fn fnv1a64(bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }

    /// The shipped PTX was made from the kernels' source as it is (regenerate it with
    /// `scripts/kernels-ptx.py` after changing `kernels.cu`), and defines every kernel
    /// the executor launches.
    #[test]
    fn the_shipped_ptx_is_made_from_kernels_cu() {
        let first = KERNELS_PTX.lines().next().unwrap_or_default();
        let want = format!("// kernels.cu fnv1a64 {:016x}:", fnv1a64(KERNELS.as_bytes()));
        assert!(
            first.starts_with(&want),
            "kernels.ptx is stale ({first:?}, want {want:?}): run scripts/kernels-ptx.py"
        );
        for kernel in ["vector_add", "saxpy", "dot", "matmul"] {
            assert!(KERNELS_PTX.contains(&format!(".visible .entry {kernel}(")), "{kernel}");
        }
    }

    /// Every operation equals the CPU's (exactly for VECTOR_ADD and SAXPY, to 1e-4
    /// relative for DOT and MATMUL), with the shipped PTX and, where NVRTC is
    /// installed, with the kernels it compiles. `scripts/test-all.sh` runs it where a GPU
    /// is usable and says it skipped elsewhere.
    #[test]
    #[ignore = "needs a CUDA GPU (scripts/test-all.sh runs it when one is usable)"]
    fn gpu_results_equal_the_cpu_executor() {
        let mut sources = vec![KernelSource::Shipped];
        if nvrtc_present() {
            sources.push(KernelSource::Nvrtc);
        } else {
            eprintln!("NVRTC is not installed: only the shipped PTX is checked");
        }
        for source in sources {
            let mut gpu = CudaExecutor::with_kernels(0, Some(source)).expect("a usable CUDA GPU");
            results_equal_the_cpu_executor(&mut gpu);
        }
    }

    fn results_equal_the_cpu_executor(gpu: &mut CudaExecutor) {
        for n in [1usize, 1000, 1 << 16] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 7.0).collect();
            let y: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 1000) as f32 / 3.0).collect();
            let input = [x.as_slice(), y.as_slice()].concat();
            let n32 = n as u32;
            assert_eq!(
                gpu.compute(Opcode::VectorAdd, [n32, 0, 0], &input).unwrap(),
                vector_add(&x, &y)
            );
            let alpha = -1.75f32;
            assert_eq!(
                gpu.compute(Opcode::Saxpy, [n32, alpha.to_bits(), 0], &input).unwrap(),
                saxpy(alpha, &x, &y)
            );
            let d = gpu.compute(Opcode::Dot, [n32, 0, 0], &input).unwrap()[0];
            let want = dot(&x, &y);
            assert!((d - want).abs() <= 1e-4 * want.abs().max(1.0), "dot {d} vs {want}");
        }
        let (m, k, n) = (37u32, 19u32, 23u32);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.5).collect();
        let got =
            gpu.compute(Opcode::Matmul, [m, k, n], &[a.as_slice(), b.as_slice()].concat()).unwrap();
        let want = matmul(&a, &b, m as usize, k as usize, n as usize);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "matmul {g} vs {w}");
        }
    }

    /// Jobs on a slot's arena give the CPU executor's results bit for bit, registered
    /// (DMA straight from and to the arena) and, after a detach, staged; attach and
    /// detach register and unregister exactly once.
    #[test]
    #[ignore = "needs a CUDA GPU (scripts/test-all.sh runs it when one is usable)"]
    fn registered_and_staged_arenas_give_the_cpu_results() {
        use crate::executor::read_f32s;
        use vgpu_ring::{Geometry, Region};
        // On tmpfs, as regions are: the driver may refuse to pin pages of a file on disk.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let geometry = Geometry { slot_count: 1, ring_entries: 8, arena_size: 4 << 20 };
        let region =
            Arc::new(Region::create(&dir.path().join("r"), 8 << 20, geometry, &[], false).unwrap());
        let slot = region.slot(0).unwrap();
        let mut gpu = CudaExecutor::new(0).expect("a usable CUDA GPU");
        let mut cpu = CpuExecutor::default();
        gpu.attach(&slot);
        gpu.attach(&slot);
        assert_eq!(gpu.registered.len(), 1, "the arena is registered once");
        for registered in [true, false] {
            for n in [1u32, 1000, 100_000] {
                let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 7.0).collect();
                let y: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 1000) as f32 / 3.0).collect();
                slot.arena_write(0, [x.as_slice(), y.as_slice()].concat().as_bytes()).unwrap();
                let out = 8 * n;
                for (op, args) in
                    [(Opcode::VectorAdd, [n, 0, 0]), (Opcode::Saxpy, [n, (-1.75f32).to_bits(), 0])]
                {
                    let job = Job { op, args, input: (0, 8 * n), output: (out, 4 * n) };
                    assert_eq!(gpu.execute(&job, &slot), Ok(4 * n));
                    let got = read_f32s(&slot, job.output).unwrap();
                    cpu.execute(&job, &slot).unwrap();
                    assert_eq!(got, read_f32s(&slot, job.output).unwrap(), "{op} {n} {registered}");
                }
            }
            gpu.detach(&slot);
            assert!(gpu.registered.is_empty(), "detached");
        }
    }
}
