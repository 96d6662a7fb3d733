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
// registers (D ≤ DMAX, the kernel's compile-time bound: 64, 128 or 256). These scalar kernels
// serve every dtype and head dim; bf16 at D = 64 or 128 has tensor-core versions of all three
// (attn_fwd_tc, attn_bwd_dq_tc, attn_bwd_dkdv_tc, below: wmma 16×16×16 bf16 products with f32
// accumulators, four warps of 16 rows a block, the same arguments, grids and results up to
// the rounding of P and dS to bf16).
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

// The forward on tensor cores, bf16 operands with head dim DH (64 or 128): four warps a
// block, each owning 16 of the block's 64 query rows. Per tile of 64 keys, a warp forms its
// 16 × 64 scores with wmma (bf16 products, f32 accumulators) into shared memory, two lanes a
// row run the online softmax there (rescaling the row's f32 output accumulator, also in shared
// memory) and write P in bf16, and wmma adds P · V to the output. Same results as attn_fwd up
// to P's rounding to bf16 (as FlashAttention-2).
#define TC_WARPS 4
#define TC_KEYS 64

// The tensor-core kernels' shared pieces (bf16, head dim DH, four warps of 16 rows).
namespace tc {
using namespace nvcuda;
template <int DH>
struct Dims {
    // Row strides (multiples of 8 bf16 / 4 f32 as wmma needs, off the shared-memory banks).
    static constexpr int LD = DH + 8, SLD = TC_KEYS + 4, PLD = TC_KEYS + 8, OLD = DH + 4;
};

// Rows [r0, r0 + 64) of head `hd` of a (B, T, ·) operand into a bf16 tile (rows past `limit`
// zero).
template <int DH>
__device__ void load(__nv_bfloat16* tile, const __nv_bfloat16* p, long long sb, long long st, int b, int r0, int hd,
                     int limit) {
    const __nv_bfloat16 zero = __float2bfloat16(0.0f);
    for (int e = threadIdx.x; e < ROWS * DH; e += blockDim.x) {
        const int r = e / DH, c = e - r * DH;
        tile[r * Dims<DH>::LD + c] = r0 + r < limit ? p[b * sb + (r0 + r) * st + (long long)hd * DH + c] : zero;
    }
}

// out (16 × 64, f32, row stride SLD) = A (16 × DH rows of `a`) · B (64 × DH rows of `bt`)ᵀ.
template <int DH>
__device__ void a_bt(float* out, const __nv_bfloat16* a, const __nv_bfloat16* bt) {
    constexpr int LD = Dims<DH>::LD;
    for (int n = 0; n < TC_KEYS / 16; ++n) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < DH / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
            wmma::load_matrix_sync(fa, a + kk * 16, LD);
            wmma::load_matrix_sync(fb, bt + n * 16 * LD + kk * 16, LD);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(out + n * 16, acc, Dims<DH>::SLD, wmma::mem_row_major);
    }
}

// acc (16 × DH, f32, row stride OLD) += P (16 × 64 bf16, row stride PLD) · B (64 × DH rows of `b`).
template <int DH>
__device__ void add_p_b(float* acc_rows, const __nv_bfloat16* p, const __nv_bfloat16* b) {
    constexpr int LD = Dims<DH>::LD, OLD = Dims<DH>::OLD;
    for (int n = 0; n < DH / 16; ++n) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, acc_rows + n * 16, OLD, wmma::mem_row_major);
        for (int kk = 0; kk < TC_KEYS / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, p + kk * 16, Dims<DH>::PLD);
            wmma::load_matrix_sync(fb, b + kk * 16 * LD + n * 16, LD);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(acc_rows + n * 16, acc, OLD, wmma::mem_row_major);
    }
}
}  // namespace tc

