// Σ x² over every gradient of a step (global-norm clipping's norm) on CUDA, in two launches
// whatever the number of tensors, and in a fixed order, so a run reproduces its bits:
//   sum_squares_blocks  each block squares and sums SQ_PER_BLOCK consecutive elements of one
//                       tensor (each thread its elements in order, then block_sum's fixed tree)
//                       into one f32 partial;
//   sum_squares_total   one block adds the partials in f64 (each thread a strided run of them
//                       in order, then a fixed tree) into total[0].
// As the CPU's sum_squares: f32 within a chunk, f64 across chunks. The composed form it
// replaces took three launches a tensor and a gradient-sized temporary (x², then its sum).
#include "common.cuh"

// The tensors' table, SQ_WORDS 64-bit words a tensor (cuda/sum_squares.rs writes it):
//   0 the f32 values' device address, 1 elements, 2 the tensor's first block.
#define SQ_WORDS 3
#define SQ_THREADS 256
#define SQ_PER_THREAD 16
#define SQ_PER_BLOCK (SQ_THREADS * SQ_PER_THREAD)
#define SQ_TOTAL_THREADS 256

extern "C" __global__ void __launch_bounds__(SQ_THREADS)
    sum_squares_blocks(const unsigned long long* table, int tensors, float* partials) {
    const unsigned long long block = blockIdx.x;
    const int lo = table_row(table, tensors, SQ_WORDS, 2, block);
    const unsigned long long* e = table + (size_t)lo * SQ_WORDS;
    const float* x = (const float*)e[0];
    const unsigned long long n = e[1];
    const unsigned long long start = (block - e[2]) * SQ_PER_BLOCK;
    float s = 0.0f;
    for (int k = 0; k < SQ_PER_THREAD; ++k) {
        const unsigned long long i = start + (unsigned long long)k * SQ_THREADS + threadIdx.x;
        if (i < n) s += x[i] * x[i];
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partials[block] = s;
}

extern "C" __global__ void __launch_bounds__(SQ_TOTAL_THREADS)
    sum_squares_total(const float* partials, unsigned long long count, double* total) {
    __shared__ double sums[SQ_TOTAL_THREADS];
    double s = 0.0;
    for (unsigned long long i = threadIdx.x; i < count; i += SQ_TOTAL_THREADS) s += (double)partials[i];
    sums[threadIdx.x] = s;
    __syncthreads();
    for (int w = SQ_TOTAL_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sums[threadIdx.x] += sums[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) total[0] = sums[0];
}
