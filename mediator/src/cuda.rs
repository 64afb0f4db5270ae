//! The CUDA executor (cargo feature `cuda`): VECTOR_ADD, SAXPY, DOT and MATMUL on a GPU
//! through [cudarc](https://docs.rs/cudarc), with the driver and NVRTC loaded at run
//! time. NOOP, ECHO and SLEEP stay on the host.
//!
//! One context per device (the driver's primary context), one stream per pool, kernels
//! compiled once by NVRTC when the pool starts, and device buffers reused across
//! requests (grown when a request needs more, never freed per request).
//!
//! This module and `vgpu-ring` are the only places with `unsafe` code: launching a
//! kernel is unsafe by nature (the argument list is not checked against the kernel's
//! signature), and so is asking whether the driver libraries are present.
#![allow(unsafe_code)]

use crate::executor::{CpuExecutor, Executor, Job, read_f32s, write_f32s};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;
use thiserror::Error;
use vgpu_ring::{ErrorCode, Opcode, Slot};

/// The kernels. SAXPY rounds the product before the sum (`__fmul_rn`, `__fadd_rn`), so
/// that no fused multiply-add makes it differ from the CPU executor: VECTOR_ADD and
/// SAXPY are bit-exact. DOT sums per block, then across blocks with atomics (the order
/// differs from the CPU's; results agree to a relative 1e-4).
const KERNELS: &str = r#"
extern "C" __global__ void vector_add(float* out, const float* a, const float* b, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __fadd_rn(a[i], b[i]);
}
extern "C" __global__ void saxpy(float* out, float alpha, const float* x, const float* y, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __fadd_rn(__fmul_rn(alpha, x[i]), y[i]);
}
extern "C" __global__ void dot(float* out, const float* x, const float* y, unsigned int n) {
    __shared__ float partial[256];
    float sum = 0.0f;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        sum += x[i] * y[i];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, partial[0]);
}
extern "C" __global__ void matmul(float* c, const float* a, const float* b,
                                  unsigned int m, unsigned int k, unsigned int n) {
    unsigned int row = blockIdx.y * blockDim.y + threadIdx.y;
    unsigned int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (row < m && col < n) {
        float sum = 0.0f;
        for (unsigned int p = 0; p < k; ++p) sum += a[row * k + p] * b[p * n + col];
        c[row * n + col] = sum;
    }
}
"#;

/// Why the CUDA executor cannot start.
#[derive(Debug, Error)]
pub enum CudaError {
    /// The driver library (`libcuda.so`) is not installed.
    #[error("the CUDA driver library (libcuda.so) was not found")]
    NoDriver,
    /// The NVRTC library is not installed.
    #[error("the NVRTC library (libnvrtc.so) was not found")]
    NoNvrtc,
    /// A driver call failed (no device with that ordinal, out of memory, ...).
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
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

/// Runs a pool's compute operations on one GPU.
pub struct CudaExecutor {
    /// The device's ordinal and name (for metrics).
    device: String,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// Reused device buffers: two inputs and one output.
    buffers: [Option<CudaSlice<f32>>; 3],
    host: CpuExecutor,
}

/// Whether the driver and NVRTC libraries can be loaded (checked before any cudarc
/// call, which would otherwise panic when a library is missing).
fn libraries_present() -> Result<(), CudaError> {
    // SAFETY: these only try to dlopen the libraries and report whether they loaded;
    // nothing from them is called here.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    // SAFETY: as above, for NVRTC.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    Ok(())
}

impl CudaExecutor {
    /// Open device `device` (its primary context), create this pool's stream and compile
    /// the kernels.
    ///
    /// # Errors
    ///
    /// [`CudaError`] if there is no usable GPU.
    pub fn new(device: u32) -> Result<Self, CudaError> {
        libraries_present()?;
        let ctx = CudaContext::new(device as usize)?;
        let device = match ctx.name() {
            Ok(name) => format!("{device}: {name}"),
            Err(_) => device.to_string(),
        };
        let stream = ctx.new_stream()?;
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS)?;
        let module = ctx.load_module(ptx)?;
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

