// AdamW's update in place on CUDA, the three passes of adamw.rs (f32 state and parameters):
//   adam_moment: m <- beta*m + (1-beta)*g, or with `square` v <- beta*v + (1-beta)*g^2
//   adam_apply:  p <- p*decay - step_size * m / (sqrt(v)/bc2_sqrt + eps)
#include "common.cuh"

// Element-wise, grid-stride loops; each element's arithmetic is the CPU kernel's, in its order.

extern "C" __global__ void adam_moment(float* m, const float* g, size_t n, float beta, int square) {
    const float one_minus = 1.0f - beta;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = square ? g[i] * g[i] : g[i];
        m[i] = m[i] * beta + x * one_minus;
    }
}

extern "C" __global__ void adam_apply(float* p, const float* m, const float* v, size_t n, float decay,
                                      float step_size, float bc2_sqrt, float eps) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        p[i] = p[i] * decay - m[i] / (sqrtf(v[i]) / bc2_sqrt + eps) * step_size;
    }
}
