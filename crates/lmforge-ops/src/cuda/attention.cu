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
// (attn_fwd_tc, attn_bwd_dq_tc, attn_bwd_dkdv_tc, below: mma.sync on register tiles, operand
// tiles by cp.async, four warps of 16 rows a block, the same arguments, grids and results up to
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

// The tensor-core kernels: bf16 operands at head dim DH = 64 or 128, the same arguments, grids
// and results as the scalar ones up to the rounding of P and dS to bf16 (as FlashAttention-2).
// Four warps a block, each owning 16 of the block's 64 rows (queries; keys in attn_bwd_dkdv),
// FlashAttention-2's way on Ampere's instructions (common.cuh): scores, probabilities and the
// output or gradient accumulators live in registers in mma_bf16's layout, where a score tile's
// accumulators are already the A operand of the next product (no shared-memory round trip);
// operand tiles of 64 rows stream through shared memory by cp.async, the next tile's copy in
// flight while the current one is multiplied (two stages); products whose B operand has k
// along the tile's rows read it with ldmatrix .trans. A lane holds rows g and g + 8 of its
// warp's 16 (g = lane / 4) and columns 2·(lane % 4) + {0, 1} of each 8-column slice, so a
// row's max and sum are two shuffles over its four lanes.
#define TC_WARPS 4
#define TC_TILE 64  // rows a tile streams through (keys, or queries in attn_bwd_dkdv)

namespace tc {
// A bf16 tile of 64 rows in shared memory: its row stride, 16 bytes past DH so that the eight
// rows an ldmatrix (or a fragment's eight lanes) reads start in different banks, and its size.
template <int DH>
struct Tile {
    static constexpr int LD = DH + 8, ELEMS = ROWS * LD;
};

// Rows [r0, r0 + 64) of head `hd` of a (B, T, ·) operand into `tile` by cp.async, 16 bytes a
// copy (rows at or past `limit` zero); the caller commits and waits.
template <int DH>
__device__ __forceinline__ void load(__nv_bfloat16* tile, const __nv_bfloat16* p, long long sb, long long st, int b,
                                     int r0, int hd, int limit) {
    constexpr int CHUNKS = DH / 8;
    for (int e = threadIdx.x; e < ROWS * CHUNKS; e += blockDim.x) {
        const int r = e / CHUNKS, c = (e - r * CHUNKS) * 8;
        const bool valid = r0 + r < limit;
        const __nv_bfloat16* src = valid ? p + b * sb + (long long)(r0 + r) * st + (long long)hd * DH + c : p;
        cp_async16(tile + r * Tile<DH>::LD + c, src, valid);
    }
}

// Two neighbouring bf16 of shared memory as one register.
__device__ __forceinline__ uint32_t pair(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// The A operand (16 rows from `rows`, columns [k0, k0 + 16)) of a tile with row stride LD.
template <int LD>
__device__ __forceinline__ void a_operand(uint32_t (&a)[4], const __nv_bfloat16* rows, int k0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = 2 * (lane & 3);
    const __nv_bfloat16* p = rows + g * LD + k0 + c;
    a[0] = pair(p), a[1] = pair(p + 8 * LD), a[2] = pair(p + 8), a[3] = pair(p + 8 * LD + 8);
}

// s[n] (16 × 8, n < N) += A · Bᵀ over DH columns, A the 16 rows at `a_rows`, B the 8·N rows at
// `b_rows` (both with row stride LD): each row of B is a column of the product, its k
// contiguous, so B's registers are plain pairs.
template <int DH, int N>
__device__ __forceinline__ void a_bt(float (&s)[N][4], const __nv_bfloat16* a_rows, const __nv_bfloat16* b_rows) {
    constexpr int LD = Tile<DH>::LD;
    const int lane = threadIdx.x & 31, g = lane >> 2, c = 2 * (lane & 3);
#pragma unroll
    for (int k0 = 0; k0 < DH; k0 += 16) {
        uint32_t a[4];
        a_operand<LD>(a, a_rows, k0);
#pragma unroll
        for (int n = 0; n < N; ++n) {
            const __nv_bfloat16* p = b_rows + (n * 8 + g) * LD + k0 + c;
            mma_bf16(s[n], a, pair(p), pair(p + 8));
        }
    }
}

// acc (16 × DH) += P · B, P the 16 × 16·K probabilities (or score gradients) in registers as
// an accumulator tile (p[n] its 8-column slices), B the 16·K rows at `b_rows` (k along the rows:
// read transposed by ldmatrix, two 8-column slices of acc an instruction).
template <int DH, int K>
__device__ __forceinline__ void add_p_b(float (&acc)[DH / 8][4], const float (&p)[2 * K][4],
                                        const __nv_bfloat16* b_rows) {
    constexpr int LD = Tile<DH>::LD;
    const int lane = threadIdx.x & 31;
    // This lane's row address within a 16-row, 16-column block: matrices 0 and 1 are the
    // block's rows 0-7 and 8-15 of its first 8 columns, 2 and 3 of its last 8.
    const __nv_bfloat16* at = b_rows + (((lane >> 3) & 1) * 8 + (lane & 7)) * LD + (lane >> 4) * 8;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        // An accumulator tile's two 8-column slices are the A operand over their 16 columns.
        const uint32_t a[4] = {pack_bf16(p[2 * k][0], p[2 * k][1]), pack_bf16(p[2 * k][2], p[2 * k][3]),
                               pack_bf16(p[2 * k + 1][0], p[2 * k + 1][1]),
                               pack_bf16(p[2 * k + 1][2], p[2 * k + 1][3])};
#pragma unroll
        for (int n = 0; n < DH / 16; ++n) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, at + k * 16 * LD + n * 16);
            mma_bf16(acc[2 * n], a, b[0], b[1]);
            mma_bf16(acc[2 * n + 1], a, b[2], b[3]);
        }
    }
}

