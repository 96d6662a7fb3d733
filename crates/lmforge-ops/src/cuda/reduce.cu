// Column sums on CUDA: Σ over the rows of x (rows, c), f32 or bf16, in f32 — a linear layer's
// bias gradient (Σ dy over positions). candle's sum over dim 0 gives each column a block whose
// threads read down that column, c elements apart (a memory transaction a load, a strided
// index computed per element), after a cast of the whole gradient to f32. Here a block takes
// COLUMN_SUM_ROWS rows by 256 columns, each thread one column down those rows in order, a
// warp's loads consecutive; the partial sums (blocks, c) are summed again the same way until
// one row is left. No atomics: the same bits every run.
#include "common.cuh"

#define COLUMN_SUM_ROWS 64

// partials[blockIdx.x][j] = Σ x[r][j] over the block's rows; grid (row blocks, column tiles).
template <typename T>
__device__ void column_partials(const T* x, float* partials, int rows, int c) {
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= c) return;
    const int r0 = blockIdx.x * COLUMN_SUM_ROWS, r1 = min(rows, r0 + COLUMN_SUM_ROWS);
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) s += to_f(x[(size_t)r * c + j]);
    partials[(size_t)blockIdx.x * c + j] = s;
}

extern "C" __global__ void column_partials_f32(const float* x, float* partials, int rows, int c) {
    column_partials<float>(x, partials, rows, c);
}

extern "C" __global__ void column_partials_bf16(const __nv_bfloat16* x, float* partials, int rows, int c) {
    column_partials<__nv_bfloat16>(x, partials, rows, c);
}
