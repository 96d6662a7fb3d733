// lmforge's CUDA kernels run on the CPU (cuda_emu.h) against plain double-precision loops of
// the same math: cross-entropy's row log-sum-exp and logit gradient; GELU (both forms), SwiGLU
// and RoPE forward and backward, the sublayers' residual add and the projections' bias add;
// attention forward and backward (causal and padded, separate and packed operands,
// grouped-query heads, every DMAX, f32 and bf16, and the bf16 tensor-core kernels at D = 64 and
// 128 on the emulator's mma.sync, ldmatrix and cp.async), LayerNorm / RMSNorm forward and
// backward (with and without a residual's gradient added into dx), column sums, AdamW's update.
// Prints one line per case and exits non-zero on any mismatch.
// Built and run by tests/cuda_emulated.rs; on the GPU, lmforge-ops' `on_cuda` tests check the
// same kernels against the reference ops.
#include "../activation.cu"
#include "../adafactor.cu"
#include "../adamw.cu"
#include "../attention.cu"
#include "../embedding.cu"
#include "../loss.cu"
#include "../norm.cu"
#include "../reduce.cu"
#include "../sum_squares.cu"

#include <cstdio>
#include <random>
#include <string>
#include <type_traits>

static int failures = 0;

static unsigned grid_for(size_t n) { return (unsigned)std::min<size_t>((n + 255) / 256, 65535); }

static void report(const std::string& what, double err, double bound) {
    const bool ok = err <= bound;
    std::printf("%-4s %-60s max rel err %.2e (bound %.0e)\n", ok ? "ok" : "FAIL", what.c_str(), err, bound);
    failures += !ok;
}

// max |got - want| / max |want|
template <typename T>
static double rel_err(const std::vector<T>& got, const std::vector<double>& want) {
    double diff = 0, scale = 1e-12;
    for (size_t i = 0; i < want.size(); ++i) {
        const double g = to_f(got[i]);
        if (!std::isfinite(g)) return INFINITY;
        diff = std::max(diff, std::fabs(g - want[i]));
        scale = std::max(scale, std::fabs(want[i]));
    }
    return diff / scale;
}

template <typename T>
static std::vector<T> random_values(size_t n, std::mt19937& rng, float spread = 1.0f) {
    std::normal_distribution<float> dist(0.0f, spread);
    std::vector<T> out(n);
    for (auto& x : out) x = from_f<T>(dist(rng));
    return out;
}

struct AttnCase {
    int b, t, h, kh, d;
    bool causal, packed;
    std::vector<int> key_lens;  // padded cases
};

