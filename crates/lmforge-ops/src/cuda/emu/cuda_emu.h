// A CPU stand-in for the CUDA runtime, enough to run lmforge's kernels (../*.cu) without a GPU:
// tests/cuda_emulated.rs compiles them with -DLMFORGE_CUDA_EMU against this header and runs
// check.cpp, which compares them with plain loops. It checks the kernels' indexing, tiling,
// masking and arithmetic (and the 16-byte alignment cp.async and ldmatrix need), not their
// speed or memory model.
//
// A launch runs the grid's blocks one after another; a block's threads run as fibers on the
// calling thread (not CPU threads: a block of 1024 CPU threads on two cores spent most of the
// check waking threads at barriers), so `__shared__` variables can be function statics (one
// block at a time uses them). Each thread runs until it reaches a barrier or returns:
// __syncthreads waits for the block, __syncwarp for the thread's warp of 32, and
// __shfl_xor_sync is a write-barrier-read-barrier through a per-block array within the warp.
// Between two of the block's barriers each warp in turn runs as far as it can before the next
// warp starts, its threads one after another; warps and threads go forwards in one phase and
// backwards in the next (and the other way round in the next block). So a thread reading
// shared memory that another thread writes without a barrier between them finds what was
// there before (NaN for dynamic shared memory, as garbage), whichever of the two comes first:
// removing any one of the kernels' barriers fails the check, except where another barrier
// already orders the same accesses. A barrier that some threads never reach (they returned,
// or wait at another) would deadlock or be undefined on the GPU: the check stops and says so.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

