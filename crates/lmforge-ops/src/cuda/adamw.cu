// AdamW's update in place on CUDA, every tensor of a step in one launch (f32 state and
// parameters), each element in one pass of adamw.rs's arithmetic, in its order:
//   g <- g*grad_scale (gradient clipping's factor, 1 for none)
//   m <- beta1*m + (1-beta1)*g;  v <- beta2*v + (1-beta2)*g^2
//   p <- p*decay - step_size * m / (sqrt(v)/bc2_sqrt + eps)
#include "common.cuh"

// The tensors' table, ADAMW_WORDS 64-bit words a tensor (cuda/adamw.rs writes it):
//   0 p, 1 g, 2 m, 3 v (device addresses), 4 elements, 5 the tensor's first block,
//   6 (decay, step_size), 7 (bc2_sqrt, eps), 8 (beta1, beta2): f32 pairs, the first in the low
//   half; 9 (grad_scale, 0): the factor the gradient is read with.
#define ADAMW_WORDS 10
// A block updates ADAMW_THREADS * ADAMW_PER_THREAD consecutive elements of one tensor.
#define ADAMW_THREADS 256
#define ADAMW_PER_THREAD 8

__device__ __forceinline__ float adamw_low(unsigned long long w) { return __uint_as_float((unsigned)(w & 0xffffffffull)); }
__device__ __forceinline__ float adamw_high(unsigned long long w) { return __uint_as_float((unsigned)(w >> 32)); }

extern "C" __global__ void adamw_all(const unsigned long long* table, int tensors) {
    const unsigned long long block = blockIdx.x;
    const int lo = table_row(table, tensors, ADAMW_WORDS, 5, block);
    const unsigned long long* e = table + (size_t)lo * ADAMW_WORDS;
    float* p = (float*)e[0];
    const float* g = (const float*)e[1];
    float* m = (float*)e[2];
    float* v = (float*)e[3];
    const unsigned long long n = e[4];
    const float decay = adamw_low(e[6]), step_size = adamw_high(e[6]);
    const float bc2_sqrt = adamw_low(e[7]), eps = adamw_high(e[7]);
    const float beta1 = adamw_low(e[8]), beta2 = adamw_high(e[8]);
    const float grad_scale = adamw_low(e[9]);
    const float one_minus1 = 1.0f - beta1, one_minus2 = 1.0f - beta2;
    const unsigned long long start = (block - e[5]) * (ADAMW_THREADS * ADAMW_PER_THREAD);
    for (int k = 0; k < ADAMW_PER_THREAD; ++k) {
        const unsigned long long i = start + (unsigned long long)k * ADAMW_THREADS + threadIdx.x;
        if (i >= n) break;
        const float gi = g[i] * grad_scale;
        const float mi = m[i] * beta1 + gi * one_minus1;
        const float vi = v[i] * beta2 + gi * gi * one_minus2;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - mi / (sqrtf(vi) / bc2_sqrt + eps) * step_size;
    }
}