    /// Copy `a` and `b` to the device, run `launch` on (out, a, b), copy `out_len`
    /// floats back. Buffers go back to the pool whatever happens.
    fn run(
        &mut self,
        a: &[f32],
        b: &[f32],
        out_len: usize,
        launch: impl FnOnce(
            &Self,
            &mut CudaSlice<f32>,
            &CudaSlice<f32>,
            &CudaSlice<f32>,
        ) -> Result<(), CudaError>,
    ) -> Result<Vec<f32>, CudaError> {
        let mut da = self.buffer(0, a.len())?;
        let mut db = self.buffer(1, b.len())?;
        let mut out = self.buffer(2, out_len)?;
        let result = (|| {
            self.stream.memcpy_htod(a, &mut da.slice_mut(0..a.len()))?;
            self.stream.memcpy_htod(b, &mut db.slice_mut(0..b.len()))?;
            self.stream.memset_zeros(&mut out.slice_mut(0..out_len))?;
            launch(self, &mut out, &da, &db)?;
            let mut host = vec![0f32; out_len];
            self.stream.memcpy_dtoh(&out.slice(0..out_len), &mut host)?;
            Ok(host)
        })();
        self.buffers = [Some(da), Some(db), Some(out)];
        result
    }

    /// Run a compute job on the GPU on input floats; returns the output floats.
    ///
    /// # Errors
    ///
    /// [`CudaError`] on a driver failure.
    pub fn compute(
        &mut self,
        op: Opcode,
        args: [u32; 3],
        input: &[f32],
    ) -> Result<Vec<f32>, CudaError> {
        let [a0, a1, a2] = args;
        match op {
            Opcode::VectorAdd | Opcode::Saxpy | Opcode::Dot => {
                let n = a0 as usize;
                let (x, y) = input.split_at(n);
                let out_len = if op == Opcode::Dot { 1 } else { n };
                let cfg = LaunchConfig::for_num_elems(a0);
                self.run(x, y, out_len, |me, out, x, y| {
                    let mut launch = match op {
                        Opcode::VectorAdd => me.stream.launch_builder(&me.kernels.vector_add),
                        Opcode::Saxpy => me.stream.launch_builder(&me.kernels.saxpy),
                        _ => me.stream.launch_builder(&me.kernels.dot),
                    };
                    let alpha = f32::from_bits(a1);
                    launch.arg(out);
                    if op == Opcode::Saxpy {
                        launch.arg(&alpha);
                    }
                    launch.arg(x).arg(y).arg(&a0);
                    let cfg = if op == Opcode::Dot {
                        LaunchConfig {
                            grid_dim: (a0.div_ceil(256).clamp(1, 1024), 1, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 0,
                        }
                    } else {
                        cfg
                    };
                    // SAFETY: the arguments match the kernel's parameter list (out, [alpha,]
                    // x, y, n); every buffer holds at least n floats (out: out_len), and
                    // the kernels bound their indices by n.
                    unsafe { launch.launch(cfg) }?;
                    Ok(())
                })
            }
            Opcode::Matmul => {
                let (m, k, n) = (a0, a1, a2);
                let (a, b) = input.split_at((m * k) as usize);
                let cfg = LaunchConfig {
                    grid_dim: (n.div_ceil(16), m.div_ceil(16), 1),
                    block_dim: (16, 16, 1),
                    shared_mem_bytes: 0,
                };
                self.run(a, b, (m * n) as usize, |me, c, a, b| {
                    let mut launch = me.stream.launch_builder(&me.kernels.matmul);
                    launch.arg(c).arg(a).arg(b).arg(&m).arg(&k).arg(&n);
                    // SAFETY: arguments match matmul(c, a, b, m, k, n); c holds m*n floats,
                    // a m*k and b k*n, and the kernel bounds row < m and col < n.
                    unsafe { launch.launch(cfg) }?;
                    Ok(())
                })
            }
            Opcode::Noop | Opcode::Echo | Opcode::Sleep => Ok(Vec::new()),
        }
    }
}

impl Executor for CudaExecutor {
    fn execute(&mut self, job: &Job, slot: &Slot) -> Result<u32, ErrorCode> {
        if !job.is_compute() {
            return self.host.execute(job, slot);
        }
        let input = read_f32s(slot, job.input)?;
        let output = self.compute(job.op, job.args, &input).map_err(|e| {
            tracing::error!("CUDA executor: {e}");
            ErrorCode::ExecutorFailed
        })?;
        write_f32s(slot, job.output.0, &output)
    }

    fn offloads_compute(&self) -> bool {
        true
    }

    fn describe(&self) -> (&'static str, String) {
        ("cuda", self.device.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{dot, matmul, saxpy, vector_add};

    /// Every operation equals the CPU's (exactly for VECTOR_ADD and SAXPY, to 1e-4
    /// relative for DOT and MATMUL). `scripts/test-all.sh` runs it where a GPU is
    /// usable and says it skipped elsewhere.
    #[test]
    #[ignore = "needs a CUDA GPU (scripts/test-all.sh runs it when one is usable)"]
    fn gpu_results_equal_the_cpu_executor() {
        let mut gpu = CudaExecutor::new(0).expect("a usable CUDA GPU");
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
}
