//! `vgpu-cuda-bench OP N [RUNS]`: the time of one operation called directly on the CUDA
//! executor in this process (host-to-device copy, launch, device-to-host copy), for
//! comparison with the same request through the mediator (`scripts/gpu-check.sh`).
//! Prints `OP N median_ns p99_ns`. N is the vector length, or the matrix side for MATMUL.

use anyhow::{Context, Result, bail};
use std::time::Instant;
use vgpu_mediator::cuda::CudaExecutor;
use vgpu_ring::Opcode;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [op, n, rest @ ..] = args.as_slice() else {
        bail!("usage: vgpu-cuda-bench VECTOR_ADD|SAXPY|DOT|MATMUL N [RUNS]");
    };
    let op = Opcode::from_name(op).context("unknown operation")?;
    let n: u32 = n.parse().context("N")?;
    let runs: usize = rest.first().map_or(Ok(200), |r| r.parse()).context("RUNS")?;
    let (args, len) = match op {
        Opcode::VectorAdd | Opcode::Dot => ([n, 0, 0], 2 * n as usize),
        Opcode::Saxpy => ([n, 2.5f32.to_bits(), 0], 2 * n as usize),
        Opcode::Matmul => ([n, n, n], 2 * (n * n) as usize),
        _ => bail!("{op} does not run on the GPU"),
    };
    let input: Vec<f32> = (0..len).map(|i| (i % 64) as f32 / 8.0).collect();
    let mut gpu = CudaExecutor::new(0)?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs + runs / 10 {
        let start = Instant::now();
        gpu.compute(op, args, &input)?;
        // The first tenth warms up (module load, buffer growth).
        if i >= runs / 10 {
            samples.push(start.elapsed().as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let p99 = samples[(samples.len() - 1) * 99 / 100];
    println!("{op} {n} {} {p99}", samples[samples.len() / 2]);
    Ok(())
}
