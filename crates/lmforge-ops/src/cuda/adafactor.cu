// Adafactor's update of one parameter on CUDA (transformers' Adafactor, as lmforge's
// optim/adafactor.rs composes it), in place, the gradient read as g·grad_scale (clipping's
// factor: the f32 values of the gradient scaled first), with every sum in a fixed order (no
// atomics) and no value read back to the host (the composed update reads RMS(p) and RMS(U),
// a wait on the stream each).
//
// A matrix, in five launches that move 20-28 bytes a parameter (the composed ops make some 28
// four-byte passes):
//   1 adafactor_tiles     a block a tile of AF_ROWS rows × AF_THREADS columns: each column's
//                         Σ (g² + eps1) over the tile's rows, each row's over its columns (warp
//                         trees), and Σ p² (for RMS(p)) when the step size scales with it
//   2 adafactor_factors   one block: R ← β2ₜ·R + (1−β2ₜ)·mean_cols(u) and C likewise (the
//                         state, in place), r = 1/√(R / mean(R)), c = 1/√C
//   3 adafactor_update_sq a block a stride of rows: Σ ((r_i·c_j)·g_ij)² per block
//   4 adafactor_scalars   one block: α = rel·lr_scale·max(eps2, RMS(p)) (or rel·lr_scale) and
//                         RMS(U) in double, as the host computes them: the update's factor
//                         α / max(1, RMS(U)/d) and the decay −wd·α
//   5 adafactor_apply     U = (r_i·c_j)·g_ij·factor; with β1 m ← β1·m + (1−β1)·U, U ← m;
//                         p ← (p + p·decay) − U (p − U without weight decay)
// A vector (norm weights, biases: the unfactored second moment), in three:
//   1 adafactor_vector_sq    v ← β2ₜ·v + (1−β2ₜ)·(g² + eps1) in place; a block's Σ (g/√v)² and
//                            Σ p² over a stride of elements
//   2 adafactor_scalars      as for a matrix
//   3 adafactor_vector_apply U = (1/√v)·g·factor, then as adafactor_apply
#include "common.cuh"

#define AF_THREADS 256
#define AF_ROWS 64
#define AF_WARPS (AF_THREADS / 32)
// The single-block kernels' threads, and the grid of the row-stride kernels (at most).
#define AF_ONE_BLOCK 1024
#define AF_MAX_BLOCKS 1024

extern "C" __global__ void __launch_bounds__(AF_THREADS)
    adafactor_tiles(const float* g, float grad_scale, const float* p, int rows, int cols, float eps1, int with_p,
                    float* part_row, float* part_col, float* part_p) {
    __shared__ float warp_rows[AF_ROWS][AF_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int j = blockIdx.x * AF_THREADS + threadIdx.x;
    const int r0 = blockIdx.y * AF_ROWS;
    const int r1 = min(rows, r0 + AF_ROWS);
    const bool in = j < cols;
    float col = 0.0f, psq = 0.0f;
    for (int i = r0; i < r1; ++i) {
        const size_t at = (size_t)i * cols + j;
        float u = 0.0f;
        if (in) {
            const float gi = g[at] * grad_scale;
            u = gi * gi + eps1;
            col += u;
            if (with_p) {
                const float pi = p[at];
                psq += pi * pi;
            }
        }
        // The loop's bounds are the block's: every thread reaches the shuffles.
        u = warp_sum(u);
        if (lane == 0) warp_rows[i - r0][warp] = u;
    }
    if (in) part_col[(size_t)blockIdx.y * cols + j] = col;
    psq = block_sum(psq);  // its barriers also publish warp_rows
    if ((int)threadIdx.x < r1 - r0) {
        float s = 0.0f;
        for (int w = 0; w < AF_WARPS; ++w) s += warp_rows[threadIdx.x][w];
        part_row[(size_t)blockIdx.x * rows + r0 + threadIdx.x] = s;
    }
    if (threadIdx.x == 0) part_p[(size_t)blockIdx.y * gridDim.x + blockIdx.x] = psq;
}

extern "C" __global__ void __launch_bounds__(AF_ONE_BLOCK)
    adafactor_factors(const float* part_row, const float* part_col, int rows, int cols, int col_tiles, int row_tiles,
                      float beta2t, float one_minus_beta2t, float* row_state, float* col_state, float* r_fac,
                      float* c_fac) {
    const float inv_cols = 1.0f / (float)cols, inv_rows = 1.0f / (float)rows;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
        float s = 0.0f;
        for (int t = 0; t < col_tiles; ++t) s += part_row[(size_t)t * rows + i];
        const float v = row_state[i] * beta2t + s * inv_cols * one_minus_beta2t;
        row_state[i] = v;
        acc += v;
    }
    const float row_mean = block_sum(acc) / (float)rows;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) r_fac[i] = 1.0f / sqrtf(row_state[i] / row_mean);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float s = 0.0f;
        for (int t = 0; t < row_tiles; ++t) s += part_col[(size_t)t * cols + j];
        const float v = col_state[j] * beta2t + s * inv_rows * one_minus_beta2t;
        col_state[j] = v;
        c_fac[j] = 1.0f / sqrtf(v);
    }
}