template <typename T, int DMAX>
static void attention_case(const AttnCase& c, const char* dtype, double bound, double grad_bound) {
    std::mt19937 rng(c.t * 131 + c.d);
    const int b = c.b, t = c.t, h = c.h, kh = c.kh, d = c.d, rep = h / kh;
    const float scale = 1.0f / std::sqrt((float)d);
    // Operands: one packed (B, T, (H + 2K)·D) buffer, or three dense ones.
    const long long pw = (long long)(h + 2 * kh) * d;
    std::vector<T> packed, qb, kb, vb;
    const T *q, *k, *v;
    long long q_sb, q_st, kv_sb, kv_st;
    if (c.packed) {
        packed = random_values<T>(b * t * pw, rng);
        q = packed.data(), k = q + h * d, v = q + (h + kh) * d;
        q_st = kv_st = pw, q_sb = kv_sb = pw * t;
    } else {
        qb = random_values<T>((size_t)b * t * h * d, rng), kb = random_values<T>((size_t)b * t * kh * d, rng);
        vb = random_values<T>((size_t)b * t * kh * d, rng);
        q = qb.data(), k = kb.data(), v = vb.data();
        q_st = (long long)h * d, q_sb = q_st * t, kv_st = (long long)kh * d, kv_sb = kv_st * t;
    }
    std::vector<int> lens = c.causal ? std::vector<int>(b, 0) : c.key_lens;
    auto at = [](const T* p, long long sb, long long st, int bi, int i, int hd, int d, int col) {
        return (double)to_f(p[bi * sb + i * st + hd * d + col]);
    };
    auto sees = [&](int bi, int i, int j) { return c.causal ? j <= i : j < lens[bi]; };

    // The reference, in double.
    std::vector<double> y_ref((size_t)b * t * h * d), lse_ref((size_t)b * h * t);
    std::vector<double> dq_ref(y_ref.size()), dk_ref((size_t)b * t * kh * d), dv_ref(dk_ref.size());
    std::vector<T> dy = random_values<T>(y_ref.size(), rng);
    for (int bi = 0; bi < b; ++bi)
        for (int hi = 0; hi < h; ++hi) {
            const int g = hi / rep;
            for (int i = 0; i < t; ++i) {
                std::vector<double> p(t, 0.0);
                double mx = -INFINITY;
                for (int j = 0; j < t; ++j)
                    if (sees(bi, i, j)) {
                        double s = 0;
                        for (int e = 0; e < d; ++e) s += at(q, q_sb, q_st, bi, i, hi, d, e) * at(k, kv_sb, kv_st, bi, j, g, d, e);
                        p[j] = s * scale;
                        mx = std::max(mx, p[j]);
                    }
                double z = 0;
                for (int j = 0; j < t; ++j) z += sees(bi, i, j) ? std::exp(p[j] - mx) : 0.0;
                for (int j = 0; j < t; ++j) p[j] = sees(bi, i, j) ? std::exp(p[j] - mx) / z : 0.0;
                lse_ref[((size_t)bi * h + hi) * t + i] = mx + std::log(z);
                const size_t yrow = (((size_t)bi * t + i) * h + hi) * d;
                std::vector<double> dp(t, 0.0);
                double delta = 0;
                for (int j = 0; j < t; ++j) {
                    for (int e = 0; e < d; ++e) {
                        y_ref[yrow + e] += p[j] * at(v, kv_sb, kv_st, bi, j, g, d, e);
                        dp[j] += to_f(dy[yrow + e]) * at(v, kv_sb, kv_st, bi, j, g, d, e);
                    }
                    delta += p[j] * dp[j];
                }
                for (int j = 0; j < t; ++j) {
                    const double ds = p[j] * (dp[j] - delta);
                    const size_t krow = (((size_t)bi * t + j) * kh + g) * d;
                    for (int e = 0; e < d; ++e) {
                        dq_ref[yrow + e] += scale * ds * at(k, kv_sb, kv_st, bi, j, g, d, e);
                        dk_ref[krow + e] += scale * ds * at(q, q_sb, q_st, bi, i, hi, d, e);
                        dv_ref[krow + e] += p[j] * to_f(dy[yrow + e]);
                    }
                }
            }
        }

    // The kernels.
    const int ld = d + 1;
    std::vector<T> y(y_ref.size());
    std::vector<float> lse(lse_ref.size(), NAN);
    const unsigned row_blocks = (t + ROWS - 1) / ROWS;
    emu_launch({row_blocks, (unsigned)h, (unsigned)b}, {THREADS}, 4 * ((ROWS + KEYS) * ld + ROWS * (KEYS + 1)), [&] {
        attn_fwd<T, DMAX>(q, q_sb, q_st, k, kv_sb, kv_st, v, kv_sb, kv_st, y.data(), lse.data(), lens.data(),
                          c.causal, t, h, kh, d, scale);
    });
    std::vector<float> delta(lse.size(), NAN);
    std::vector<double> delta_ref(lse.size());
    for (int bi = 0; bi < b; ++bi)
        for (int i = 0; i < t; ++i)
            for (int hi = 0; hi < h; ++hi) {
                double s = 0;
                for (int e = 0; e < d; ++e) {
                    const size_t at = (((size_t)bi * t + i) * h + hi) * d + e;
                    s += (double)to_f(dy[at]) * to_f(y[at]);
                }
                delta_ref[((size_t)bi * h + hi) * t + i] = s;
            }
    const unsigned delta_blocks = (unsigned)((b * t * h + 7) / 8);
    emu_launch({delta_blocks}, {THREADS}, 0, [&] { attn_delta<T>(y.data(), dy.data(), delta.data(), b, t, h, d); });
    // Gradients into one packed (B, T, (H + 2K)·D) buffer, as the packed op returns them.
    std::vector<T> grad((size_t)b * t * pw, from_f<T>(NAN));
    T *dq = grad.data(), *dk = dq + h * d, *dv = dq + (h + kh) * d;
    emu_launch({row_blocks, (unsigned)h, (unsigned)b}, {THREADS}, 4 * ((2 * ROWS + 2 * KEYS) * ld + ROWS * (KEYS + 1)),
               [&] {
                   attn_bwd_dq<T, DMAX>(q, q_sb, q_st, k, kv_sb, kv_st, v, kv_sb, kv_st, dy.data(), lse.data(),
                                        delta.data(), dq, pw * t, pw, lens.data(), c.causal, t, h, kh, d, scale);
               });
    emu_launch({row_blocks, (unsigned)kh, (unsigned)b}, {THREADS},
               4 * ((2 * ROWS + 2 * QUERIES) * ld + 2 * ROWS * (QUERIES + 1) + 2 * QUERIES), [&] {
                   attn_bwd_dkdv<T, DMAX>(q, q_sb, q_st, k, kv_sb, kv_st, v, kv_sb, kv_st, dy.data(), lse.data(),
                                          delta.data(), dk, dv, pw * t, pw, lens.data(), c.causal, t, h, kh, d, scale);
               });
    // bf16 with D = 64 or 128: the tensor-core forward too (P rounded to bf16 before P·V).
    if constexpr (std::is_same_v<T, __nv_bfloat16> && (DMAX == 64 || DMAX == 128)) {
        if (d == DMAX) {
            constexpr int D = DMAX;
            std::vector<T> y_tc(y_ref.size());
            std::vector<float> lse_tc(lse_ref.size(), NAN);
            emu_launch({row_blocks, (unsigned)h, (unsigned)b}, {TC_WARPS * 32}, tc_fwd_shared<D>(), [&] {
                attn_fwd_tc<D>(q, q_sb, q_st, k, kv_sb, kv_st, v, kv_sb, kv_st, y_tc.data(), lse_tc.data(),
                               lens.data(), c.causal, t, h, kh, scale);
            });
            char tc[160];
            std::snprintf(tc, sizeof tc, "attention tensor-core forward bf16 %s B%d T%d H%d K%d D%d",
                          c.causal ? "causal" : "padded", b, t, h, kh, d);
            report(std::string(tc) + " y", rel_err(y_tc, y_ref), bound);
            report(std::string(tc) + " lse", rel_err(lse_tc, lse_ref), 1e-6);
        }
    }
    auto unpack = [&](int col, int width) {
        std::vector<T> out;
        for (int r = 0; r < b * t; ++r)
            for (int e = 0; e < width; ++e) out.push_back(grad[r * pw + col + e]);
        return out;
    };
    char name[160];
    std::snprintf(name, sizeof name, "attention %s %s%s B%d T%d H%d K%d D%d (DMAX %d)", dtype,
                  c.causal ? "causal" : "padded", c.packed ? " packed" : "", b, t, h, kh, d, DMAX);
    std::vector<double> lse_want(lse_ref);
    report(std::string(name) + " y", rel_err(y, y_ref), bound);
    report(std::string(name) + " lse", rel_err(lse, lse_want), bound);
    report(std::string(name) + " delta", rel_err(delta, delta_ref), 2e-6);
    report(std::string(name) + " dq", rel_err(unpack(0, h * d), dq_ref), grad_bound);
    report(std::string(name) + " dk", rel_err(unpack(h * d, kh * d), dk_ref), grad_bound);
    report(std::string(name) + " dv", rel_err(unpack((h + kh) * d, kh * d), dv_ref), grad_bound);
    // bf16 with D = 64 or 128: the tensor-core backward too (dS and P rounded to bf16 for the products).
    if constexpr (std::is_same_v<T, __nv_bfloat16> && (DMAX == 64 || DMAX == 128)) {
        if (d == DMAX) {
            constexpr int D = DMAX;
            std::fill(grad.begin(), grad.end(), from_f<T>(NAN));
            emu_launch({row_blocks, (unsigned)h, (unsigned)b}, {TC_WARPS * 32}, tc_dq_shared<D>(), [&] {
                attn_bwd_dq_tc<D>(q, q_sb, q_st, k, kv_sb, kv_st, v, kv_sb, kv_st, dy.data(), lse.data(), delta.data(),
                                  dq, pw * t, pw, lens.data(), c.causal, t, h, kh, scale);
            });
            emu_launch({row_blocks, (unsigned)kh, (unsigned)b}, {TC_WARPS * 32}, tc_dkdv_shared<D>(), [&] {
                attn_bwd_dkdv_tc<D>(q, q_sb, q_st, k, kv_sb, kv_st, v, kv_sb, kv_st, dy.data(), lse.data(),
                                    delta.data(), dk, dv, pw * t, pw, lens.data(), c.causal, t, h, kh, scale);
            });
            const std::string tc = "attention tensor-core backward " + std::string(name).substr(10);
            report(tc + " dq", rel_err(unpack(0, h * d), dq_ref), grad_bound);
            report(tc + " dk", rel_err(unpack(h * d, kh * d), dk_ref), grad_bound);
            report(tc + " dv", rel_err(unpack((h + kh) * d, kh * d), dv_ref), grad_bound);
        }
    }
}