// Switching between fibers. On x86-64 a switch saves the callee-saved registers on the stack
// it leaves and loads the stack pointer of the other (glibc's swapcontext also saves and sets
// the signal mask, two system calls a switch: the check took 36 s that way, 3 s this way);
// elsewhere ucontext.
#if defined(__x86_64__)
struct EmuContext {
    void* sp;
};
extern "C" void emu_switch_stacks(void** save_sp, void* load_sp);
asm(R"(
    .pushsection .text
    .globl emu_switch_stacks
    .type emu_switch_stacks, @function
emu_switch_stacks:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stacks, .-emu_switch_stacks
    .popsection
)");
inline void emu_switch(EmuContext& from, const EmuContext& to) { emu_switch_stacks(&from.sp, to.sp); }
// `c` will start `entry` (which never returns) on the stack [stack, stack + size).
inline void emu_prepare(EmuContext& c, char* stack, size_t size, void (*entry)()) {
    auto* sp = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15));
    *--sp = nullptr;                           // entry's return address: none (rsp ≡ 8 mod 16 there, as after a call)
    *--sp = reinterpret_cast<void*>(entry);    // where the switch's `ret` goes
    for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp, rbx, r12-r15
    c.sp = sp;
}
#else
struct EmuContext {
    ucontext_t uc;
};
inline void emu_switch(EmuContext& from, const EmuContext& to) { swapcontext(&from.uc, &to.uc); }
inline void emu_prepare(EmuContext& c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack = {stack, 0, size};
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

// One CUDA thread of the running block: its context and where it stands.
enum class EmuState { Ready, AtBlockBarrier, AtWarpBarrier, Done };
// A cp.async copy in flight: `valid` bytes of `size` from src, the rest zeros.
struct EmuCopy {
    void* dst;
    const void* src;
    unsigned size, valid;
};
struct EmuFiber {
    EmuContext context;
    EmuState state;
    std::vector<EmuCopy> open;                 // issued since the last commit
    std::vector<std::vector<EmuCopy>> groups;  // committed, oldest first
};

struct EmuBlock {
    std::vector<EmuFiber> fibers;
    unsigned current = 0;            // the fiber running now
    EmuContext scheduler;            // where a fiber goes at a barrier or when it returns
    const std::function<void()>* kernel = nullptr;
    std::vector<float> lanes;
    std::vector<float> dynamic;
    std::vector<uint32_t> words;            // warp-collective instructions' operands, 8 a thread
    std::vector<const void*> addresses;     // ldmatrix's row addresses, one a thread
};
inline EmuBlock emu_block;

#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu_block.dynamic.data())

// The running thread waits at a barrier: back to the scheduler until it releases the barrier.
inline void emu_wait(EmuState barrier) {
    EmuFiber& me = emu_block.fibers[emu_block.current];
    me.state = barrier;
    emu_switch(me.context, emu_block.scheduler);
}
inline void __syncthreads() { emu_wait(EmuState::AtBlockBarrier); }
// A barrier over the thread's warp of 32 only, as on the GPU (the kernels' masks are all full).
inline void __syncwarp(unsigned = 0xffffffffu) { emu_wait(EmuState::AtWarpBarrier); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
    const unsigned me = threadIdx.x;
    emu_block.lanes[me] = v;
    __syncwarp();
    // Lanes exchange within their warp of 32, as on the GPU.
    const float other = emu_block.lanes[(me & ~31u) | ((me & 31u) ^ (unsigned)mask)];
    __syncwarp();
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
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }

// Fibers' stacks, kept for the next launch: 1 MiB each (the attention kernels' per-thread
// rows and register tiles live there), with a page below that faults on an overflow.
inline std::vector<char*> emu_stacks;
constexpr size_t EMU_STACK = 1 << 20, EMU_GUARD = 1 << 12;

inline char* emu_stack(unsigned i) {
    while (emu_stacks.size() <= i) {
        void* p = mmap(nullptr, EMU_STACK + EMU_GUARD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED || mprotect(p, EMU_GUARD, PROT_NONE) != 0) {
            std::perror("cuda_emu: a fiber's stack");
            std::exit(2);
        }
        emu_stacks.push_back(static_cast<char*>(p) + EMU_GUARD);
    }
    return emu_stacks[i];
}

[[noreturn]] inline void emu_fault(const char* what) {
    std::fprintf(stderr, "cuda_emu: block (%u, %u, %u), thread %u: %s\n", blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, what);
    std::exit(2);
}

[[noreturn]] inline void emu_fiber_main() {
    (*emu_block.kernel)();
    const EmuFiber& me = emu_block.fibers[emu_block.current];
    if (!me.open.empty() || !me.groups.empty()) emu_fault("returned with cp.async copies not waited for");
    emu_wait(EmuState::Done);  // never resumed
    std::abort();
}

[[noreturn]] inline void emu_divergence(dim3 b, unsigned first, unsigned count, const char* what) {
    std::fprintf(stderr, "cuda_emu: block (%u, %u, %u), threads %u..%u: %s\n", b.x, b.y, b.z, first, first + count - 1, what);
    std::exit(2);
}

// Releases the barrier `barrier` if threads [first, end) all wait at it: false if none does; a
// barrier some of them wait at while others have returned or wait elsewhere never releases (a
// deadlock or undefined on the GPU), so the check stops there saying `what`.
inline bool emu_release(unsigned first, unsigned end, EmuState barrier, const char* what) {
    auto& f = emu_block.fibers;
    unsigned waiting = 0;
    for (unsigned t = first; t < end; ++t) waiting += f[t].state == barrier;
    if (waiting == 0) return false;
    if (waiting != end - first) emu_divergence(blockIdx, first, end - first, what);
    for (unsigned t = first; t < end; ++t) f[t].state = EmuState::Ready;
    return true;
}

// Runs threads [first, end) of the block (a warp), in turn, forwards or backwards, each to its
// next barrier or return, releasing the warp's barrier each time all its threads wait there:
// until every thread of the warp waits at __syncthreads or has returned.
inline void emu_run_warp(unsigned first, unsigned end, bool forwards) {
    auto& f = emu_block.fibers;
    for (;;) {
        for (unsigned i = first; i < end; ++i) {
            const unsigned t = forwards ? i : first + end - 1 - i;
            if (f[t].state != EmuState::Ready) continue;
            emu_block.current = t;
            threadIdx = {t, 0, 0};
            emu_switch(emu_block.scheduler, f[t].context);
        }
        if (!emu_release(first, end, EmuState::AtWarpBarrier, "some threads of the warp wait at __syncwarp or a shuffle, others do not")) return;
    }
}

// Runs `kernel` (a callable taking no arguments) on a grid of blocks.
inline void emu_launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z, warps = (n + 31) / 32;
    emu_block.kernel = &kernel;
    emu_block.fibers.resize(n);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                emu_block.lanes.assign(n, 0.0f);
                // Garbage, as a GPU's shared memory: the kernels must not read what they did not write.
                emu_block.dynamic.assign(shared_bytes / sizeof(float) + 1, std::nanf(""));
                emu_block.words.assign(8 * n, 0);
                emu_block.addresses.assign(n, nullptr);
                for (unsigned t = 0; t < n; ++t) {
                    emu_block.fibers[t].state = EmuState::Ready;
                    emu_block.fibers[t].open.clear();
                    emu_block.fibers[t].groups.clear();
                    emu_prepare(emu_block.fibers[t].context, emu_stack(t), EMU_STACK, emu_fiber_main);
                }
                // Phases between the block's barriers: each warp in turn runs as far as it can
                // before the next starts, the warps forwards in one phase and backwards in the
                // next (and the other way round in the next block).
                for (unsigned phase = 0;; ++phase) {
                    const bool forwards = (phase + x + y + z) % 2 == 0;
                    for (unsigned i = 0; i < warps; ++i) {
                        const unsigned w = forwards ? i : warps - 1 - i;
                        emu_run_warp(w * 32, std::min(n, w * 32 + 32), forwards);
                    }
                    // Every thread now waits at __syncthreads or has returned: all returned ends the block.
                    if (!emu_release(0, n, EmuState::AtBlockBarrier, "some threads wait at __syncthreads while others have returned")) break;
                }
            }
}

