// LayerNorm and RMSNorm over the last dim on CUDA, forward and backward: one thread block per
// row, reductions in f32 in a fixed order (warp shuffles, then one warp over the warps' sums),
// so a run reproduces itself to the bit. Activations are f32 or bf16 (`_f32` / `_bf16`
// kernels); weights and biases are f32; every statistic is f32, as in the reference ops.
//
// The backward writes, per row, dx and dy·x̂ (both f32, into a (2, rows, C) buffer); the
// weight's gradient Σ_rows dy·x̂ and the bias's Σ_rows dy are column sums taken afterwards
// (candle's reduction), which keeps this kernel free of atomics.
#include "common.cuh"

// The sum of every thread's v, on every thread. blockDim.x is a multiple of 32, at most 1024.
__device__ float block_sum(float v) {
    __shared__ float warps[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // the previous call's readers are done with `warps`
    if (lane == 0) warps[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? warps[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// (mean, 1/sqrt(var + eps)) of a row, biased variance in two passes (as the reference).
template <typename T>
__device__ float2 moments(const T* x, int c, float eps) {
    float s = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) s += to_f(x[j]);
    const float mean = block_sum(s) / c;
    float d = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float v = to_f(x[j]) - mean;
        d += v * v;
    }
    return make_float2(mean, 1.0f / sqrtf(block_sum(d) / c + eps));
}

// 1/sqrt(mean(x²) + eps) of a row.
template <typename T>
__device__ float inv_rms(const T* x, int c, float eps) {
    float s = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float v = to_f(x[j]);
        s += v * v;
    }
    return 1.0f / sqrtf(block_sum(s) / c + eps);
}

template <typename T>
__device__ void layer_norm_fwd(const T* x, const float* w, const float* b, T* y, int c, float eps) {
    const size_t row = (size_t)blockIdx.x * c;
    x += row;
    y += row;
    const float2 m = moments(x, c, eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x) y[j] = from_f<T>((to_f(x[j]) - m.x) * m.y * w[j] + b[j]);
}

template <typename T>
__device__ void rms_norm_fwd(const T* x, const float* w, T* y, int c, float eps) {
    const size_t row = (size_t)blockIdx.x * c;
    x += row;
    y += row;
    const float r = inv_rms(x, c, eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x) y[j] = from_f<T>(to_f(x[j]) * r * w[j]);
}

// out[0] = dx, out[1] = dy·x̂ (rows × c each). With dx̂ = dy·w:
//   LayerNorm dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)); RMSNorm dx = r·(dx̂ − x̂·mean(dx̂·x̂)).
template <typename T>
__device__ void norm_bwd(const T* x, const float* w, const T* dy, float* out, int rows, int c, float eps, bool centred) {
    const size_t row = (size_t)blockIdx.x * c;
    x += row;
    dy += row;
    float* dx = out + row;
    float* dwx = out + (size_t)rows * c + row;
    float mean = 0.0f, rstd;
    if (centred) {
        const float2 m = moments(x, c, eps);
        mean = m.x;
        rstd = m.y;
    } else {
        rstd = inv_rms(x, c, eps);
    }
    float sd = 0.0f, sdx = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float xh = (to_f(x[j]) - mean) * rstd, g = to_f(dy[j]);
        const float d = g * w[j];
        sd += d;
        sdx += d * xh;
        dwx[j] = g * xh;
    }
    const float mean_d = centred ? block_sum(sd) / c : 0.0f;
    const float mean_dx = block_sum(sdx) / c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float xh = (to_f(x[j]) - mean) * rstd;
        dx[j] = rstd * (to_f(dy[j]) * w[j] - mean_d - xh * mean_dx);
    }
}

#define NORM_KERNELS(T, SUFFIX)                                                                                   \
    extern "C" __global__ void layer_norm_fwd_##SUFFIX(const T* x, const float* w, const float* b, T* y, int c,     \
                                                       float eps) {                                                \
        layer_norm_fwd<T>(x, w, b, y, c, eps);                                                                     \
    }                                                                                                              \
    extern "C" __global__ void rms_norm_fwd_##SUFFIX(const T* x, const float* w, T* y, int c, float eps) {          \
        rms_norm_fwd<T>(x, w, y, c, eps);                                                                          \
    }                                                                                                              \
    extern "C" __global__ void norm_bwd_##SUFFIX(const T* x, const float* w, const T* dy, float* out, int rows,     \
                                                 int c, float eps, int centred) {                                  \
        norm_bwd<T>(x, w, dy, out, rows, c, eps, centred != 0);                                                    \
    }

NORM_KERNELS(float, f32)
NORM_KERNELS(__nv_bfloat16, bf16)