// A block of 64 query rows as the forward and attn_bwd_dq_tc see it: its first row (causal
// blocks further down read more keys, so those start first), the keys it reads and their
// tiles, and this lane's two rows with one past the last key each sees.
struct QueryBlock {
    int i0, end, tiles, ia, ib, end_a, end_b;
    __device__ QueryBlock(const int* key_lens, int causal, int t, int b) {
        i0 = (causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * ROWS;
        end = causal ? min(t, i0 + ROWS) : key_lens[b];
        tiles = (end + TC_TILE - 1) / TC_TILE;
        ia = i0 + (threadIdx.x >> 5) * 16 + ((threadIdx.x & 31) >> 2), ib = ia + 8;
        end_a = min(end, key_end(key_lens, causal, b, ia)), end_b = min(end, key_end(key_lens, causal, b, ib));
    }
};

// Zeros in every accumulator of a tile.
template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// K then V of key tile `it` (keys from it·64, none at or past `end`) into stage it & 1 of
// `stages` (two stages of two tiles).
template <int DH>
__device__ __forceinline__ void load_kv(__nv_bfloat16* stages, int it, const __nv_bfloat16* k, long long k_sb,
                                        long long k_st, const __nv_bfloat16* v, long long v_sb, long long v_st,
                                        int b, int g, int end) {
    __nv_bfloat16* at = stages + (it & 1) * 2 * Tile<DH>::ELEMS;
    load<DH>(at, k, k_sb, k_st, b, it * TC_TILE, g, end);
    load<DH>(at + Tile<DH>::ELEMS, v, v_sb, v_st, b, it * TC_TILE, g, end);
}

// The two-stage pipeline's step: tile `it`, whose copies `issue(it)` made earlier, lands in
// shared memory for every thread; tile it + 1's copies are issued first, when there is one, so
// they fly while tile `it` is multiplied.
template <typename Issue>
__device__ __forceinline__ void arrive(int it, int tiles, const Issue& issue) {
    if (it + 1 < tiles) {
        issue(it + 1);
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}

// Rows g and g + 8 of the warp's 16 of an accumulator tile (f32) scaled and written as bf16 to
// rows `row_a` and `row_b` (null: past T, not written).
template <int DH>
__device__ __forceinline__ void store_rows(const float (&acc)[DH / 8][4], __nv_bfloat16* row_a, __nv_bfloat16* row_b,
                                           float scale_a, float scale_b) {
    const int c = 2 * (threadIdx.x & 3);
#pragma unroll
    for (int n = 0; n < DH / 8; ++n) {
        if (row_a) *reinterpret_cast<uint32_t*>(row_a + n * 8 + c) = pack_bf16(scale_a * acc[n][0], scale_a * acc[n][1]);
        if (row_b) *reinterpret_cast<uint32_t*>(row_b + n * 8 + c) = pack_bf16(scale_b * acc[n][2], scale_b * acc[n][3]);
    }
}
}  // namespace tc

// Shared memory of the tensor-core kernels, in bytes (cuda/attention.rs computes the same).
template <int DH>
constexpr int tc_fwd_shared() {  // Q, then two stages of (K, V)
    return 5 * tc::Tile<DH>::ELEMS * 2;
}
template <int DH>
constexpr int tc_dq_shared() {  // Q, dY, then two stages of (K, V)
    return 6 * tc::Tile<DH>::ELEMS * 2;
}
template <int DH>
constexpr int tc_dkdv_shared() {  // K, V, two stages of (Q, dY), then two stages of (lse, delta)
    return 6 * tc::Tile<DH>::ELEMS * 2 + 2 * 2 * TC_TILE * 4;
}

template <int DH>
__device__ void attn_fwd_tc(const __nv_bfloat16* q, long long q_sb, long long q_st, const __nv_bfloat16* k,
                            long long k_sb, long long k_st, const __nv_bfloat16* v, long long v_sb, long long v_st,
                            __nv_bfloat16* y, float* lse, const int* key_lens, int causal, int t, int h, int kh,
                            float scale) {
    constexpr int LD = tc::Tile<DH>::LD, TILE = tc::Tile<DH>::ELEMS;
    DYNAMIC_SHARED(__nv_bfloat16, smem);
    __nv_bfloat16* qs = smem;        // ROWS × LD
    __nv_bfloat16* stages = qs + TILE;  // two stages of K then V, TILE each
    const int b = blockIdx.z, hi = blockIdx.y, g = hi / (h / kh);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = 2 * (lane & 3);
    const tc::QueryBlock blk(key_lens, causal, t, b);
    const int i0 = blk.i0, end = blk.end, tiles = blk.tiles, ia = blk.ia, ib = blk.ib;
    auto issue = [&](int it) { tc::load_kv<DH>(stages, it, k, k_sb, k_st, v, v_sb, v_st, b, g, end); };
    tc::load<DH>(qs, q, q_sb, q_st, b, i0, hi, t);
    if (tiles > 0) issue(0);
    cp_async_commit();
    float o[DH / 8][4], m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
    tc::zero(o);
    for (int it = 0; it < tiles; ++it) {
        tc::arrive(it, tiles, issue);  // this tile (and Q) landed
        const __nv_bfloat16 *ks = stages + (it & 1) * 2 * TILE, *vs = ks + TILE;
        const int j0 = it * TC_TILE;
        float s[TC_TILE / 8][4];
        tc::zero(s);
        tc::a_bt<DH, TC_TILE / 8>(s, qs + warp * 16 * LD, ks);  // S = Q_w · Kᵀ
        // Online softmax of rows a and b over this tile's keys.
        float max_a = -INFINITY, max_b = -INFINITY;
#pragma unroll
        for (int n = 0; n < TC_TILE / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int j = j0 + n * 8 + c + e;
                s[n][e] = j < blk.end_a ? scale * s[n][e] : -INFINITY;
                s[n][2 + e] = j < blk.end_b ? scale * s[n][2 + e] : -INFINITY;
                max_a = fmaxf(max_a, s[n][e]), max_b = fmaxf(max_b, s[n][2 + e]);
            }
        const float new_a = fmaxf(m_a, quad_max(max_a)), new_b = fmaxf(m_b, quad_max(max_b));
        // A row that has seen no key yet keeps l = 0 and its accumulators at zero.
        const float shift_a = new_a == -INFINITY ? 0.0f : new_a, shift_b = new_b == -INFINITY ? 0.0f : new_b;
        const float alpha_a = expf(m_a - shift_a), alpha_b = expf(m_b - shift_b);
        float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
        for (int n = 0; n < TC_TILE / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                s[n][e] = expf(s[n][e] - shift_a), s[n][2 + e] = expf(s[n][2 + e] - shift_b);
                sum_a += s[n][e], sum_b += s[n][2 + e];
            }
        // Each lane keeps its share of the row sums; the four are added once, at the end.
        l_a = l_a * alpha_a + sum_a, l_b = l_b * alpha_b + sum_b;
        m_a = new_a, m_b = new_b;
#pragma unroll
        for (int n = 0; n < DH / 8; ++n) o[n][0] *= alpha_a, o[n][1] *= alpha_a, o[n][2] *= alpha_b, o[n][3] *= alpha_b;
        tc::add_p_b<DH, TC_TILE / 16>(o, s, vs);  // O += P · V
        __syncthreads();  // every warp is done with this stage before it is loaded again
    }
    cp_async_wait<0>();  // no tiles: Q's copies
    l_a = quad_sum(l_a), l_b = quad_sum(l_b);
    const long long row = ((long long)b * t) * h + hi;
    tc::store_rows<DH>(o, ia < t ? y + (row + (long long)ia * h) * DH : nullptr,
                       ib < t ? y + (row + (long long)ib * h) * DH : nullptr, 1.0f / l_a, 1.0f / l_b);
    if ((lane & 3) == 0) {
        const long long stat = ((long long)b * h + hi) * t;
        if (ia < t) lse[stat + ia] = m_a + logf(l_a);
        if (ib < t) lse[stat + ib] = m_b + logf(l_b);
    }
}

// dQ on tensor cores: a block per 64 query rows (16 a warp), over key tiles of 64:
// S = Q·Kᵀ and dP = dY·Vᵀ, dS = P ⊙ (dP − delta) in registers, dQ += dS·K.
template <int DH>
__device__ void attn_bwd_dq_tc(const __nv_bfloat16* q, long long q_sb, long long q_st, const __nv_bfloat16* k,
                               long long k_sb, long long k_st, const __nv_bfloat16* v, long long v_sb,
                               long long v_st, const __nv_bfloat16* dy, const float* lse, const float* delta,
                               __nv_bfloat16* dq, long long dq_sb, long long dq_st, const int* key_lens, int causal,
                               int t, int h, int kh, float scale) {
    constexpr int LD = tc::Tile<DH>::LD, TILE = tc::Tile<DH>::ELEMS;
    DYNAMIC_SHARED(__nv_bfloat16, smem);
    __nv_bfloat16* qs = smem;  // ROWS × LD
    __nv_bfloat16* dys = qs + TILE;
    __nv_bfloat16* stages = dys + TILE;  // two stages of K then V
    const int b = blockIdx.z, hi = blockIdx.y, g = hi / (h / kh);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = 2 * (lane & 3);
    const tc::QueryBlock blk(key_lens, causal, t, b);
    const int i0 = blk.i0, end = blk.end, tiles = blk.tiles, ia = blk.ia, ib = blk.ib;
    const long long dy_st = (long long)h * DH, dy_sb = dy_st * t;
    auto issue = [&](int it) { tc::load_kv<DH>(stages, it, k, k_sb, k_st, v, v_sb, v_st, b, g, end); };
    tc::load<DH>(qs, q, q_sb, q_st, b, i0, hi, t);
    tc::load<DH>(dys, dy, dy_sb, dy_st, b, i0, hi, t);
    if (tiles > 0) issue(0);
    cp_async_commit();
    const long long stat = ((long long)b * h + hi) * t;
    const float lse_a = ia < t ? lse[stat + ia] : 0.0f, lse_b = ib < t ? lse[stat + ib] : 0.0f;
    const float delta_a = ia < t ? delta[stat + ia] : 0.0f, delta_b = ib < t ? delta[stat + ib] : 0.0f;
    float acc[DH / 8][4];
    tc::zero(acc);
    for (int it = 0; it < tiles; ++it) {
        tc::arrive(it, tiles, issue);
        const __nv_bfloat16 *ks = stages + (it & 1) * 2 * TILE, *vs = ks + TILE;
        const int j0 = it * TC_TILE;
        float s[TC_TILE / 8][4], dp[TC_TILE / 8][4];
        tc::zero(s), tc::zero(dp);
        tc::a_bt<DH, TC_TILE / 8>(s, qs + warp * 16 * LD, ks);    // S = Q_w · Kᵀ
        tc::a_bt<DH, TC_TILE / 8>(dp, dys + warp * 16 * LD, vs);  // dP = dY_w · Vᵀ
#pragma unroll
        for (int n = 0; n < TC_TILE / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int j = j0 + n * 8 + c + e;
                s[n][e] = j < blk.end_a ? expf(scale * s[n][e] - lse_a) * (dp[n][e] - delta_a) : 0.0f;
                s[n][2 + e] = j < blk.end_b ? expf(scale * s[n][2 + e] - lse_b) * (dp[n][2 + e] - delta_b) : 0.0f;
            }
        tc::add_p_b<DH, TC_TILE / 16>(acc, s, ks);  // dQ += dS · K
        __syncthreads();
    }
    cp_async_wait<0>();
    tc::store_rows<DH>(acc, ia < t ? dq + b * dq_sb + ia * dq_st + (long long)hi * DH : nullptr,
                       ib < t ? dq + b * dq_sb + ib * dq_st + (long long)hi * DH : nullptr, scale, scale);
}

// dK and dV on tensor cores: a block per 64 keys (16 a warp) of one KV head, over its query
// heads and their query tiles of 64, each taken as two halves of 32: Sᵀ = K·Qᵀ and
// dPᵀ = V·dYᵀ, Pᵀ and dSᵀ in registers, dV += Pᵀ·dY, dK += dSᵀ·Q.
template <int DH>
__device__ void attn_bwd_dkdv_tc(const __nv_bfloat16* q, long long q_sb, long long q_st, const __nv_bfloat16* k,
                                 long long k_sb, long long k_st, const __nv_bfloat16* v, long long v_sb,
                                 long long v_st, const __nv_bfloat16* dy, const float* lse, const float* delta,
                                 __nv_bfloat16* dk, __nv_bfloat16* dv, long long g_sb, long long g_st,
                                 const int* key_lens, int causal, int t, int h, int kh, float scale) {
    constexpr int LD = tc::Tile<DH>::LD, TILE = tc::Tile<DH>::ELEMS, HALF = TC_TILE / 2;
    DYNAMIC_SHARED(__nv_bfloat16, smem);
    __nv_bfloat16* ks = smem;  // ROWS × LD: this block's keys
    __nv_bfloat16* vs = ks + TILE;
    __nv_bfloat16* stages = vs + TILE;  // two stages of Q then dY
    float* stats = reinterpret_cast<float*>(stages + 4 * TILE);  // two stages of lse then delta, TC_TILE each
    const int b = blockIdx.z, g = blockIdx.y, j0 = blockIdx.x * ROWS, rep = h / kh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = 2 * (lane & 3);
    const int ja = j0 + warp * 16 + (lane >> 2), jb = ja + 8;
    // Keys at or past `limit` have no gradient (padding, or past T); causal: queries before
    // this block's first key see none of its keys.
    const int limit = causal ? t : key_lens[b], first = causal ? j0 : 0;
    const int per_head = j0 < limit ? (t - first + TC_TILE - 1) / TC_TILE : 0, tiles = rep * per_head;
    const long long dy_st = (long long)h * DH, dy_sb = dy_st * t;
    // Tile `it`'s query head and first query, and its copies into stage `it & 1`.
    auto issue = [&](int it) {
        const int head = g * rep + it / per_head, i0 = first + (it % per_head) * TC_TILE;
        __nv_bfloat16* at = stages + (it & 1) * 2 * TILE;
        tc::load<DH>(at, q, q_sb, q_st, b, i0, head, t);
        tc::load<DH>(at + TILE, dy, dy_sb, dy_st, b, i0, head, t);
        // The tile's lse, then its delta (zeros past T).
        float* st = stats + (it & 1) * 2 * TC_TILE;
        for (int e = threadIdx.x; e < 2 * TC_TILE; e += blockDim.x) {
            const int i = i0 + e % TC_TILE;
            const float* src = (e < TC_TILE ? lse : delta) + ((long long)b * h + head) * t;
            cp_async4(st + e, i < t ? src + i : src, i < t);
        }
    };
    tc::load<DH>(ks, k, k_sb, k_st, b, j0, g, limit);
    tc::load<DH>(vs, v, v_sb, v_st, b, j0, g, limit);
    if (tiles > 0) issue(0);
    cp_async_commit();
    float dk_acc[DH / 8][4], dv_acc[DH / 8][4];
    tc::zero(dk_acc), tc::zero(dv_acc);
    for (int it = 0; it < tiles; ++it) {
        tc::arrive(it, tiles, issue);
        const __nv_bfloat16 *qs = stages + (it & 1) * 2 * TILE, *dys = qs + TILE;
        const float* st = stats + (it & 1) * 2 * TC_TILE;
        const int i0 = first + (it % per_head) * TC_TILE;
        // Not unrolled: the two halves' registers would not fit beside dK's and dV's at D = 128.
#pragma unroll 1
        for (int half = 0; half < 2; ++half) {
            const int q0 = half * HALF;
            float p[HALF / 8][4], ds[HALF / 8][4];
            tc::zero(p), tc::zero(ds);
            tc::a_bt<DH, HALF / 8>(p, ks + warp * 16 * LD, qs + q0 * LD);    // Sᵀ = K_w · Qᵀ
            tc::a_bt<DH, HALF / 8>(ds, vs + warp * 16 * LD, dys + q0 * LD);  // dPᵀ = V_w · dYᵀ
#pragma unroll
            for (int n = 0; n < HALF / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int ii = q0 + n * 8 + c + (e & 1), i = i0 + ii, j = e < 2 ? ja : jb;
                    const bool seen = i < t && j < min(limit, key_end(key_lens, causal, b, i));
                    p[n][e] = seen ? expf(scale * p[n][e] - st[ii]) : 0.0f;
                    ds[n][e] = seen ? p[n][e] * (ds[n][e] - st[TC_TILE + ii]) : 0.0f;
                }
            tc::add_p_b<DH, HALF / 16>(dv_acc, p, dys + q0 * LD);  // dV += Pᵀ · dY
            tc::add_p_b<DH, HALF / 16>(dk_acc, ds, qs + q0 * LD);  // dK += dSᵀ · Q
        }
        __syncthreads();
    }
    cp_async_wait<0>();
    const long long head = (long long)g * DH;
    tc::store_rows<DH>(dk_acc, ja < t ? dk + b * g_sb + ja * g_st + head : nullptr,
                       jb < t ? dk + b * g_sb + jb * g_st + head : nullptr, scale, scale);
    tc::store_rows<DH>(dv_acc, ja < t ? dv + b * g_sb + ja * g_st + head : nullptr,
                       jb < t ? dv + b * g_sb + jb * g_st + head : nullptr, 1.0f, 1.0f);
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
