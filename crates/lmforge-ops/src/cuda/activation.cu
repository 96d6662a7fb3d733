// Element-wise activations on CUDA, forward and backward, the math of activation.rs in f32
// whatever the activations' dtype (f32 or bf16, rounded once on the way out). Grid-stride
// loops; the backward recomputes from the input, as on the CPU.
//
//   GELU-tanh: y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³)
//   GELU-erf:  y = ½x(1 + erf(x/√2))
//   bias + GELU (a linear layer's epilogue): y = gelu(z + b), b an f32 row of C; dz = dy·gelu'(z + b)
//   SwiGLU:    y = silu(g)·v;  dv = dy·silu(g), dg = dy·v·σ(g)(1 + g(1 − σ(g)))
//   RoPE (rotate-half, per head of D): y_j = x_j cos_j − x_{j+D/2} sin_j,
//     y_{j+D/2} = x_{j+D/2} cos_{j+D/2} + x_j sin_{j+D/2}; `transposed` applies the inverse
//     rotation (the backward). cos / sin: the T positions' (T, D) rows of the f32 tables.
//   A pre-norm sublayer's output: y = x + (p + b), the residual stream x plus the output
//     projection's product p and f32 bias b (a row of C, or none), rounded once.
#include "common.cuh"

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

#define SQRT_2_OVER_PI 0.7978845608f
#define GELU_C 0.044715f
#define FRAC_1_SQRT_2 0.7071067812f
#define INV_SQRT_2PI 0.3989422804f

__device__ __forceinline__ float gelu_value(float x, int erf_form) {
    if (erf_form) return 0.5f * x * (1.0f + erff(x * FRAC_1_SQRT_2));
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * x * (1.0f + GELU_C * x * x)));
}

