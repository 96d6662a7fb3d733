// Scaled-dot-product attention on CUDA, forward and backward, FlashAttention-2's way: a block
// holds a tile of query (or key) rows in shared memory and streams the other side through it
// in tiles, with an online softmax in the forward, so no T×T matrix ever exists in global
// memory; the backward recomputes the probabilities from Q, K and the forward's log-sum-exp.
// Causal (decoders) or bidirectional over right-padded rows (encoders: batch row b sees its
// first key_lens[b] keys); grouped-query heads read their KV head in place (no repeat).
//
// Threads: 256 a block, four per row (ROWS = 64 rows a block). For a score tile, each of a
// row's four threads takes every fourth key, so a row's max and sum need two shuffles; for a
// product with V (or K, Q, dY), each takes every fourth of the D columns, accumulated in
// registers (D ≤ DMAX, the kernel's compile-time bound: 64, 128 or 256).
//
// The backward runs two kernels, so neither needs atomics (a run reproduces its bits):
//   attn_bwd_dq:   a block per query tile, over the key tiles: dQ = s·dS·K
//   attn_bwd_dkdv: a block per key tile and KV head, over the H/K query heads that share it
//                  and their query tiles: dV = Pᵀ·dY, dK = s·dSᵀ·Q
// with P = exp(s·QKᵀ − lse), dS = P ⊙ (dY·Vᵀ − delta), delta_i = dY_i · Y_i (attn_delta, f32).
//
// Operands are (B, T, W) rows whose last dim is contiguous: q, k, v (and dq, dk, dv) point at
// their head-0 column and carry their batch and row strides, so GPT-2's packed qkv is read and
// its gradient written in place. y is dense (B, T, H·D); lse and delta are (B, H, T) f32.
// Scores, softmax statistics and every accumulator are f32; operands are f32 or bf16.
#include "common.cuh"

#define THREADS 256
#define ROWS 64      // query (or key) rows a block owns: four threads each
#define KEYS 32      // keys a tile streams through the forward and attn_bwd_dq
#define QUERIES 32   // queries a tile streams through attn_bwd_dkdv

template <typename T>
__device__ __forceinline__ const T* row(const T* p, long long sb, long long st, int b, int i) {
    return p + b * sb + i * st;
}

// Rows [i0, i0 + n) of head `hd` (width d) into a (n, d + 1)-strided f32 tile; rows at or past
// `limit` read as zeros.
template <typename T>
__device__ void load_tile(float* tile, int n, const T* p, long long sb, long long st, int b, int i0, int hd, int d,
                          int limit) {
    for (int e = threadIdx.x; e < n * d; e += blockDim.x) {
        const int r = e / d, c = e - r * d, i = i0 + r;
        tile[r * (d + 1) + c] = i < limit ? to_f(row(p, sb, st, b, i)[hd * d + c]) : 0.0f;
    }
}

// xs[u] = x · xrows[u·4 + quad] and ys[u] = y · yrows[u·4 + quad] for u < N (rows ld apart),
// a column at a time so that x's and y's values are read once for all N rows; summed in
// column order.
template <int N>
__device__ __forceinline__ void paired_dots(const float* x, const float* y, const float* xrows, const float* yrows,
                                            int ld, int quad, int d, float* xs, float* ys) {
#pragma unroll
    for (int u = 0; u < N; ++u) xs[u] = ys[u] = 0.0f;
    for (int c = 0; c < d; ++c) {
        const float xv = x[c], yv = y[c];
#pragma unroll
        for (int u = 0; u < N; ++u) {
            xs[u] += xv * xrows[(u * 4 + quad) * ld + c];
            ys[u] += yv * yrows[(u * 4 + quad) * ld + c];
        }
    }
}

// The sum (or max) over a row's four threads (neighbouring lanes of one warp).
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// One past the last key query i of batch row b sees; keys at or past t never exist.
__device__ __forceinline__ int key_end(const int* key_lens, int causal, int b, int i) {
    return causal ? i + 1 : key_lens[b];
}