// Column sums as cuda/reduce.rs runs them: 64-row partials, summed again until one row is left.
template <typename T>
static std::vector<float> column_sums(const T* x, int rows, int c, int* passes = nullptr) {
    const unsigned tiles = (c + 255) / 256;
    unsigned blocks = (rows + COLUMN_SUM_ROWS - 1) / COLUMN_SUM_ROWS;
    std::vector<float> sums((size_t)blocks * c, NAN);
    emu_launch({blocks, tiles}, {256}, 0, [&] { column_partials<T>(x, sums.data(), rows, c); });
    int stages = 1;
    for (int left = blocks; left > 1; left = blocks, ++stages) {
        blocks = (left + COLUMN_SUM_ROWS - 1) / COLUMN_SUM_ROWS;
        std::vector<float> next((size_t)blocks * c, NAN);
        emu_launch({blocks, tiles}, {256}, 0, [&] { column_partials<float>(sums.data(), next.data(), left, c); });
        sums = std::move(next);
    }
    if (passes) *passes = stages;
    return sums;
}

template <typename T>
static void norm_case(int rows, int c, bool centred, const char* dtype, double bound, double grad_bound) {
    std::mt19937 rng(rows * 7 + c);
    std::vector<T> x = random_values<T>((size_t)rows * c, rng, 2.0f), dy = random_values<T>(x.size(), rng);
    std::vector<float> w = random_values<float>(c, rng), bias = random_values<float>(c, rng);
    const float eps = 1e-5f;
    std::vector<double> y_ref(x.size()), dx_ref(x.size()), dw_ref(c, 0.0), db_ref(c, 0.0);
    for (int r = 0; r < rows; ++r) {
        const T* xr = &x[(size_t)r * c];
        double mean = 0, var = 0;
        if (centred)
            for (int j = 0; j < c; ++j) mean += to_f(xr[j]) / c;
        for (int j = 0; j < c; ++j) var += (to_f(xr[j]) - mean) * (to_f(xr[j]) - mean) / c;
        const double rstd = 1 / std::sqrt(var + eps);
        double md = 0, mdx = 0;
        for (int j = 0; j < c; ++j) {
            const double xh = (to_f(xr[j]) - mean) * rstd, g = to_f(dy[(size_t)r * c + j]);
            y_ref[(size_t)r * c + j] = xh * w[j] + (centred ? bias[j] : 0.0);
            dw_ref[j] += g * xh;
            db_ref[j] += g;
            md += g * w[j] / c;
            mdx += g * w[j] * xh / c;
        }
        for (int j = 0; j < c; ++j) {
            const double xh = (to_f(xr[j]) - mean) * rstd;
            dx_ref[(size_t)r * c + j] = rstd * (to_f(dy[(size_t)r * c + j]) * w[j] - (centred ? md : 0.0) - xh * mdx);
        }
    }
    const unsigned threads = std::clamp((c + 3) / 4 + 31, 32, 1024) / 32 * 32;
    std::vector<T> y(x.size()), dx(x.size());
    emu_launch({(unsigned)rows}, {threads}, 0, [&] {
        if (centred)
            layer_norm_fwd<T>(x.data(), w.data(), bias.data(), y.data(), c, eps);
        else
            rms_norm_fwd<T>(x.data(), w.data(), y.data(), c, eps);
    });
    emu_launch({(unsigned)rows}, {threads}, 0,
               [&] { norm_bwd<T>(x.data(), w.data(), dy.data(), nullptr, dx.data(), c, eps, centred); });
    // With a residual's gradient added in the kernel (the pre-norm sublayers' dx).
    std::vector<T> dres = random_values<T>(x.size(), rng), dx_res(x.size());
    std::vector<double> dx_res_ref(x.size());
    for (size_t i = 0; i < x.size(); ++i) dx_res_ref[i] = dx_ref[i] + to_f(dres[i]);
    emu_launch({(unsigned)rows}, {threads}, 0,
               [&] { norm_bwd<T>(x.data(), w.data(), dy.data(), dres.data(), dx_res.data(), c, eps, centred); });
    // The column sums: the blocks' partials, then summed over blocks as cuda/mod.rs does.
    const unsigned blocks = (rows + NORM_TERM_ROWS - 1) / NORM_TERM_ROWS;
    std::vector<float> partials(2 * (size_t)blocks * c, NAN);
    emu_launch({blocks}, {threads}, 0,
               [&] { norm_column_terms<T>(x.data(), dy.data(), partials.data(), rows, c, eps, centred); });
    const std::vector<float> dw = column_sums(partials.data(), (int)blocks, c);
    const std::vector<float> db = column_sums(partials.data() + (size_t)blocks * c, (int)blocks, c);
    char name[120];
    std::snprintf(name, sizeof name, "%s %s rows %d C %d", centred ? "layer_norm" : "rms_norm", dtype, rows, c);
    report(std::string(name) + " y", rel_err(y, y_ref), bound);
    report(std::string(name) + " dx", rel_err(dx, dx_ref), grad_bound);
    report(std::string(name) + " dx + residual", rel_err(dx_res, dx_res_ref), grad_bound);
    report(std::string(name) + " dw", rel_err(dw, dw_ref), grad_bound);
    report(std::string(name) + " db", rel_err(db, db_ref), grad_bound);
}

template <typename T>
static void column_sums_case(int rows, int c, const char* dtype, double bound) {
    std::mt19937 rng(rows + c);
    std::vector<T> x = random_values<T>((size_t)rows * c, rng);
    std::vector<double> want(c, 0.0);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < c; ++j) want[j] += to_f(x[(size_t)r * c + j]);
    int passes = 0;
    const std::vector<float> sums = column_sums(x.data(), rows, c, &passes);
    report(std::string("column_sums ") + dtype + " rows " + std::to_string(rows) + " C " + std::to_string(c) + " (" +
               std::to_string(passes) + " passes)",
           rel_err(sums, want), bound);
}

