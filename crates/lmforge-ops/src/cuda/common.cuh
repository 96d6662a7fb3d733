// What every lmforge kernel shares: bf16 <-> f32 conversions, and the few spellings that differ
// between nvcc and the CPU emulation that tests/cuda_emulated.rs compiles these files with
// (emu/cuda_emu.h: blocks run one after another, a block's threads as fibers).
#pragma once
#include <cstdint>
#ifdef LMFORGE_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
// The block's dynamic shared memory, as `T* name` (128-byte aligned; cp.async and ldmatrix
// need 16).
#define DYNAMIC_SHARED(T, name)                             \
    extern __shared__ __align__(128) float lmforge_smem[]; \
    T* name = reinterpret_cast<T*>(lmforge_smem)

// Ampere's warp-level matrix instructions (sm_80 on), as attention.cu's tensor-core kernels use
// them; emu/cuda_emu.h has the same four with the same register layouts.
//
// d += A·B, one warp: A 16 × 16 bf16 (row major), B 16 × 8 bf16, d 16 × 8 f32. With g = lane / 4
// and c = 2 · (lane % 4), a lane holds A's (g, c..c+1), (g + 8, c..c+1), (g, c+8..c+9),
// (g + 8, c+8..c+9) in a[0..4] (two bf16 a register, the lower column in the low half); B's
// (c..c+1, g) in b0 and (c+8..c+9, g) in b1; d's (g, c..c+1) in d[0..2] and (g + 8, c..c+1)
// in d[2..4].
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Four 8 × 8 bf16 matrices from shared memory, transposed: lanes 8i..8i+7 give the addresses of
// matrix i's eight rows (16 bytes each, 16-byte aligned); r[i] gets matrix i's elements
// (c, g) and (c + 1, g), c = 2 · (lane % 4), g = lane / 4: what mma_bf16 wants of a B stored
// with its k rows as the matrix rows.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* row) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
}
// 16 bytes from global to shared memory without passing through registers (both 16-byte
// aligned); zeros when !valid (src is then not read). Complete once cp_async_wait says so.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(at), "l"(src), "r"(valid ? 16 : 0));
}
// The same for 4 bytes (4-byte aligned).
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(at), "l"(src), "r"(valid ? 4 : 0));
}
// Closes the thread's group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of the thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// Two floats as bf16 in one register, the first in the low half (mma_bf16's operand order).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
}

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// The row of a multi-tensor kernel's table (`rows` rows of `words` 64-bit words, word `first` of
// each the tensor's first block, ascending) that block `block` works on: the last whose first
// block is at or before it.
__device__ __forceinline__ int table_row(const unsigned long long* table, int rows, int words, int first,
                                         unsigned long long block) {
    int lo = 0, hi = rows - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (table[(size_t)mid * words + first] <= block) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// The sum of a warp's v, on every lane (a butterfly: the same order every time).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum of every thread's v, on every thread, in a fixed order (warp sums, then one warp
// over them). blockDim.x is a multiple of 32, at most 1024; every thread must call it.
__device__ float block_sum(float v) {
    __shared__ float warps[32];
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // the previous call's readers are done with `warps`
    if (lane == 0) warps[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? warps[lane] : 0.0f;
    return warp_sum(v);
}