template <typename T, int DMAX>
__device__ void attn_fwd(const T* q, long long q_sb, long long q_st, const T* k, long long k_sb, long long k_st,
                         const T* v, long long v_sb, long long v_st, T* y, float* lse, const int* key_lens,
                         int causal, int t, int h, int kh, int d, float scale) {
    DYNAMIC_SHARED(float, smem);
    const int ld = d + 1;
    float* qs = smem;              // ROWS × ld
    float* kv = qs + ROWS * ld;    // KEYS × ld: K, then V, of the current tile
    float* ps = kv + KEYS * ld;    // ROWS × (KEYS + 1)
    const int b = blockIdx.z, hi = blockIdx.y, g = hi / (h / kh), i0 = blockIdx.x * ROWS;
    const int r = threadIdx.x >> 2, quad = threadIdx.x & 3, i = i0 + r;
    // Keys the block reads, and the keys row i sees (none past the block's).
    const int end = causal ? min(t, i0 + ROWS) : key_lens[b];
    const int row_end = min(end, key_end(key_lens, causal, b, i));
    load_tile(qs, ROWS, q, q_sb, q_st, b, i0, hi, d, t);
    float m = -INFINITY, l = 0.0f, acc[DMAX / 4];
#pragma unroll
    for (int u = 0; u < DMAX / 4; ++u) acc[u] = 0.0f;
    for (int j0 = 0; j0 < end; j0 += KEYS) {
        __syncthreads();  // the last tile's readers are done with kv
        load_tile(kv, KEYS, k, k_sb, k_st, b, j0, g, d, end);
        __syncthreads();
        float s[KEYS / 4], tile_max = -INFINITY;
        // The row's dot products with its eight keys, a column at a time: each q value read
        // once for all eight (summed in column order).
#pragma unroll
        for (int u = 0; u < KEYS / 4; ++u) s[u] = 0.0f;
        for (int c = 0; c < d; ++c) {
            const float qv = qs[r * ld + c];
#pragma unroll
            for (int u = 0; u < KEYS / 4; ++u) s[u] += qv * kv[(u * 4 + quad) * ld + c];
        }
#pragma unroll
        for (int u = 0; u < KEYS / 4; ++u) {
            s[u] = j0 + u * 4 + quad < row_end ? scale * s[u] : -INFINITY;
            tile_max = fmaxf(tile_max, s[u]);
        }
        const float m_new = fmaxf(m, quad_max(tile_max));
        // A row that has seen no key yet keeps l = 0 and its accumulators at zero.
        const float shift = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = expf(m - shift);
        float sum = 0.0f;
#pragma unroll
        for (int u = 0; u < KEYS / 4; ++u) {
            const float p = expf(s[u] - shift);
            ps[r * (KEYS + 1) + u * 4 + quad] = p;
            sum += p;
        }
        l = l * alpha + quad_sum(sum);
        m = m_new;
#pragma unroll
        for (int u = 0; u < DMAX / 4; ++u) acc[u] *= alpha;
        __syncthreads();  // K read, P written
        load_tile(kv, KEYS, v, v_sb, v_st, b, j0, g, d, end);
        __syncthreads();
        const int n = min(KEYS, end - j0);
        for (int jj = 0; jj < n; ++jj) {
            const float p = ps[r * (KEYS + 1) + jj];
            const float* vr = kv + jj * ld;
#pragma unroll
            for (int u = 0; u < DMAX / 4; ++u) {
                const int c = u * 4 + quad;
                if (c < d) acc[u] += p * vr[c];
            }
        }
    }
    if (i >= t) return;
    const float inv = 1.0f / l;
    T* yr = y + ((long long)(b * t + i) * h + hi) * d;
#pragma unroll
    for (int u = 0; u < DMAX / 4; ++u) {
        const int c = u * 4 + quad;
        if (c < d) yr[c] = from_f<T>(acc[u] * inv);
    }
    if (quad == 0) lse[((long long)b * h + hi) * t + i] = m + logf(l);
}

