// Cross-entropy over a chunk of logits on CUDA, llm.c's fused classifier in two kernels:
//   row_lse:            lse[r] = log Σ_j exp(z[r, j]), one block per row: each thread an online
//                       (max, sum) over its columns, then the pairs combined in a fixed order
//                       (warp shuffles, then one warp), so a run reproduces its bits;
//   softmax_minus_onehot: dz[r, j] = scale · (exp(z[r, j] − lse[r]) − [j = target[r]]),
//                       element-wise, in the logits' dtype.
// The loss itself is lse[r] − z[r, target[r]], a gather the caller takes. Logits are f32 or bf16,
// every statistic f32. A target outside the vocabulary makes its row's lse NaN (the trainer
// stops on a non-finite loss).
#include "common.cuh"

// (max, Σ exp(x − max)) pairs combined; an empty side (max −∞) contributes nothing.
__device__ __forceinline__ float2 combine(float2 a, float2 b) {
    if (a.x == -INFINITY) return b;
    if (b.x == -INFINITY) return a;
    const float m = fmaxf(a.x, b.x);
    return make_float2(m, a.y * expf(a.x - m) + b.y * expf(b.x - m));
}

__device__ __forceinline__ float2 shfl_pair(float2 v, int o) {
    return make_float2(__shfl_xor_sync(0xffffffffu, v.x, o), __shfl_xor_sync(0xffffffffu, v.y, o));
}

// The block's combined pair, on every thread. blockDim.x is a multiple of 32, at most 1024.
__device__ float2 block_combine(float2 v) {
    __shared__ float2 warps[32];
    for (int o = 16; o > 0; o >>= 1) v = combine(v, shfl_pair(v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warps[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? warps[lane] : make_float2(-INFINITY, 0.0f);
    for (int o = 16; o > 0; o >>= 1) v = combine(v, shfl_pair(v, o));
    return v;
}

template <typename T>
__device__ void row_lse(const T* z, const unsigned* targets, float* lse, int v) {
    const T* row = z + (size_t)blockIdx.x * v;
    // This thread's columns, online: one exp per logit.
    float m = -INFINITY, s = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        const float x = to_f(row[j]);
        if (x > m) {
            s = s * expf(m - x) + 1.0f;
            m = x;
        } else if (x != -INFINITY) {
            s += expf(x - m);
        }
    }
    const float2 all = block_combine(make_float2(m, s));
    if (threadIdx.x == 0) lse[blockIdx.x] = targets[blockIdx.x] < (unsigned)v ? all.x + logf(all.y) : NAN;
}

template <typename T>
__device__ void softmax_minus_onehot(const T* z, const unsigned* targets, const float* lse, T* dz, size_t n, int v,
                                     float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / v;
        const int j = (int)(i - r * v);
        const float p = expf(to_f(z[i]) - lse[r]);
        dz[i] = from_f<T>(scale * (p - (j == (int)targets[r] ? 1.0f : 0.0f)));
    }
}

#define LOSS_KERNELS(T, SUFFIX)                                                                                   \
    extern "C" __global__ void row_lse_##SUFFIX(const T* z, const unsigned* targets, float* lse, int v) {         \
        row_lse<T>(z, targets, lse, v);                                                                            \
    }                                                                                                              \
    extern "C" __global__ void softmax_minus_onehot_##SUFFIX(const T* z, const unsigned* targets, const float* lse, \
                                                             T* dz, size_t n, int v, float scale) {               \
        softmax_minus_onehot<T>(z, targets, lse, dz, n, v, scale);                                                 \
    }

LOSS_KERNELS(float, f32)
LOSS_KERNELS(__nv_bfloat16, bf16)