static unsigned long long adamw_pair(float lo, float hi) {
    unsigned a, b;
    std::memcpy(&a, &lo, 4);
    std::memcpy(&b, &hi, 4);
    return (unsigned long long)a | ((unsigned long long)b << 32);
}

// Σ x² over tensors of odd sizes (one element, a block's worth and one either side, several
// blocks with a partial last) in the two launches, against a double loop.
static void sum_squares_case(std::vector<size_t> sizes) {
    std::vector<std::vector<float>> xs;
    std::vector<unsigned long long> table;
    unsigned long long blocks = 0;
    double want = 0.0;
    std::string name = "sum_squares";
    for (size_t t = 0; t < sizes.size(); ++t) {
        const size_t n = sizes[t];
        name += " " + std::to_string(n);
        std::mt19937 rng(7 * n + t);
        xs.push_back(random_values<float>(n, rng));
        for (float x : xs.back()) want += (double)x * x;
        const unsigned long long row[SQ_WORDS] = {(unsigned long long)xs.back().data(), n, blocks};
        table.insert(table.end(), row, row + SQ_WORDS);
        blocks += (n + SQ_PER_BLOCK - 1) / SQ_PER_BLOCK;
    }
    std::vector<float> partials(blocks, -1.0f);
    double total = -1.0;
    emu_launch({(unsigned)blocks}, {SQ_THREADS}, 0,
               [&] { sum_squares_blocks(table.data(), (int)sizes.size(), partials.data()); });
    emu_launch({1}, {SQ_TOTAL_THREADS}, 0, [&] { sum_squares_total(partials.data(), blocks, &total); });
    report(name + " (" + std::to_string(blocks) + " blocks)", std::fabs(total - want) / want, 1e-6);
}

// Several tensors of odd sizes in one launch, each with its own scalars (as parameter groups
// and the Rust table give them), against double loops; the blocks' tensor search and the
// tails of partial blocks are what this checks.
static void adamw_case(std::vector<size_t> sizes) {
    const size_t per_block = ADAMW_THREADS * ADAMW_PER_THREAD;
    std::vector<std::vector<float>> p, g, m, v;
    std::vector<std::vector<double>> want;
    std::vector<unsigned long long> table;
    unsigned long long blocks = 0;
    std::string name = "adamw";
    for (size_t t = 0; t < sizes.size(); ++t) {
        const size_t n = sizes[t];
        name += " " + std::to_string(n);
        std::mt19937 rng(n + t);
        p.push_back(random_values<float>(n, rng));
        g.push_back(random_values<float>(n, rng));
        m.push_back(random_values<float>(n, rng, 0.1f));
        v.emplace_back(n);
        for (auto& x : v.back()) x = std::fabs(random_values<float>(1, rng)[0]) * 0.01f;
        const float b1 = 0.9f - 0.05f * t, b2 = 0.95f, decay = t % 2 ? 1.0f : 0.999f, step = 1e-3f * (t + 1),
                    bc2 = 0.3f, eps = 1e-8f, scale = t % 3 == 1 ? 0.25f : 1.0f;
        std::vector<double> w(n);
        for (size_t i = 0; i < n; ++i) {
            const double gi = (double)g[t][i] * scale;
            const double mi = m[t][i] * (double)b1 + gi * (1.0 - b1);
            const double vi = v[t][i] * (double)b2 + gi * gi * (1.0 - b2);
            w[i] = p[t][i] * (double)decay - mi / (std::sqrt(vi) / bc2 + eps) * step;
        }
        want.push_back(std::move(w));
        const unsigned long long row[ADAMW_WORDS] = {(unsigned long long)p[t].data(), (unsigned long long)g[t].data(),
                                                      (unsigned long long)m[t].data(), (unsigned long long)v[t].data(),
                                                      n, blocks, adamw_pair(decay, step), adamw_pair(bc2, eps),
                                                      adamw_pair(b1, b2), adamw_pair(scale, 0.0f)};
        table.insert(table.end(), row, row + ADAMW_WORDS);
        blocks += (n + per_block - 1) / per_block;
    }
    emu_launch({(unsigned)blocks}, {ADAMW_THREADS}, 0, [&] { adamw_all(table.data(), (int)sizes.size()); });
    double err = 0.0;
    for (size_t t = 0; t < sizes.size(); ++t) err = std::max(err, rel_err(p[t], want[t]));
    report(name, err, 1e-6);
}

// One Adafactor case's hyperparameters (the rest fixed: eps1 1e-30, eps2 1e-3, step 3's β2ₜ,
// relative step 0.01, lr_scale 0.5, β1 0.9), the tail of its step in double (transformers'
// order) and the checks every case shares.
struct AdafactorCase {
    bool scale_parameter, beta1;
    double wd, clip_threshold;
    float grad_scale;
    static constexpr double eps1 = 1e-30, eps2 = 1e-3, rel = 0.01, lr_scale = 0.5, b1 = 0.9;
    static double beta2t() { return 1.0 - std::pow(3.0, -0.8); }

    std::string label(const std::string& base) const {
        return base + (scale_parameter ? " scaled" : "") + (beta1 ? " beta1" : "") + (wd ? " decay" : "") +
               (clip_threshold < 1.0 ? " clipped" : "") + (grad_scale != 1.0f ? " grad-scaled" : "");
    }

    // From the preconditioned gradient upd (its Σ upd², and Σ p²): the step size, the update
    // clipping, β1 and the decay, into p_w and m_w.
    void finish(const std::vector<double>& upd, double usq, double psq, const std::vector<float>& p,
                const std::vector<float>& m, std::vector<double>& p_w, std::vector<double>& m_w) const {
        const size_t n = p.size();
        const double scale = scale_parameter ? std::max(eps2, std::sqrt(psq / n)) : 1.0;
        const double alpha = scale * rel * lr_scale, clip = std::max(std::sqrt(usq / n) / clip_threshold, 1.0);
        for (size_t k = 0; k < n; ++k) {
            double u = upd[k] * alpha / clip;
            if (beta1) u = m_w[k] = m[k] * b1 + u * (1.0 - b1);
            p_w[k] = p[k] - wd * alpha * p[k] - u;
        }
    }

