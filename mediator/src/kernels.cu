// The CUDA executor's kernels (mediator/src/cuda.rs). The mediator loads the PTX made
// from this file (kernels.ptx: scripts/kernels-ptx.py regenerates it after any change),
// or compiles this file with NVRTC where that PTX does not load (a GPU older than
// compute capability 7.5).
//
// SAXPY rounds the product before the sum (__fmul_rn, __fadd_rn), so that no fused
// multiply-add makes it differ from the CPU executor: VECTOR_ADD and SAXPY are
// bit-exact. DOT sums per block, then across blocks with atomics (the order differs from
// the CPU's; results agree to a relative 1e-4).
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
