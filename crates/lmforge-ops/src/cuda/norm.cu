// LayerNorm and RMSNorm over the last dim on CUDA, forward and backward: one thread block per
// row, reductions in f32 in a fixed order (warp shuffles, then one warp over the warps' sums),
// so a run reproduces itself to the bit. Activations are f32 or bf16 (`_f32` / `_bf16`
// kernels); weights and biases are f32; every statistic is f32, as in the reference ops.
//
// The backward is two kernels: `norm_bwd` writes dx in the activations' dtype, a block per row
// (a residual's gradient added where one is given);
// `norm_column_terms` gives, per block of NORM_TERM_ROWS rows, the column sums Σ dy·x̂ (the
// weight's gradient) and Σ dy (the bias's) over its rows, each thread a column at a time down
// the rows in order; the blocks' partial sums are added afterwards (reduce.cu's column sums
// of each (blocks, C) f32 half). No atomics, so a run reproduces its bits.
#include "common.cuh"

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

// The backward's (mean, 1/std) of a row: LayerNorm's moments, or RMSNorm's (0, 1/rms).
template <typename T>
__device__ float2 row_stats(const T* x, int c, float eps, bool centred) {
    return centred ? moments(x, c, eps) : make_float2(0.0f, inv_rms(x, c, eps));
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

// dx of a row. With dx̂ = dy·w:
//   LayerNorm dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)); RMSNorm dx = r·(dx̂ − x̂·mean(dx̂·x̂)).
// With `dres` (else null) the row of a residual's gradient is added, in f32 before the one
// rounding: a pre-norm sublayer's x feeds both the norm and the residual (dx = dy + norm'ᵀ·dn),
// so its input gradient is one pass, not the norm's then an add's.
template <typename T>
__device__ void norm_bwd(const T* x, const float* w, const T* dy, const T* dres, T* dx, int c, float eps, bool centred) {
    const size_t row = (size_t)blockIdx.x * c;
    x += row;
    dy += row;
    dx += row;
    if (dres) dres += row;
    const float2 st = row_stats(x, c, eps, centred);
    const float mean = st.x, rstd = st.y;
    float sd = 0.0f, sdx = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float xh = (to_f(x[j]) - mean) * rstd;
        const float d = to_f(dy[j]) * w[j];
        sd += d;
        sdx += d * xh;
    }
    const float mean_d = centred ? block_sum(sd) / c : 0.0f;
    const float mean_dx = block_sum(sdx) / c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float xh = (to_f(x[j]) - mean) * rstd;
        const float r = dres ? to_f(dres[j]) : 0.0f;
        dx[j] = from_f<T>(rstd * (to_f(dy[j]) * w[j] - mean_d - xh * mean_dx) + r);
    }
}

#define NORM_TERM_ROWS 32

// Block b's partial column sums over rows [32b, 32b + 32): partials[b][j] = Σ dy·x̂ and
// partials[blocks + b][j] = Σ dy, the rows in order. The rows' statistics first (as norm_bwd
// computes them), then a thread per column walks down the block's rows.
template <typename T>
__device__ void norm_column_terms(const T* x, const T* dy, float* partials, int rows, int c, float eps, bool centred) {
    __shared__ float stats[2 * NORM_TERM_ROWS];
    const int r0 = blockIdx.x * NORM_TERM_ROWS, nr = min(NORM_TERM_ROWS, rows - r0);
    for (int r = 0; r < nr; ++r) {
        const float2 st = row_stats(x + (size_t)(r0 + r) * c, c, eps, centred);
        if (threadIdx.x == 0) {
            stats[2 * r] = st.x;
            stats[2 * r + 1] = st.y;
        }
    }
    __syncthreads();
    float* pw = partials + (size_t)blockIdx.x * c;
    float* pb = partials + ((size_t)gridDim.x + blockIdx.x) * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float sw = 0.0f, sb = 0.0f;
        for (int r = 0; r < nr; ++r) {
            const size_t i = (size_t)(r0 + r) * c + j;
            const float g = to_f(dy[i]);
            sw += g * ((to_f(x[i]) - stats[2 * r]) * stats[2 * r + 1]);
            sb += g;
        }
        pw[j] = sw;
        pb[j] = sb;
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
    extern "C" __global__ void norm_bwd_##SUFFIX(const T* x, const float* w, const T* dy, const T* dres, T* dx,     \
                                                 int c, float eps, int centred) {                                  \
        norm_bwd<T>(x, w, dy, dres, dx, c, eps, centred != 0);                                                     \
    }                                                                                                              \
    extern "C" __global__ void norm_column_terms_##SUFFIX(const T* x, const T* dy, float* partials, int rows, int c,\
                                                          float eps, int centred) {                                \
        norm_column_terms<T>(x, dy, partials, rows, c, eps, centred != 0);                                         \
    }

NORM_KERNELS(float, f32)
NORM_KERNELS(__nv_bfloat16, bf16)