    // The first moment, the parameter and, since the parameter moves by about α a step, the
    // step itself against the step's size.
    void report_update(const std::string& name, const std::vector<float>& p, const std::vector<double>& p_w,
                       const std::vector<float>& p0, const std::vector<float>& m, const std::vector<double>& m_w) const {
        if (beta1) report(name + " first moment", rel_err(m, m_w), 1e-5);
        report(name + " parameter", rel_err(p, p_w), 1e-6);
        std::vector<float> step(p.size());
        std::vector<double> step_w(p.size());
        for (size_t k = 0; k < p.size(); ++k) {
            step[k] = (float)((double)p[k] - p0[k]);
            step_w[k] = p_w[k] - p0[k];
        }
        report(name + " step", rel_err(step, step_w), 1e-4);
    }
};

// A second-moment state of n values, small and positive.
static std::vector<float> adafactor_state(size_t n, std::mt19937& rng) {
    std::vector<float> s(n);
    for (auto& x : s) x = std::fabs(random_values<float>(1, rng)[0]) * 0.01f + 1e-4f;
    return s;
}

// Adafactor's factored step of one matrix through the five launches, as cuda/adafactor.rs
// makes them, against transformers' arithmetic in double: the parameter, the row and column
// state and the first moment. Odd sizes cover partial column and row tiles and several tiles.
static void adafactor_case(int rows, int cols, const AdafactorCase& c) {
    const size_t n = (size_t)rows * cols;
    std::mt19937 rng(rows * 131 + cols);
    auto p = random_values<float>(n, rng), g = random_values<float>(n, rng, 0.5f), m = random_values<float>(n, rng, 0.1f);
    const std::vector<float> p0 = p;
    std::vector<float> g_scaled(n);  // what the composed update reads: the gradient scaled first
    for (size_t k = 0; k < n; ++k) g_scaled[k] = g[k] * c.grad_scale;
    std::vector<float> row = adafactor_state(rows, rng), col = adafactor_state(cols, rng);
    const double beta2t = AdafactorCase::beta2t();
    // The double reference.
    std::vector<double> row_w(rows), col_w(cols), p_w(n), m_w(n);
    std::vector<double> rsum(rows, 0.0), csum(cols, 0.0);
    double psq = 0.0;
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
            const double gi = g_scaled[(size_t)i * cols + j], u = gi * gi + c.eps1;
            rsum[i] += u;
            csum[j] += u;
            psq += (double)p[(size_t)i * cols + j] * p[(size_t)i * cols + j];
        }
    double row_mean = 0.0;
    for (int i = 0; i < rows; ++i) row_mean += row_w[i] = row[i] * beta2t + rsum[i] / cols * (1.0 - beta2t);
    row_mean /= rows;
    for (int j = 0; j < cols; ++j) col_w[j] = col[j] * beta2t + csum[j] / rows * (1.0 - beta2t);
    std::vector<double> upd(n);
    double usq = 0.0;
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
            const size_t k = (size_t)i * cols + j;
            upd[k] = 1.0 / std::sqrt(row_w[i] / row_mean) / std::sqrt(col_w[j]) * g_scaled[k];
            usq += upd[k] * upd[k];
        }
    c.finish(upd, usq, psq, p, m, p_w, m_w);
    // The launches.
    const int col_tiles = (cols + AF_THREADS - 1) / AF_THREADS, row_tiles = (rows + AF_ROWS - 1) / AF_ROWS;
    const int blocks = std::min(rows, AF_MAX_BLOCKS);
    std::vector<float> part_row((size_t)col_tiles * rows, NAN), part_col((size_t)row_tiles * cols, NAN),
        part_p((size_t)row_tiles * col_tiles, NAN), r_fac(rows, NAN), c_fac(cols, NAN), part_u(blocks, NAN),
        scalars(2, NAN);
    emu_launch({(unsigned)col_tiles, (unsigned)row_tiles}, {AF_THREADS}, 0, [&] {
        adafactor_tiles(g.data(), c.grad_scale, p.data(), rows, cols, (float)c.eps1, c.scale_parameter, part_row.data(),
                        part_col.data(), part_p.data());
    });
    emu_launch({1}, {AF_ONE_BLOCK}, 0, [&] {
        adafactor_factors(part_row.data(), part_col.data(), rows, cols, col_tiles, row_tiles, (float)beta2t,
                          (float)(1.0 - beta2t), row.data(), col.data(), r_fac.data(), c_fac.data());
    });
    emu_launch({(unsigned)blocks}, {AF_THREADS}, 0, [&] {
        adafactor_update_sq(g.data(), c.grad_scale, r_fac.data(), c_fac.data(), rows, cols, part_u.data());
    });
    emu_launch({1}, {AF_THREADS}, 0, [&] {
        adafactor_scalars(part_u.data(), blocks, part_p.data(), row_tiles * col_tiles, (double)n, c.rel, c.lr_scale,
                          c.eps2, c.scale_parameter, c.clip_threshold, c.wd, scalars.data());
    });
    emu_launch({(unsigned)blocks}, {AF_THREADS}, 0, [&] {
        adafactor_apply(p.data(), g.data(), c.grad_scale, m.data(), r_fac.data(), c_fac.data(), scalars.data(), rows, cols,
                        c.beta1, (float)c.b1, (float)(1.0 - c.b1), c.wd != 0.0);
    });
    const std::string name = c.label("adafactor " + std::to_string(rows) + "x" + std::to_string(cols));
    report(name + " row state", rel_err(row, row_w), 1e-5);
    report(name + " column state", rel_err(col, col_w), 1e-5);
    c.report_update(name, p, p_w, p0, m, m_w);
}