// Ampere's warp-level instructions (common.cuh has the GPU's): the same operand layouts, each a
// warp-collective exchange through the block's `words` / `addresses` between two warp barriers,
// so every lane of the warp must call them together, as on the GPU.

// d += A·B (16 × 16 bf16 by 16 × 8 bf16, f32), A and B gathered from the warp's lanes by the
// m16n8k16 layout common.cuh describes; the products summed in k order in f32.
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const unsigned me = threadIdx.x, base = me & ~31u, lane = me & 31u;
    uint32_t* w = emu_block.words.data();
    for (int r = 0; r < 4; ++r) w[me * 8 + r] = a[r];
    w[me * 8 + 4] = b0, w[me * 8 + 5] = b1;
    __syncwarp();
    auto half = [](uint32_t reg, int k) { return __bfloat162float({(uint16_t)(k & 1 ? reg >> 16 : reg & 0xffffu)}); };
    // A(row, k) lives in lane (row % 8)·4 + (k % 8)/2, register (row ≥ 8) + 2·(k ≥ 8); B(k, col)
    // in lane col·4 + (k % 8)/2, register 4 + (k ≥ 8).
    auto a_at = [&](int row, int k) { return half(w[(base + (row % 8) * 4 + (k % 8) / 2) * 8 + (row >= 8) + 2 * (k >= 8)], k); };
    auto b_at = [&](int k, int col) { return half(w[(base + col * 4 + (k % 8) / 2) * 8 + 4 + (k >= 8)], k); };
    float out[4];
    for (int e = 0; e < 4; ++e) {
        const int row = lane / 4 + 8 * (e / 2), col = 2 * (lane % 4) + (e % 2);
        float s = d[e];
        for (int k = 0; k < 16; ++k) s += a_at(row, k) * b_at(k, col);
        out[e] = s;
    }
    __syncwarp();
    for (int e = 0; e < 4; ++e) d[e] = out[e];
}

// ldmatrix .x4 .trans: lane l gets, in r[i], elements (2·(l%4), l/4) and (2·(l%4) + 1, l/4) of
// matrix i, whose row j is at the address lane 8i + j gave.
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* row) {
    const unsigned me = threadIdx.x, base = me & ~31u, lane = me & 31u;
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) emu_fault("ldmatrix: a row address not 16-byte aligned");
    emu_block.addresses[me] = row;
    __syncwarp();
    for (int i = 0; i < 4; ++i) {
        auto at = [&](unsigned j) { return static_cast<const __nv_bfloat16*>(emu_block.addresses[base + 8 * i + j])[lane / 4]; };
        r[i] = (uint32_t)at(2 * (lane % 4)).bits | ((uint32_t)at(2 * (lane % 4) + 1).bits << 16);
    }
    __syncwarp();
}

// cp.async: on the GPU the bytes land at some time between the issue and the wait that retires
// their group. Here the destination turns to NaNs when the copy is issued and gets the bytes at
// that wait, so a kernel that reads a tile before waiting for it, or issues a copy over one
// that other warps may still be reading (no barrier between), reads NaNs.
inline void emu_cp_async(void* dst, const void* src, bool valid, unsigned size) {
    if (reinterpret_cast<uintptr_t>(dst) % size != 0 || (valid && reinterpret_cast<uintptr_t>(src) % size != 0))
        emu_fault("cp.async: an address not aligned to the copy's size");
    std::memset(dst, 0xff, size);  // all-ones: a NaN as bf16 and as f32
    emu_block.fibers[emu_block.current].open.push_back({dst, src, size, valid ? size : 0u});
}
inline void cp_async16(void* dst, const void* src, bool valid) { emu_cp_async(dst, src, valid, 16); }
inline void cp_async4(void* dst, const void* src, bool valid) { emu_cp_async(dst, src, valid, 4); }
inline void cp_async_commit() {
    EmuFiber& me = emu_block.fibers[emu_block.current];
    me.groups.push_back(std::move(me.open));
    me.open.clear();
}
template <int N>
inline void cp_async_wait() {
    EmuFiber& me = emu_block.fibers[emu_block.current];
    while (me.groups.size() > N) {
        for (const EmuCopy& c : me.groups.front()) {
            std::memcpy(c.dst, c.src, c.valid);
            std::memset(static_cast<char*>(c.dst) + c.valid, 0, c.size - c.valid);
        }
        me.groups.erase(me.groups.begin());
    }
}