__device__ __forceinline__ float gelu_grad(float x, int erf_form) {
    if (erf_form) return 0.5f * (1.0f + erff(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
    const float t = tanhf(SQRT_2_OVER_PI * x * (1.0f + GELU_C * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * x * x);
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__device__ void gelu_fwd(const T* x, T* y, size_t n, int erf_form) {
    GRID_STRIDE(i, n) y[i] = from_f<T>(gelu_value(to_f(x[i]), erf_form));
}

template <typename T>
__device__ void gelu_bwd(const T* x, const T* dy, T* dx, size_t n, int erf_form) {
    GRID_STRIDE(i, n) dx[i] = from_f<T>(to_f(dy[i]) * gelu_grad(to_f(x[i]), erf_form));
}

// z, y, dy, dz: (rows, c); the sum z + b formed in f32.
template <typename T>
__device__ void bias_gelu_fwd(const T* z, const float* b, T* y, size_t n, int c, int erf_form) {
    GRID_STRIDE(i, n) y[i] = from_f<T>(gelu_value(to_f(z[i]) + b[i % c], erf_form));
}

template <typename T>
__device__ void bias_gelu_bwd(const T* z, const float* b, const T* dy, T* dz, size_t n, int c, int erf_form) {
    GRID_STRIDE(i, n) dz[i] = from_f<T>(to_f(dy[i]) * gelu_grad(to_f(z[i]) + b[i % c], erf_form));
}

template <typename T>
__device__ void swiglu_fwd(const T* g, const T* u, T* y, size_t n) {
    GRID_STRIDE(i, n) {
        const float gv = to_f(g[i]);
        y[i] = from_f<T>(gv * sigmoid(gv) * to_f(u[i]));
    }
}

// dgu holds d gate (n values), then d up (n values).
template <typename T>
__device__ void swiglu_bwd(const T* g, const T* u, const T* dy, T* dgu, size_t n) {
    GRID_STRIDE(i, n) {
        const float gv = to_f(g[i]), uv = to_f(u[i]), d = to_f(dy[i]), s = sigmoid(gv);
        dgu[i] = from_f<T>(d * uv * s * (1.0f + gv * (1.0f - s)));
        dgu[n + i] = from_f<T>(d * gv * s);
    }
}

// x, y: (rows, w) with rows = B·T (position = row mod t), w = heads·d.
template <typename T>
__device__ void rope(const T* x, const float* cos, const float* sin, T* y, size_t n, int t, int w, int d,
                     int transposed) {
    const int half = d / 2;
    GRID_STRIDE(e, n) {
        const size_t row = e / w;
        const int col = (int)(e - row * w), j = col % d, pos = (int)(row % t);
        const size_t head = e - j;
        const float* c = cos + (size_t)pos * d;
        const float* s = sin + (size_t)pos * d;
        float out;
        if (j < half) {
            const float a = to_f(x[head + j]), b = to_f(x[head + j + half]);
            out = transposed ? a * c[j] + b * s[j + half] : a * c[j] - b * s[j];
        } else {
            const float a = to_f(x[head + j - half]), b = to_f(x[head + j]);
            out = transposed ? b * c[j] - a * s[j - half] : b * c[j] + a * s[j];
        }
        y[e] = from_f<T>(out);
    }
}

// x, p, y: (rows, c); b: null when the projection has no bias; x: null for a bias add alone.
template <typename T>
__device__ void residual_add(const T* x, const T* p, const float* b, T* y, size_t n, int c) {
    GRID_STRIDE(i, n) {
        const float v = to_f(p[i]) + (b ? b[i % c] : 0.0f);
        y[i] = from_f<T>(x ? to_f(x[i]) + v : v);
    }
}

#define ACTIVATION_KERNELS(T, SUFFIX)                                                                             \
    extern "C" __global__ void gelu_fwd_##SUFFIX(const T* x, T* y, size_t n, int erf_form) {                      \
        gelu_fwd<T>(x, y, n, erf_form);                                                                            \
    }                                                                                                              \
    extern "C" __global__ void gelu_bwd_##SUFFIX(const T* x, const T* dy, T* dx, size_t n, int erf_form) {        \
        gelu_bwd<T>(x, dy, dx, n, erf_form);                                                                       \
    }                                                                                                              \
    extern "C" __global__ void bias_gelu_fwd_##SUFFIX(const T* z, const float* b, T* y, size_t n, int c,          \
                                                      int erf_form) {                                              \
        bias_gelu_fwd<T>(z, b, y, n, c, erf_form);                                                                 \
    }                                                                                                              \
    extern "C" __global__ void bias_gelu_bwd_##SUFFIX(const T* z, const float* b, const T* dy, T* dz, size_t n,   \
                                                      int c, int erf_form) {                                       \
        bias_gelu_bwd<T>(z, b, dy, dz, n, c, erf_form);                                                            \
    }                                                                                                              \
    extern "C" __global__ void swiglu_fwd_##SUFFIX(const T* g, const T* u, T* y, size_t n) {                      \
        swiglu_fwd<T>(g, u, y, n);                                                                                 \
    }                                                                                                              \
    extern "C" __global__ void swiglu_bwd_##SUFFIX(const T* g, const T* u, const T* dy, T* dgu, size_t n) {       \
        swiglu_bwd<T>(g, u, dy, dgu, n);                                                                           \
    }                                                                                                              \
    extern "C" __global__ void rope_##SUFFIX(const T* x, const float* cos, const float* sin, T* y, size_t n,      \
                                             int t, int w, int d, int transposed) {                               \
        rope<T>(x, cos, sin, y, n, t, w, d, transposed);                                                           \
    }                                                                                                              \
    extern "C" __global__ void residual_add_##SUFFIX(const T* x, const T* p, const float* b, T* y, size_t n,      \
                                                     int c) {                                                      \
        residual_add<T>(x, p, b, y, n, c);                                                                         \
    }

ACTIVATION_KERNELS(float, f32)
ACTIVATION_KERNELS(__nv_bfloat16, bf16)