// Adafactor's step of one vector (its second moment unfactored) through the three launches, as
// cuda/adafactor.rs makes them, against transformers' arithmetic in double. Sizes cover a
// partial block, several blocks and more elements than the grid's threads (a grid stride). The
// parameter's values are ~0.1 so that an unscaled step of ~α is well above their f32 rounding
// (the step check's resolution).
static void adafactor_vector_case(size_t n, const AdafactorCase& c) {
    std::mt19937 rng((unsigned)n * 7 + 1);
    auto p = random_values<float>(n, rng, 0.1f), g = random_values<float>(n, rng, 0.5f), m = random_values<float>(n, rng, 0.1f);
    const std::vector<float> p0 = p;
    std::vector<float> v = adafactor_state(n, rng);
    const double beta2t = AdafactorCase::beta2t();
    // The double reference.
    std::vector<double> v_w(n), upd(n), p_w(n), m_w(n);
    double usq = 0.0, psq = 0.0;
    for (size_t k = 0; k < n; ++k) {
        const double gi = (double)(g[k] * c.grad_scale);  // the composed update scales the gradient first
        v_w[k] = v[k] * beta2t + (gi * gi + c.eps1) * (1.0 - beta2t);
        upd[k] = gi / std::sqrt(v_w[k]);
        usq += upd[k] * upd[k];
        psq += (double)p[k] * p[k];
    }
    c.finish(upd, usq, psq, p, m, p_w, m_w);
    // The launches.
    const int blocks = (int)std::min<size_t>((n + AF_THREADS - 1) / AF_THREADS, AF_MAX_BLOCKS);
    std::vector<float> part_u(blocks, NAN), part_p(blocks, NAN), scalars(2, NAN);
    emu_launch({(unsigned)blocks}, {AF_THREADS}, 0, [&] {
        adafactor_vector_sq(g.data(), c.grad_scale, p.data(), n, (float)c.eps1, c.scale_parameter, (float)beta2t,
                            (float)(1.0 - beta2t), v.data(), part_u.data(), part_p.data());
    });
    emu_launch({1}, {AF_THREADS}, 0, [&] {
        adafactor_scalars(part_u.data(), blocks, part_p.data(), blocks, (double)n, c.rel, c.lr_scale, c.eps2,
                          c.scale_parameter, c.clip_threshold, c.wd, scalars.data());
    });
    emu_launch({(unsigned)blocks}, {AF_THREADS}, 0, [&] {
        adafactor_vector_apply(p.data(), g.data(), c.grad_scale, m.data(), v.data(), scalars.data(), n, c.beta1,
                               (float)c.b1, (float)(1.0 - c.b1), c.wd != 0.0);
    });
    const std::string name = c.label("adafactor vector " + std::to_string(n));
    report(name + " state", rel_err(v, v_w), 1e-5);
    c.report_update(name, p, p_w, p0, m, m_w);
}

// GELU of v in double (erf or tanh form) and its derivative.
static double gelu_double(double v, int erf_form, double* grad) {
    if (erf_form) {
        *grad = 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
        return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    }
    const double k = std::sqrt(2 / M_PI), t = std::tanh(k * (v + 0.044715 * v * v * v));
    *grad = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v);
    return 0.5 * v * (1 + t);
}

template <typename T>
static void activation_case(size_t n, const char* dtype, double bound) {
    std::mt19937 rng(n);
    std::vector<T> x = random_values<T>(n, rng, 2.0f), u = random_values<T>(n, rng), dy = random_values<T>(n, rng);
    for (int erf_form = 0; erf_form < 2; ++erf_form) {
        std::vector<double> y_ref(n), dx_ref(n);
        for (size_t i = 0; i < n; ++i) {
            double grad;
            y_ref[i] = gelu_double(to_f(x[i]), erf_form, &grad);
            dx_ref[i] = to_f(dy[i]) * grad;
        }
        std::vector<T> y(n), dx(n);
        emu_launch({grid_for(n)}, {256}, 0, [&] { gelu_fwd<T>(x.data(), y.data(), n, erf_form); });
        emu_launch({grid_for(n)}, {256}, 0, [&] { gelu_bwd<T>(x.data(), dy.data(), dx.data(), n, erf_form); });
        const std::string name = std::string(erf_form ? "gelu_erf " : "gelu_tanh ") + dtype + " n " + std::to_string(n);
        report(name + " y", rel_err(y, y_ref), bound);
        report(name + " dx", rel_err(dx, dx_ref), bound);
        // The linear layer's epilogue: gelu(z + b) with an f32 bias of c columns.
        const size_t c = 37, rows = n / c, m = rows * c;
        std::vector<float> b = random_values<float>(c, rng);
        std::vector<double> yb_ref(m), dz_ref(m);
        for (size_t i = 0; i < m; ++i) {
            double grad;
            yb_ref[i] = gelu_double((double)to_f(x[i]) + b[i % c], erf_form, &grad);
            dz_ref[i] = to_f(dy[i]) * grad;
        }
        std::vector<T> yb(m), dz(m);
        emu_launch({grid_for(m)}, {256}, 0, [&] { bias_gelu_fwd<T>(x.data(), b.data(), yb.data(), m, (int)c, erf_form); });
        emu_launch({grid_for(m)}, {256}, 0,
                   [&] { bias_gelu_bwd<T>(x.data(), b.data(), dy.data(), dz.data(), m, (int)c, erf_form); });
        report("bias_" + name + " y", rel_err(yb, yb_ref), bound);
        report("bias_" + name + " dz", rel_err(dz, dz_ref), bound);
    }
    // A sublayer's output: the residual x plus the projection u and its f32 bias (or none); and
    // a projection's bias add alone (no residual).
    {
        const size_t c = 37, m = n / c * c;
        std::vector<float> b = random_values<float>(c, rng);
        for (const T* residual : {(const T*)x.data(), (const T*)nullptr})
            for (const float* bias : {(const float*)b.data(), (const float*)nullptr}) {
                if (!residual && !bias) continue;
                std::vector<double> want(m);
                for (size_t i = 0; i < m; ++i)
                    want[i] = (residual ? (double)to_f(x[i]) : 0.0) + to_f(u[i]) + (bias ? bias[i % c] : 0.0);
                std::vector<T> got(m);
                emu_launch({grid_for(m)}, {256}, 0, [&] { residual_add<T>(residual, u.data(), bias, got.data(), m, (int)c); });
                report(std::string(residual ? "residual_add " : "bias_add ") + (bias && residual ? "+ bias " : "") +
                           dtype + " n " + std::to_string(m),
                       rel_err(got, want), bound);
            }
    }
    std::vector<double> y_ref(n), dgu_ref(2 * n);
    for (size_t i = 0; i < n; ++i) {
        const double g = to_f(x[i]), v = to_f(u[i]), d = to_f(dy[i]), s = 1 / (1 + std::exp(-g));
        y_ref[i] = g * s * v;
        dgu_ref[i] = d * v * s * (1 + g * (1 - s));
        dgu_ref[n + i] = d * g * s;
    }
    std::vector<T> y(n), dgu(2 * n);
    emu_launch({grid_for(n)}, {256}, 0, [&] { swiglu_fwd<T>(x.data(), u.data(), y.data(), n); });
    emu_launch({grid_for(n)}, {256}, 0, [&] { swiglu_bwd<T>(x.data(), u.data(), dy.data(), dgu.data(), n); });
    report(std::string("swiglu ") + dtype + " n " + std::to_string(n) + " y", rel_err(y, y_ref), bound);
    report(std::string("swiglu ") + dtype + " n " + std::to_string(n) + " d gate, d up", rel_err(dgu, dgu_ref), bound);
}

