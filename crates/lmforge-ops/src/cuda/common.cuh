// What every lmforge kernel shares: bf16 <-> f32 conversions, and the few spellings that differ
// between nvcc and the CPU emulation that tests/cuda_emulated.rs compiles these files with
// (emu/cuda_emu.h: blocks run one after another, a block's threads as fibers).
#pragma once
#ifdef LMFORGE_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <mma.h>
// The block's dynamic shared memory, as `T* name`.
// (128-byte aligned: wmma's tiles need 32.)
#define DYNAMIC_SHARED(T, name)                             \
    extern __shared__ __align__(128) float lmforge_smem[]; \
    T* name = reinterpret_cast<T*>(lmforge_smem)
#endif

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

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