extern "C" __global__ void __launch_bounds__(AF_THREADS)
    adafactor_update_sq(const float* g, float grad_scale, const float* r_fac, const float* c_fac, int rows, int cols,
                        float* part_u) {
    float acc = 0.0f;
    for (int i = blockIdx.x; i < rows; i += gridDim.x) {
        const float r = r_fac[i];
        const float* gi = g + (size_t)i * cols;
        for (int j = threadIdx.x; j < cols; j += AF_THREADS) {
            const float u = r * c_fac[j] * (gi[j] * grad_scale);
            acc += u * u;
        }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part_u[blockIdx.x] = acc;
}

// From the partial sums of U² (u_parts of them) and p² (p_parts): scalars[0] the update's
// factor α / clip, [1] the decay −wd·α (f32, as the ops apply them).
extern "C" __global__ void __launch_bounds__(AF_THREADS)
    adafactor_scalars(const float* part_u, int u_parts, const float* part_p, int p_parts, double n, double rel,
                      double lr_scale, double eps2, int scale_parameter, double clip_threshold, double weight_decay,
                      float* scalars) {
    float usq = 0.0f, psq = 0.0f;
    for (int b = threadIdx.x; b < u_parts; b += blockDim.x) usq += part_u[b];
    for (int b = threadIdx.x; b < p_parts; b += blockDim.x) psq += part_p[b];
    usq = block_sum(usq);
    psq = block_sum(psq);
    if (threadIdx.x == 0) {
        const double param_rms = sqrt((double)psq / n);
        const double scale = scale_parameter ? fmax(eps2, param_rms) : 1.0;
        const double alpha = scale * rel * lr_scale;
        const double clip = fmax(sqrt((double)usq / n) / clip_threshold, 1.0);
        scalars[0] = (float)(alpha / clip);
        scalars[1] = (float)(-weight_decay * alpha);
    }
}

extern "C" __global__ void __launch_bounds__(AF_THREADS)
    adafactor_apply(float* p, const float* g, float grad_scale, float* m, const float* r_fac, const float* c_fac,
                    const float* scalars, int rows, int cols, int has_m, float beta1, float one_minus_beta1,
                    int has_decay) {
    const float factor = scalars[0], decay = scalars[1];
    for (int i = blockIdx.x; i < rows; i += gridDim.x) {
        const float r = r_fac[i];
        const size_t row = (size_t)i * cols;
        for (int j = threadIdx.x; j < cols; j += AF_THREADS) {
            float u = r * c_fac[j] * (g[row + j] * grad_scale) * factor;
            if (has_m) {
                u = m[row + j] * beta1 + u * one_minus_beta1;
                m[row + j] = u;
            }
            const float pi = p[row + j];
            p[row + j] = (has_decay ? pi + pi * decay : pi) - u;
        }
    }
}

extern "C" __global__ void __launch_bounds__(AF_THREADS)
    adafactor_vector_sq(const float* g, float grad_scale, const float* p, size_t n, float eps1, int with_p,
                        float beta2t, float one_minus_beta2t, float* v_state, float* part_u, float* part_p) {
    float usq = 0.0f, psq = 0.0f;
    const size_t stride = (size_t)gridDim.x * AF_THREADS;
    for (size_t k = (size_t)blockIdx.x * AF_THREADS + threadIdx.x; k < n; k += stride) {
        const float gi = g[k] * grad_scale;
        const float v = v_state[k] * beta2t + (gi * gi + eps1) * one_minus_beta2t;
        v_state[k] = v;
        const float u = 1.0f / sqrtf(v) * gi;
        usq += u * u;
        if (with_p) {
            const float pi = p[k];
            psq += pi * pi;
        }
    }
    usq = block_sum(usq);
    psq = block_sum(psq);
    if (threadIdx.x == 0) {
        part_u[blockIdx.x] = usq;
        part_p[blockIdx.x] = psq;
    }
}

extern "C" __global__ void __launch_bounds__(AF_THREADS)
    adafactor_vector_apply(float* p, const float* g, float grad_scale, float* m, const float* v_state,
                           const float* scalars, size_t n, int has_m, float beta1, float one_minus_beta1,
                           int has_decay) {
    const float factor = scalars[0], decay = scalars[1];
    const size_t stride = (size_t)gridDim.x * AF_THREADS;
    for (size_t k = (size_t)blockIdx.x * AF_THREADS + threadIdx.x; k < n; k += stride) {
        float u = 1.0f / sqrtf(v_state[k]) * (g[k] * grad_scale) * factor;
        if (has_m) {
            u = m[k] * beta1 + u * one_minus_beta1;
            m[k] = u;
        }
        const float pi = p[k];
        p[k] = (has_decay ? pi + pi * decay : pi) - u;
    }
}