template <typename T, int DMAX>
__device__ void attn_bwd_dq(const T* q, long long q_sb, long long q_st, const T* k, long long k_sb, long long k_st,
                            const T* v, long long v_sb, long long v_st, const T* dy, const float* lse,
                            const float* delta, T* dq, long long dq_sb, long long dq_st, const int* key_lens,
                            int causal, int t, int h, int kh, int d, float scale) {
    DYNAMIC_SHARED(float, smem);
    const int ld = d + 1;
    float* qs = smem;               // ROWS × ld
    float* dys = qs + ROWS * ld;    // ROWS × ld
    float* ks = dys + ROWS * ld;    // KEYS × ld
    float* vs = ks + KEYS * ld;     // KEYS × ld
    float* dss = vs + KEYS * ld;    // ROWS × (KEYS + 1)
    const int b = blockIdx.z, hi = blockIdx.y, g = hi / (h / kh), i0 = blockIdx.x * ROWS;
    const int r = threadIdx.x >> 2, quad = threadIdx.x & 3, i = i0 + r;
    const int end = causal ? min(t, i0 + ROWS) : key_lens[b];
    const int row_end = min(end, key_end(key_lens, causal, b, i));
    // dy is dense (B, T, H·D).
    const long long dy_st = (long long)h * d, dy_sb = dy_st * t;
    load_tile(qs, ROWS, q, q_sb, q_st, b, i0, hi, d, t);
    load_tile(dys, ROWS, dy, dy_sb, dy_st, b, i0, hi, d, t);
    const long long stat = ((long long)b * h + hi) * t + i;
    const float row_lse = i < t ? lse[stat] : 0.0f, row_delta = i < t ? delta[stat] : 0.0f;
    float acc[DMAX / 4];
#pragma unroll
    for (int u = 0; u < DMAX / 4; ++u) acc[u] = 0.0f;
    for (int j0 = 0; j0 < end; j0 += KEYS) {
        __syncthreads();
        load_tile(ks, KEYS, k, k_sb, k_st, b, j0, g, d, end);
        load_tile(vs, KEYS, v, v_sb, v_st, b, j0, g, d, end);
        __syncthreads();
        float qk[KEYS / 4], dp[KEYS / 4];
        paired_dots<KEYS / 4>(qs + r * ld, dys + r * ld, ks, vs, ld, quad, d, qk, dp);
#pragma unroll
        for (int u = 0; u < KEYS / 4; ++u) {
            const int jj = u * 4 + quad;
            float ds = 0.0f;
            if (j0 + jj < row_end) ds = expf(scale * qk[u] - row_lse) * (dp[u] - row_delta);
            dss[r * (KEYS + 1) + jj] = ds;
        }
        __syncthreads();
        const int n = min(KEYS, end - j0);
        for (int jj = 0; jj < n; ++jj) {
            const float ds = dss[r * (KEYS + 1) + jj];
            const float* kr = ks + jj * ld;
#pragma unroll
            for (int u = 0; u < DMAX / 4; ++u) {
                const int c = u * 4 + quad;
                if (c < d) acc[u] += ds * kr[c];
            }
        }
    }
    if (i >= t) return;
    T* out = dq + b * dq_sb + i * dq_st + (long long)hi * d;
#pragma unroll
    for (int u = 0; u < DMAX / 4; ++u) {
        const int c = u * 4 + quad;
        if (c < d) out[c] = from_f<T>(scale * acc[u]);
    }
}

template <typename T, int DMAX>
__device__ void attn_bwd_dkdv(const T* q, long long q_sb, long long q_st, const T* k, long long k_sb, long long k_st,
                              const T* v, long long v_sb, long long v_st, const T* dy, const float* lse,
                              const float* delta, T* dk, T* dv, long long g_sb, long long g_st,
                              const int* key_lens, int causal, int t, int h, int kh, int d, float scale) {
    DYNAMIC_SHARED(float, smem);
    const int ld = d + 1;
    float* ks = smem;                        // ROWS × ld: this block's keys
    float* vs = ks + ROWS * ld;              // ROWS × ld
    float* qs = vs + ROWS * ld;              // QUERIES × ld
    float* dys = qs + QUERIES * ld;          // QUERIES × ld
    float* ps = dys + QUERIES * ld;          // ROWS × (QUERIES + 1)
    float* dss = ps + ROWS * (QUERIES + 1);  // ROWS × (QUERIES + 1)
    float* stats = dss + ROWS * (QUERIES + 1);  // lse, then delta, of the query tile
    const int b = blockIdx.z, g = blockIdx.y, j0 = blockIdx.x * ROWS, rep = h / kh;
    const int r = threadIdx.x >> 2, quad = threadIdx.x & 3, j = j0 + r;
    // Keys at or past `limit` have no gradient (padding, or past T).
    const int limit = causal ? t : key_lens[b];
    const long long dy_st = (long long)h * d, dy_sb = dy_st * t;
    load_tile(ks, ROWS, k, k_sb, k_st, b, j0, g, d, limit);
    load_tile(vs, ROWS, v, v_sb, v_st, b, j0, g, d, limit);
    float dk_acc[DMAX / 4], dv_acc[DMAX / 4];
#pragma unroll
    for (int u = 0; u < DMAX / 4; ++u) dk_acc[u] = dv_acc[u] = 0.0f;
    // Causal: queries before this block's first key see none of its keys.
    const int first = causal ? j0 / QUERIES * QUERIES : 0;
    for (int hi = g * rep; hi < (g + 1) * rep; ++hi) {
        for (int i0 = first; i0 < t && j0 < limit; i0 += QUERIES) {
            __syncthreads();
            load_tile(qs, QUERIES, q, q_sb, q_st, b, i0, hi, d, t);
            load_tile(dys, QUERIES, dy, dy_sb, dy_st, b, i0, hi, d, t);
            for (int e = threadIdx.x; e < QUERIES; e += blockDim.x) {
                const long long stat = ((long long)b * h + hi) * t + i0 + e;
                stats[e] = i0 + e < t ? lse[stat] : 0.0f;
                stats[QUERIES + e] = i0 + e < t ? delta[stat] : 0.0f;
            }
            __syncthreads();
            float qk[QUERIES / 4], dp[QUERIES / 4];
            paired_dots<QUERIES / 4>(ks + r * ld, vs + r * ld, qs, dys, ld, quad, d, qk, dp);
#pragma unroll
            for (int u = 0; u < QUERIES / 4; ++u) {
                const int ii = u * 4 + quad, i = i0 + ii;
                float p = 0.0f, ds = 0.0f;
                if (i < t && j < min(limit, key_end(key_lens, causal, b, i))) {
                    p = expf(scale * qk[u] - stats[ii]);
                    ds = p * (dp[u] - stats[QUERIES + ii]);
                }
                ps[r * (QUERIES + 1) + ii] = p;
                dss[r * (QUERIES + 1) + ii] = ds;
            }
            __syncthreads();
            for (int ii = 0; ii < QUERIES; ++ii) {
                const float p = ps[r * (QUERIES + 1) + ii], ds = dss[r * (QUERIES + 1) + ii];
                const float *qr = qs + ii * ld, *dyr = dys + ii * ld;
#pragma unroll
                for (int u = 0; u < DMAX / 4; ++u) {
                    const int c = u * 4 + quad;
                    if (c < d) {
                        dv_acc[u] += p * dyr[c];
                        dk_acc[u] += ds * qr[c];
                    }
                }
            }
        }
    }
    if (j >= t) return;
    T* dkr = dk + b * g_sb + j * g_st + (long long)g * d;
    T* dvr = dv + b * g_sb + j * g_st + (long long)g * d;
#pragma unroll
    for (int u = 0; u < DMAX / 4; ++u) {
        const int c = u * 4 + quad;
        if (c < d) {
            dkr[c] = from_f<T>(scale * dk_acc[u]);
            dvr[c] = from_f<T>(dv_acc[u]);
        }
    }
}

