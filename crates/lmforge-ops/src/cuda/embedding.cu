// The token embedding on CUDA (f32 table, u32 ids): the forward gathers rows; the backward sums
// d out's rows into the table's gradient by token, with no atomics and in the CPU's order.
// candle's own backward (index_add) gives each of the C columns one thread that walks all N ids
// in turn — C threads in all, N dependent steps each (GPT-2 at 16 × 1024 tokens: 768 threads,
// 16384 steps). Here the positions are sorted by (token, position) — a bitonic sort of 64-bit
// keys, the steps within a tile of 2048 in shared memory, the wider ones a launch each — and
// then each token's rows are summed in position order by a block of its own: the same
// additions in the same order as index_add, so the same bits.
#include "common.cuh"

// out (n, c) = table[ids] (v rows of c); an id past the table gives a zero row (the Rust side
// checks ids where it can; a kernel cannot fail).
extern "C" __global__ void embedding_rows(const float* table, const unsigned* ids, float* out, size_t n, size_t c,
                                          size_t v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n * c; i += (size_t)blockDim.x * gridDim.x) {
        const size_t row = ids[i / c];
        out[i] = row < v ? table[row * c + i % c] : 0.0f;
    }
}

// keys[j] = (ids[j] << 32) | j for the n positions; padded past n with the largest key, which
// sorts last.
extern "C" __global__ void embedding_keys(const unsigned* ids, unsigned long long* keys, size_t n, size_t padded) {
    for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < padded; j += (size_t)blockDim.x * gridDim.x)
        keys[j] = j < n ? ((unsigned long long)ids[j] << 32) | j : ~0ull;
}

// Keys a block sorts in shared memory: two a thread of 1024.
#define SORT_TILE 2048

// The bitonic sort's compare-and-swap of element i with its partner i ^ j (by the lower of the
// two), ascending where bit k of i's global index is clear.
__device__ __forceinline__ void bitonic_pair(unsigned long long* keys, size_t i, size_t j, size_t global_i, size_t k) {
    const size_t partner = i ^ j;
    if (partner <= i) return;
    const unsigned long long a = keys[i], b = keys[partner];
    if ((a > b) == ((global_i & k) == 0)) {
        keys[i] = b;
        keys[partner] = a;
    }
}

// The steps of the bitonic sort whose partners lie within one tile of SORT_TILE keys (or of all
// `padded`, if fewer), in shared memory, for k = k_from .. k_to (doubling) and, for each, j from
// min(k / 2, j_from) down to 1 — the compare-and-swaps of embedding_bitonic in the same order,
// one launch instead of one a step.
extern "C" __global__ void embedding_bitonic_local(unsigned long long* keys, size_t padded, size_t k_from, size_t k_to,
                                                   size_t j_from) {
    __shared__ unsigned long long tile[SORT_TILE];
    const size_t size = padded < SORT_TILE ? padded : SORT_TILE;
    const size_t base = (size_t)blockIdx.x * size;
    for (size_t t = threadIdx.x; t < size; t += blockDim.x) tile[t] = keys[base + t];
    __syncthreads();
    for (size_t k = k_from; k <= k_to; k *= 2) {
        for (size_t j = k / 2 < j_from ? k / 2 : j_from; j > 0; j /= 2) {
            for (size_t t = threadIdx.x; t < size; t += blockDim.x) bitonic_pair(tile, t, j, base + t, k);
            __syncthreads();
        }
    }
    for (size_t t = threadIdx.x; t < size; t += blockDim.x) keys[base + t] = tile[t];
}

// One step (k, j) of the bitonic sort of `padded` (a power of two) keys into ascending order:
// each element and its partner i ^ j, compared once, by the lower of the two.
extern "C" __global__ void embedding_bitonic(unsigned long long* keys, size_t padded, size_t k, size_t j) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < padded; i += (size_t)blockDim.x * gridDim.x)
        bitonic_pair(keys, i, j, i, k);
}

// d table (v, c), zeroed beforehand: block b looks at sorted position b; where a token's run of
// positions starts, its threads sum the run's rows of dy (n, c) column by column, in position
// order, and write the token's row.
extern "C" __global__ void embedding_grad(const unsigned long long* keys, const float* dy, float* dtable, size_t n,
                                          size_t c, size_t v) {
    const size_t b = blockIdx.x;
    if (b >= n) return;
    const unsigned long long token = keys[b] >> 32;
    if (token >= v || (b > 0 && keys[b - 1] >> 32 == token)) return;
    size_t end = b + 1;
    while (end < n && keys[end] >> 32 == token) ++end;
    for (size_t col = threadIdx.x; col < c; col += blockDim.x) {
        float acc = 0.0f;
        for (size_t r = b; r < end; ++r) acc += dy[(keys[r] & 0xffffffffull) * c + col];
        dtable[token * c + col] = acc;
    }
}