// RoPE of x (B, T, H·D) with (T, D) tables, then the transposed rotation of the result, which
// must give x back (the rotation is orthogonal): the backward checked through the forward.
template <typename T>
static void rope_case(int b, int t, int h, int d, const char* dtype, double bound) {
    std::mt19937 rng(t * d);
    const int w = h * d, half = d / 2;
    const size_t n = (size_t)b * t * w;
    std::vector<T> x = random_values<T>(n, rng);
    std::vector<float> cos(t * d), sin(t * d);
    for (int p = 0; p < t; ++p)
        for (int j = 0; j < half; ++j) {
            const float a = (p + 3) / std::pow(10000.0f, 2.0f * j / d);
            cos[p * d + j] = cos[p * d + j + half] = std::cos(a);
            sin[p * d + j] = sin[p * d + j + half] = std::sin(a);
        }
    std::vector<double> y_ref(n), back_ref(n);
    for (size_t e = 0; e < n; ++e) {
        const size_t row = e / w;
        const int j = (int)(e % w) % d, p = (int)(row % t);
        const size_t head = e - j;
        const double a = to_f(x[head + (j < half ? j : j - half)]), bb = to_f(x[head + (j < half ? j + half : j)]);
        y_ref[e] = j < half ? a * cos[p * d + j] - bb * sin[p * d + j] : bb * cos[p * d + j] + a * sin[p * d + j];
        back_ref[e] = to_f(x[e]);
    }
    std::vector<T> y(n), back(n);
    emu_launch({grid_for(n)}, {256}, 0, [&] { rope<T>(x.data(), cos.data(), sin.data(), y.data(), n, t, w, d, 0); });
    emu_launch({grid_for(n)}, {256}, 0, [&] { rope<T>(y.data(), cos.data(), sin.data(), back.data(), n, t, w, d, 1); });
    char name[80];
    std::snprintf(name, sizeof name, "rope %s B%d T%d H%d D%d", dtype, b, t, h, d);
    report(std::string(name) + " y", rel_err(y, y_ref), bound);
    report(std::string(name) + " transposed(y) = x", rel_err(back, back_ref), 2 * bound);
}

template <typename T>
static void cross_entropy_case(int rows, int v, unsigned threads, const char* dtype, double bound) {
    std::mt19937 rng(rows * v);
    std::vector<T> z = random_values<T>((size_t)rows * v, rng, 3.0f);
    std::vector<unsigned> targets(rows);
    for (int r = 0; r < rows; ++r) targets[r] = (unsigned)((r * 7919 + 13) % v);
    targets[rows - 1] = v;  // out of the vocabulary: NaN
    const float scale = 1.0f / rows;
    std::vector<double> lse_ref(rows), dz_ref((size_t)rows * v);
    for (int r = 0; r < rows; ++r) {
        double m = -INFINITY, s = 0;
        for (int j = 0; j < v; ++j) m = std::max(m, (double)to_f(z[(size_t)r * v + j]));
        for (int j = 0; j < v; ++j) s += std::exp(to_f(z[(size_t)r * v + j]) - m);
        lse_ref[r] = m + std::log(s);
        for (int j = 0; j < v; ++j)
            dz_ref[(size_t)r * v + j] = scale * (std::exp(to_f(z[(size_t)r * v + j]) - lse_ref[r]) - (j == (int)targets[r]));
    }
    std::vector<float> lse(rows, 0.0f);
    std::vector<T> dz(z.size());
    emu_launch({(unsigned)rows}, {threads}, 0, [&] { row_lse<T>(z.data(), targets.data(), lse.data(), v); });
    const bool nan_for_bad_target = std::isnan(lse[rows - 1]);
    lse[rows - 1] = (float)lse_ref[rows - 1];  // the gradient below uses the real one
    emu_launch({grid_for(z.size())}, {256}, 0, [&] {
        softmax_minus_onehot<T>(z.data(), targets.data(), lse.data(), dz.data(), z.size(), v, scale);
    });
    // The last row's target is outside the vocabulary: its gradient has no onehot term.
    for (int j = 0; j < v; ++j) dz_ref[(size_t)(rows - 1) * v + j] = scale * std::exp(to_f(z[(size_t)(rows - 1) * v + j]) - lse_ref[rows - 1]);
    char name[80];
    std::snprintf(name, sizeof name, "cross_entropy %s rows %d V %d (%u threads)", dtype, rows, v, threads);
    report(std::string(name) + " lse", rel_err(lse, lse_ref), 1e-6);
    report(std::string(name) + " d logits", rel_err(dz, dz_ref), bound);
    report(std::string(name) + " NaN for a target outside V", nan_for_bad_target ? 0.0 : INFINITY, 0.0);
}