// delta[b, h, i] = dY[b, i, h] · Y[b, i, h] over the D columns (f32), the backward's row term:
// a warp per (b, i, h) row, lanes over the columns, summed in a fixed order. y and dy are dense
// (B, T, H·D); the grid is (ceil(B·T·H / 8), 1, 1) blocks of 256 threads (8 warps).
template <typename T>
__device__ void attn_delta(const T* y, const T* dy, float* delta, int b, int t, int h, int d) {
    const long long rows = (long long)b * t * h;
    const long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    if (r < rows)
        for (int c = lane; c < d; c += 32) s += to_f(y[r * d + c]) * to_f(dy[r * d + c]);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (r < rows && lane == 0) {
        // row r is (bi, i, hi) of (B, T, H); delta is (B, H, T).
        const long long hi = r % h, i = (r / h) % t, bi = r / ((long long)h * t);
        delta[(bi * h + hi) * t + i] = s;
    }
}

#define OPERANDS(T)                                                                                   \
    const T *q, long long q_sb, long long q_st, const T *k, long long k_sb, long long k_st, const T *v, \
        long long v_sb, long long v_st
#define ATTENTION_KERNELS(T, SUFFIX, DMAX)                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS) attn_fwd_##SUFFIX##_##DMAX(                                \
        OPERANDS(T), T* y, float* lse, const int* key_lens, int causal, int t, int h, int kh, int d, float scale) { \
        attn_fwd<T, DMAX>(q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, y, lse, key_lens, causal, t, h, kh, d, scale); \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS) attn_bwd_dq_##SUFFIX##_##DMAX(                             \
        OPERANDS(T), const T* dy, const float* lse, const float* delta, T* dq, long long dq_sb, long long dq_st,      \
        const int* key_lens, int causal, int t, int h, int kh, int d, float scale) {                                  \
        attn_bwd_dq<T, DMAX>(q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, dy, lse, delta, dq, dq_sb, dq_st,          \
                             key_lens, causal, t, h, kh, d, scale);                                                   \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS) attn_bwd_dkdv_##SUFFIX##_##DMAX(                           \
        OPERANDS(T), const T* dy, const float* lse, const float* delta, T* dk, T* dv, long long g_sb,                 \
        long long g_st, const int* key_lens, int causal, int t, int h, int kh, int d, float scale) {                  \
        attn_bwd_dkdv<T, DMAX>(q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, dy, lse, delta, dk, dv, g_sb, g_st,      \
                               key_lens, causal, t, h, kh, d, scale);                                                 \
    }

#define DELTA_KERNEL(T, SUFFIX)                                                                                 \
    extern "C" __global__ void attn_delta_##SUFFIX(const T* y, const T* dy, float* delta, int b, int t, int h,      \
                                                  int d) {                                                         \
        attn_delta<T>(y, dy, delta, b, t, h, d);                                                                   \
    }
DELTA_KERNEL(float, f32)
DELTA_KERNEL(__nv_bfloat16, bf16)

ATTENTION_KERNELS(float, f32, 64)
ATTENTION_KERNELS(float, f32, 128)
ATTENTION_KERNELS(float, f32, 256)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 64)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 128)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 256)