template <int DH>
__device__ void attn_fwd_tc(const __nv_bfloat16* q, long long q_sb, long long q_st, const __nv_bfloat16* k,
                            long long k_sb, long long k_st, const __nv_bfloat16* v, long long v_sb, long long v_st,
                            __nv_bfloat16* y, float* lse, const int* key_lens, int causal, int t, int h, int kh,
                            float scale) {
    // Row strides: bf16 tiles, f32 scores, bf16 probabilities, f32 output accumulators.
    constexpr int LD = tc::Dims<DH>::LD, SLD = tc::Dims<DH>::SLD, PLD = tc::Dims<DH>::PLD, OLD = tc::Dims<DH>::OLD;
    DYNAMIC_SHARED(float, smem);
    float* s_all = smem;                                  // TC_WARPS × 16 × SLD
    float* o_all = s_all + TC_WARPS * 16 * SLD;           // TC_WARPS × 16 × OLD
    float* stat = o_all + TC_WARPS * 16 * OLD;            // m, l of the block's 64 rows
    __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(stat + 2 * ROWS);  // ROWS × LD
    __nv_bfloat16* ks = qs + ROWS * LD;                   // TC_KEYS × LD
    __nv_bfloat16* vs = ks + TC_KEYS * LD;                // TC_KEYS × LD
    __nv_bfloat16* p_all = vs + TC_KEYS * LD;             // TC_WARPS × 16 × PLD
    const int b = blockIdx.z, hi = blockIdx.y, g = hi / (h / kh), i0 = blockIdx.x * ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *s_w = s_all + warp * 16 * SLD, *o_w = o_all + warp * 16 * OLD;
    __nv_bfloat16* p_w = p_all + warp * 16 * PLD;
    const int end = causal ? min(t, i0 + ROWS) : key_lens[b];
    tc::load<DH>(qs, q, q_sb, q_st, b, i0, hi, t);
    for (int e = threadIdx.x; e < 16 * OLD * TC_WARPS; e += blockDim.x) o_all[e] = 0.0f;
    for (int e = threadIdx.x; e < ROWS; e += blockDim.x) stat[e] = -INFINITY, stat[ROWS + e] = 0.0f;
    // Two lanes a row: row r (of the warp's 16) and half of the tile's keys / the output columns.
    const int r = lane >> 1, half = lane & 1, i = i0 + warp * 16 + r;
    const int row_end = min(end, key_end(key_lens, causal, b, i));
    for (int j0 = 0; j0 < end; j0 += TC_KEYS) {
        __syncthreads();  // the last tile's readers are done with ks and vs
        tc::load<DH>(ks, k, k_sb, k_st, b, j0, g, end);
        tc::load<DH>(vs, v, v_sb, v_st, b, j0, g, end);
        __syncthreads();
        tc::a_bt<DH>(s_w, qs + warp * 16 * LD, ks);  // S (16 × 64) = Q_w · K_tileᵀ
        __syncwarp();
        // Online softmax of row r over this tile's keys [half·32, half·32 + 32).
        float* srow = s_w + r * SLD;
        float tile_max = -INFINITY;
        for (int jj = half * 32; jj < half * 32 + 32; ++jj) {
            const float x = j0 + jj < row_end ? scale * srow[jj] : -INFINITY;
            srow[jj] = x;
            tile_max = fmaxf(tile_max, x);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        float* m = stat + warp * 16 + r;
        float* l = stat + ROWS + warp * 16 + r;
        const float m_new = fmaxf(*m, tile_max);
        const float shift = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = expf(*m - shift);
        float sum = 0.0f;
        for (int jj = half * 32; jj < half * 32 + 32; ++jj) {
            const float p = expf(srow[jj] - shift);
            p_w[r * PLD + jj] = __float2bfloat16(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        for (int c = half * (DH / 2); c < (half + 1) * (DH / 2); ++c) o_w[r * OLD + c] *= alpha;
        __syncwarp();
        if (half == 0) *l = *l * alpha + sum, *m = m_new;
        tc::add_p_b<DH>(o_w, p_w, vs);  // O_w (16 × DH) += P_w (16 × 64) · V_tile (64 × DH)
        __syncwarp();
    }
    __syncthreads();
    if (i >= t) return;
    const float inv = 1.0f / stat[ROWS + warp * 16 + r];
    __nv_bfloat16* yr = y + ((long long)(b * t + i) * h + hi) * DH;
    for (int c = half * (DH / 2); c < (half + 1) * (DH / 2); ++c) yr[c] = __float2bfloat16(o_w[r * OLD + c] * inv);
    if (half == 0) lse[((long long)b * h + hi) * t + i] = stat[warp * 16 + r] + logf(stat[ROWS + warp * 16 + r]);
}


// dQ on tensor cores: a block per 64 query rows (16 a warp), over key tiles of 64:
// S = Q·Kᵀ and dP = dY·Vᵀ by wmma, dS = P ⊙ (dP − delta) in bf16 by two lanes a row, dQ += dS·K.
template <int DH>
__device__ void attn_bwd_dq_tc(const __nv_bfloat16* q, long long q_sb, long long q_st, const __nv_bfloat16* k,
                               long long k_sb, long long k_st, const __nv_bfloat16* v, long long v_sb,
                               long long v_st, const __nv_bfloat16* dy, const float* lse, const float* delta,
                               __nv_bfloat16* dq, long long dq_sb, long long dq_st, const int* key_lens, int causal,
                               int t, int h, int kh, float scale) {
    using D = tc::Dims<DH>;
    DYNAMIC_SHARED(float, smem);
    float* s_all = smem;                             // TC_WARPS × 16 × SLD: S
    float* dp_all = s_all + TC_WARPS * 16 * D::SLD;  // TC_WARPS × 16 × SLD: dP
    float* acc_all = dp_all + TC_WARPS * 16 * D::SLD;  // TC_WARPS × 16 × OLD: dQ
    __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(acc_all + TC_WARPS * 16 * D::OLD);
    __nv_bfloat16* dys = qs + ROWS * D::LD;
    __nv_bfloat16* ks = dys + ROWS * D::LD;
    __nv_bfloat16* vs = ks + TC_KEYS * D::LD;
    __nv_bfloat16* ds_all = vs + TC_KEYS * D::LD;   // TC_WARPS × 16 × PLD
    const int b = blockIdx.z, hi = blockIdx.y, g = hi / (h / kh), i0 = blockIdx.x * ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const int i = i0 + warp * 16 + r;
    float *s_w = s_all + warp * 16 * D::SLD, *dp_w = dp_all + warp * 16 * D::SLD;
    float* acc_w = acc_all + warp * 16 * D::OLD;
    __nv_bfloat16* ds_w = ds_all + warp * 16 * D::PLD;
    const int end = causal ? min(t, i0 + ROWS) : key_lens[b];
    const int row_end = min(end, key_end(key_lens, causal, b, i));
    const long long dy_st = (long long)h * DH, dy_sb = dy_st * t;
    tc::load<DH>(qs, q, q_sb, q_st, b, i0, hi, t);
    tc::load<DH>(dys, dy, dy_sb, dy_st, b, i0, hi, t);
    for (int e = threadIdx.x; e < TC_WARPS * 16 * D::OLD; e += blockDim.x) acc_all[e] = 0.0f;
    const long long stat = ((long long)b * h + hi) * t + i;
    const float row_lse = i < t ? lse[stat] : 0.0f, row_delta = i < t ? delta[stat] : 0.0f;
    for (int j0 = 0; j0 < end; j0 += TC_KEYS) {
        __syncthreads();
        tc::load<DH>(ks, k, k_sb, k_st, b, j0, g, end);
        tc::load<DH>(vs, v, v_sb, v_st, b, j0, g, end);
        __syncthreads();
        tc::a_bt<DH>(s_w, qs + warp * 16 * D::LD, ks);
        tc::a_bt<DH>(dp_w, dys + warp * 16 * D::LD, vs);
        __syncwarp();
        for (int jj = half * 32; jj < half * 32 + 32; ++jj) {
            float ds = 0.0f;
            if (j0 + jj < row_end) ds = expf(scale * s_w[r * D::SLD + jj] - row_lse) * (dp_w[r * D::SLD + jj] - row_delta);
            ds_w[r * D::PLD + jj] = __float2bfloat16(ds);
        }
        __syncwarp();
        tc::add_p_b<DH>(acc_w, ds_w, ks);
        __syncwarp();
    }
    __syncthreads();
    if (i >= t) return;
    __nv_bfloat16* out = dq + b * dq_sb + i * dq_st + (long long)hi * DH;
    for (int c = half * (DH / 2); c < (half + 1) * (DH / 2); ++c) out[c] = __float2bfloat16(scale * acc_w[r * D::OLD + c]);
}

// dK and dV on tensor cores: a block per 64 keys (16 a warp) of one KV head, over its query
// heads and their query tiles of 64: Sᵀ = K·Qᵀ and dPᵀ = V·dYᵀ by wmma, Pᵀ and dSᵀ in bf16 by
// two lanes a key, dV += Pᵀ·dY, dK += dSᵀ·Q.
template <int DH>
__device__ void attn_bwd_dkdv_tc(const __nv_bfloat16* q, long long q_sb, long long q_st, const __nv_bfloat16* k,
                                 long long k_sb, long long k_st, const __nv_bfloat16* v, long long v_sb,
                                 long long v_st, const __nv_bfloat16* dy, const float* lse, const float* delta,
                                 __nv_bfloat16* dk, __nv_bfloat16* dv, long long g_sb, long long g_st,
                                 const int* key_lens, int causal, int t, int h, int kh, float scale) {
    using D = tc::Dims<DH>;
    DYNAMIC_SHARED(float, smem);
    float* st_all = smem;                              // TC_WARPS × 16 × SLD: Sᵀ
    float* dpt_all = st_all + TC_WARPS * 16 * D::SLD;  // dPᵀ
    float* dk_all = dpt_all + TC_WARPS * 16 * D::SLD;  // TC_WARPS × 16 × OLD
    float* dv_all = dk_all + TC_WARPS * 16 * D::OLD;
    float* stats = dv_all + TC_WARPS * 16 * D::OLD;    // lse, delta of the query tile
    __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(stats + 2 * TC_KEYS);
    __nv_bfloat16* vs = ks + ROWS * D::LD;
    __nv_bfloat16* qs = vs + ROWS * D::LD;
    __nv_bfloat16* dys = qs + TC_KEYS * D::LD;
    __nv_bfloat16* pt_all = dys + TC_KEYS * D::LD;     // TC_WARPS × 16 × PLD
    __nv_bfloat16* dst_all = pt_all + TC_WARPS * 16 * D::PLD;
    const int b = blockIdx.z, g = blockIdx.y, j0 = blockIdx.x * ROWS, rep = h / kh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const int j = j0 + warp * 16 + r;
    float *st_w = st_all + warp * 16 * D::SLD, *dpt_w = dpt_all + warp * 16 * D::SLD;
    float *dk_w = dk_all + warp * 16 * D::OLD, *dv_w = dv_all + warp * 16 * D::OLD;
    __nv_bfloat16 *pt_w = pt_all + warp * 16 * D::PLD, *dst_w = dst_all + warp * 16 * D::PLD;
    const int limit = causal ? t : key_lens[b];
    const long long dy_st = (long long)h * DH, dy_sb = dy_st * t;
    tc::load<DH>(ks, k, k_sb, k_st, b, j0, g, limit);
    tc::load<DH>(vs, v, v_sb, v_st, b, j0, g, limit);
    for (int e = threadIdx.x; e < 2 * TC_WARPS * 16 * D::OLD; e += blockDim.x) dk_all[e] = 0.0f;
    const int first = causal ? j0 / TC_KEYS * TC_KEYS : 0;
    for (int hi = g * rep; hi < (g + 1) * rep; ++hi) {
        for (int i0 = first; i0 < t && j0 < limit; i0 += TC_KEYS) {
            __syncthreads();
            tc::load<DH>(qs, q, q_sb, q_st, b, i0, hi, t);
            tc::load<DH>(dys, dy, dy_sb, dy_st, b, i0, hi, t);
            for (int e = threadIdx.x; e < TC_KEYS; e += blockDim.x) {
                const long long at = ((long long)b * h + hi) * t + i0 + e;
                stats[e] = i0 + e < t ? lse[at] : 0.0f;
                stats[TC_KEYS + e] = i0 + e < t ? delta[at] : 0.0f;
            }
            __syncthreads();
            tc::a_bt<DH>(st_w, ks + warp * 16 * D::LD, qs);
            tc::a_bt<DH>(dpt_w, vs + warp * 16 * D::LD, dys);
            __syncwarp();
            for (int ii = half * 32; ii < half * 32 + 32; ++ii) {
                const int i = i0 + ii;
                float p = 0.0f, ds = 0.0f;
                if (i < t && j < min(limit, key_end(key_lens, causal, b, i))) {
                    p = expf(scale * st_w[r * D::SLD + ii] - stats[ii]);
                    ds = p * (dpt_w[r * D::SLD + ii] - stats[TC_KEYS + ii]);
                }
                pt_w[r * D::PLD + ii] = __float2bfloat16(p);
                dst_w[r * D::PLD + ii] = __float2bfloat16(ds);
            }
            __syncwarp();
            tc::add_p_b<DH>(dv_w, pt_w, dys);
            tc::add_p_b<DH>(dk_w, dst_w, qs);
            __syncwarp();
        }
    }
    __syncthreads();
    if (j >= t) return;
    __nv_bfloat16* dkr = dk + b * g_sb + j * g_st + (long long)g * DH;
    __nv_bfloat16* dvr = dv + b * g_sb + j * g_st + (long long)g * DH;
    for (int c = half * (DH / 2); c < (half + 1) * (DH / 2); ++c) {
        dkr[c] = __float2bfloat16(scale * dk_w[r * D::OLD + c]);
        dvr[c] = __float2bfloat16(dv_w[r * D::OLD + c]);
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
    s = warp_sum(s);
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

#define TC_FORWARD(DH)                                                                                         \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_fwd_tc_bf16_##DH(                           \
        OPERANDS(__nv_bfloat16), __nv_bfloat16* y, float* lse, const int* key_lens, int causal, int t, int h,     \
        int kh, int d, float scale) {                                                                             \
        attn_fwd_tc<DH>(q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, y, lse, key_lens, causal, t, h, kh, scale);  \
    }
#define TC_BACKWARD(DH)                                                                                        \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_bwd_dq_tc_bf16_##DH(                        \
        OPERANDS(__nv_bfloat16), const __nv_bfloat16* dy, const float* lse, const float* delta, __nv_bfloat16* dq, \
        long long dq_sb, long long dq_st, const int* key_lens, int causal, int t, int h, int kh, int d,            \
        float scale) {                                                                                            \
        attn_bwd_dq_tc<DH>(q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, dy, lse, delta, dq, dq_sb, dq_st,         \
                           key_lens, causal, t, h, kh, scale);                                                    \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attn_bwd_dkdv_tc_bf16_##DH(                      \
        OPERANDS(__nv_bfloat16), const __nv_bfloat16* dy, const float* lse, const float* delta, __nv_bfloat16* dk, \
        __nv_bfloat16* dv, long long g_sb, long long g_st, const int* key_lens, int causal, int t, int h, int kh,  \
        int d, float scale) {                                                                                     \
        attn_bwd_dkdv_tc<DH>(q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, dy, lse, delta, dk, dv, g_sb, g_st,     \
                             key_lens, causal, t, h, kh, scale);                                                  \
    }
TC_FORWARD(64)
TC_FORWARD(128)
TC_BACKWARD(64)
TC_BACKWARD(128)

ATTENTION_KERNELS(float, f32, 64)
ATTENTION_KERNELS(float, f32, 128)
ATTENTION_KERNELS(float, f32, 256)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 64)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 128)
ATTENTION_KERNELS(__nv_bfloat16, bf16, 256)