// The token embedding: rows gathered (an id past the table gives zeros), and the backward's sort
// and run sums equal to index_add's sequential f32 sums in position order, bit for bit (ids
// drawn from a few tokens, so runs are long, and from the whole table).
static void embedding_case(size_t n, size_t c, size_t v, size_t distinct) {
    std::mt19937 rng(n * 31 + c + v);
    std::vector<unsigned> ids(n);
    for (auto& id : ids) id = (unsigned)(rng() % distinct) * (unsigned)(v / distinct);
    ids[n / 2] = (unsigned)v + 3;  // past the table
    const auto table = random_values<float>(v * c, rng);
    const auto dy = random_values<float>(n * c, rng);
    std::vector<float> out(n * c, NAN);
    emu_launch({grid_for(n * c)}, {256}, 0, [&] { embedding_rows(table.data(), ids.data(), out.data(), n, c, v); });
    double rows_err = 0;
    for (size_t j = 0; j < n; ++j)
        for (size_t k = 0; k < c; ++k) {
            const float want = ids[j] < v ? table[ids[j] * c + k] : 0.0f;
            rows_err = std::max(rows_err, out[j * c + k] == want ? 0.0 : INFINITY);
        }
    size_t padded = 1;
    while (padded < n) padded *= 2;
    std::vector<unsigned long long> keys(padded);
    emu_launch({grid_for(padded)}, {256}, 0, [&] { embedding_keys(ids.data(), keys.data(), n, padded); });
    // cuda/embedding.rs's schedule: every step within a tile in one launch, then for each wider k
    // the steps across tiles one launch each and the rest of that k in one.
    const size_t tile = std::min<size_t>(padded, SORT_TILE);
    const unsigned tiles = (unsigned)(padded / tile), threads = (unsigned)std::max<size_t>(tile / 2, 1);
    emu_launch({tiles}, {threads}, 0, [&] { embedding_bitonic_local(keys.data(), padded, 2, tile, tile / 2); });
    for (size_t k = 2 * tile; k <= padded; k *= 2) {
        for (size_t j = k / 2; j >= tile; j /= 2)
            emu_launch({grid_for(padded)}, {256}, 0, [&] { embedding_bitonic(keys.data(), padded, k, j); });
        emu_launch({tiles}, {threads}, 0, [&] { embedding_bitonic_local(keys.data(), padded, k, k, tile / 2); });
    }
    std::vector<float> dtable(v * c, 0.0f), want(v * c, 0.0f);
    emu_launch({(unsigned)n}, {64}, 0, [&] { embedding_grad(keys.data(), dy.data(), dtable.data(), n, c, v); });
    for (size_t j = 0; j < n; ++j)
        if (ids[j] < v)
            for (size_t k = 0; k < c; ++k) want[ids[j] * c + k] += dy[j * c + k];
    double grad_err = 0;
    for (size_t i = 0; i < want.size(); ++i) grad_err = std::max(grad_err, dtable[i] == want[i] ? 0.0 : INFINITY);
    bool sorted = std::is_sorted(keys.begin(), keys.end());
    char name[80];
    std::snprintf(name, sizeof name, "embedding N %zu C %zu V %zu (%zu tokens)", n, c, v, distinct);
    report(std::string(name) + " rows (exact)", rows_err, 0.0);
    report(std::string(name) + " keys sorted", sorted ? 0.0 : INFINITY, 0.0);
    report(std::string(name) + " d table (index_add's bits)", grad_err, 0.0);
}

int main() {
    embedding_case(37, 5, 11, 3);
    embedding_case(300, 70, 1000, 1000);
    embedding_case(512, 3, 50, 2);
    embedding_case(5000, 2, 3000, 3000);  // 8192 keys: four tiles, wider steps across them
    cross_entropy_case<float>(4, 3001, 1024, "f32", 1e-6);
    cross_entropy_case<float>(3, 50, 64, "f32", 1e-6);
    cross_entropy_case<__nv_bfloat16>(3, 2000, 512, "bf16", 1e-2);
    activation_case<float>(1000, "f32", 1e-6);
    activation_case<float>(70001, "f32", 1e-6);
    activation_case<__nv_bfloat16>(3001, "bf16", 1e-2);
    rope_case<float>(2, 7, 3, 8, "f32", 1e-6);
    rope_case<float>(1, 33, 2, 64, "f32", 1e-6);
    rope_case<__nv_bfloat16>(2, 5, 4, 16, "bf16", 1e-2);
    // f32: dot products in another order than double's; bf16: operands rounded, outputs rounded.
    attention_case<float, 64>({2, 70, 4, 2, 16, true, false, {}}, "f32", 2e-6, 1e-5);
    attention_case<float, 64>({1, 129, 2, 1, 64, true, true, {}}, "f32", 2e-6, 1e-5);
    attention_case<float, 128>({1, 97, 3, 3, 100, true, true, {}}, "f32", 2e-6, 1e-5);
    attention_case<float, 256>({1, 12, 2, 1, 200, true, false, {}}, "f32", 2e-6, 1e-5);
    attention_case<float, 64>({3, 40, 2, 2, 64, false, false, {40, 17, 1}}, "f32", 2e-6, 1e-5);
    attention_case<float, 128>({2, 70, 4, 1, 72, false, true, {5, 70}}, "f32", 2e-6, 1e-5);
    attention_case<__nv_bfloat16, 64>({1, 65, 2, 2, 32, true, true, {}}, "bf16", 1e-2, 2e-2);
    attention_case<__nv_bfloat16, 128>({2, 33, 4, 2, 128, false, false, {33, 9}}, "bf16", 1e-2, 2e-2);
    attention_case<__nv_bfloat16, 64>({2, 150, 4, 2, 64, true, true, {}}, "bf16", 1e-2, 2e-2);
    attention_case<__nv_bfloat16, 128>({1, 200, 2, 1, 128, true, false, {}}, "bf16", 1e-2, 2e-2);
    attention_case<__nv_bfloat16, 64>({2, 150, 4, 1, 64, false, true, {150, 70}}, "bf16", 1e-2, 2e-2);
    for (int c : {37, 768, 4099}) {
        norm_case<float>(3, c, true, "f32", 1e-6, 1e-5);
        norm_case<float>(3, c, false, "f32", 1e-6, 1e-5);
        norm_case<__nv_bfloat16>(2, c, true, "bf16", 1e-2, 1e-2);
    }
    // Several blocks of column terms, the last one partial.
    norm_case<float>(70, 37, true, "f32", 1e-6, 1e-5);
    norm_case<float>(70, 768, false, "f32", 1e-6, 1e-5);
    norm_case<__nv_bfloat16>(65, 96, true, "bf16", 1e-2, 1e-2);
    column_sums_case<float>(1, 7, "f32", 1e-6);
    column_sums_case<float>(64, 256, "f32", 1e-6);
    column_sums_case<float>(5000, 300, "f32", 1e-5);  // two column tiles, the last partial; three passes
    column_sums_case<__nv_bfloat16>(4097, 37, "bf16", 1e-5);  // bf16 rows, f32 sums
    sum_squares_case({1000});
    sum_squares_case({1, 4095, 4096, 4097, 70000, 3});
    adamw_case({1000});
    adamw_case({1, 2048, 70000, 2049, 5});
    // scale_parameter, β1, weight decay, clip threshold, gradient scale.
    adafactor_case(70, 300, {false, false, 0.0, 1.0, 1.0f});
    adafactor_case(1, 5, {true, false, 0.0, 1.0, 0.3f});
    adafactor_case(130, 257, {true, true, 0.1, 0.5, 0.7f});  // three row tiles, two column tiles, clipped
    adafactor_vector_case(5, {true, false, 0.0, 1.0, 0.3f});
    adafactor_vector_case(4096, {true, true, 0.1, 1.0, 0.7f});
    adafactor_vector_case(300000, {false, false, 0.0, 0.3, 1.0f});  // a grid stride, clipped
    std::printf(failures ? "%d check(s) failed\n" : "all kernels match\n", failures);
    return failures != 0;
}
