// A CPU stand-in for the CUDA runtime, enough to run lmforge's kernels (../*.cu) without a GPU:
// scripts/cuda-emulate.sh compiles them with -DLMFORGE_CUDA_EMU against this header and runs
// check.cpp, which compares them with plain loops. It checks the kernels' indexing, tiling,
// masking and arithmetic, not their speed, memory model, or wmma's alignment rules.
//
// A launch runs the grid's blocks one after another; a block's threads run as CPU threads, so
// `__shared__` variables can be function statics (one block at a time uses them),
// __syncthreads is a barrier over the block, and __shfl_xor_sync a write-barrier-read-barrier
// through a per-block array (every thread of the block must reach it, which lmforge's kernels
// guarantee: their shuffles sit in block-uniform control flow).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

struct EmuBlock {
    std::unique_ptr<std::barrier<>> barrier;
    std::vector<float> lanes;
    std::vector<float> dynamic;
};
inline EmuBlock emu_block;

#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu_block.dynamic.data())

inline void __syncthreads() { emu_block.barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
    const unsigned me = threadIdx.x;
    emu_block.lanes[me] = v;
    __syncthreads();
    // Lanes exchange within their warp of 32, as on the GPU.
    const float other = emu_block.lanes[(me & ~31u) | ((me & 31u) ^ (unsigned)mask)];
    __syncthreads();
    return other;
}

struct float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

using std::max;
using std::min;

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 v) {
    uint32_t u = (uint32_t)v.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// Round to nearest even, as __float2bfloat16 (NaN kept a NaN).
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}

// Runs `kernel` (a callable taking no arguments) on a grid of blocks.
inline void emu_launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                emu_block.barrier = std::make_unique<std::barrier<>>(n);
                emu_block.lanes.assign(n, 0.0f);
                // Garbage, as a GPU's shared memory: the kernels must not read what they did not write.
                emu_block.dynamic.assign(shared_bytes / sizeof(float) + 1, std::nanf(""));
                std::vector<std::thread> threads;
                for (unsigned tx = 0; tx < n; ++tx)
                    threads.emplace_back([&, tx, x, y, z] {
                        threadIdx = {tx, 0, 0};
                        blockIdx = {x, y, z};
                        kernel();
                    });
                for (auto& t : threads) t.join();
            }
}

// The warp-level matrix API (nvcuda::wmma) for 16×16×16 bf16 products with f32 accumulators.
// Every thread of a warp holds the whole tile here (on the GPU each holds a share in an
// unspecified layout), so kernels may only use fragments through these calls and uniform
// element-wise loops over `num_elements`; stores are made by the warp's lane 0.
inline void __syncwarp(unsigned = 0xffffffffu) { __syncthreads(); }
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
    static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
    static constexpr int num_elements = rows * cols;
    T x[rows * cols];
};
template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
    using F = fragment<Use, M, N, K, T, Layout>;
    for (int i = 0; i < F::rows; ++i)
        for (int j = 0; j < F::cols; ++j)
            f.x[i * F::cols + j] = std::is_same_v<Layout, col_major> ? p[j * ldm + i] : p[i * ldm + j];
}
template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) f.x[i * N + j] = layout == mem_col_major ? p[j * ldm + i] : p[i * ldm + j];
}
template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
    if ((threadIdx.x & 31) != 0) return;
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) (layout == mem_col_major ? p[j * ldm + i] : p[i * ldm + j]) = f.x[i * N + j];
}
template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T v) {
    for (auto& e : f.x) e = v;
}
template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
    float out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float s = c.x[i * N + j];
            for (int k = 0; k < K; ++k) s += __bfloat162float(a.x[i * K + k]) * __bfloat162float(b.x[k * N + j]);
            out[i * N + j] = s;
        }
    std::memcpy(d.x, out, sizeof out);
}
}  // namespace nvcuda::wmma
