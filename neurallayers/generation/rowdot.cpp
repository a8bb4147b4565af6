// y = x W^T for the decode step: one row of x (batch 1), or a few (a small batch); neurallayers/generation/rowdot.py
// builds it.
//
// Batch-1 decode on a CPU streams every weight once per token, so its speed is the speed of reading memory. With
// AVX-512 (measured on a Zen 5 host) the products read W row by row and prefetch 4 KiB ahead of the rows being read
// (into L2, below): with the hardware prefetcher alone the same loop (and inductor's) takes 1.1-1.3x the time of a
// plain read of the same bytes, with the software prefetch 1.0x; fp32 uses FMA and bf16 vdpbf16ps (exact bf16 x bf16
// products summed in float32). CPUs with AVX2 and FMA only (Zen 3, most laptops) get loops eight lanes wide, tuned
// apart (below); their bf16 path widens each weight to float32 with a shift or a mask (a bf16 is the top half of a
// float32) and multiplies it by x, split once into its even and odd values: the same exact products, summed in
// float32.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int64_t kAheadBytes = 4096;  // how far ahead of the current read to prefetch
// The AVX-512 loops prefetch into L2, not L1 (T2; T1 measured alike, NTA as T0): on a 2-core Zen 4 host GPT-2 124M's
// weights stream 9-13% faster so than with T0 in both dtypes (the two builds alternated in one process). A macro:
// GCC's _mm_prefetch takes an enum, clang's an int.
#define NL_PREFETCH_HINT _MM_HINT_T2
constexpr int64_t kRowsPerTask = 64;   // at::parallel_for grain: the work is split into equal halves on 2 cores

__attribute__((target("avx512f"))) inline __m512 dot_f32(const float* x, const float* w, int64_t n) {
  constexpr int64_t ahead = kAheadBytes / sizeof(float);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead), NL_PREFETCH_HINT);
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead + 16), NL_PREFETCH_HINT);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(w + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(w + i + 16), a1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, w + i), a0);
  }
  return _mm512_add_ps(a0, a1);
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512 dot_bf16(const uint16_t* x, const uint16_t* w,
                                                                              int64_t n) {
  constexpr int64_t ahead = kAheadBytes / sizeof(uint16_t);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead), NL_PREFETCH_HINT);
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead + 32), NL_PREFETCH_HINT);
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(w + i));
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(x + i + 32), (__m512bh)_mm512_loadu_si512(w + i + 32));
  }
  for (; i < n; i += 32) {
    const __mmask32 m = n - i >= 32 ? 0xffffffffu : static_cast<__mmask32>((1u << (n - i)) - 1);
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_maskz_loadu_epi16(m, x + i), (__m512bh)_mm512_maskz_loadu_epi16(m, w + i));
  }
  return _mm512_add_ps(a0, a1);
}

// Rows [lo, hi) of y, four rows at a time so that four independent sums are in flight.
template <typename T, typename Dot>
__attribute__((target("avx512f"))) void rows(const T* x, const T* w, float* y, int64_t n, int64_t lo, int64_t hi,
                                             Dot dot) {
  int64_t o = lo;
  for (; o + 4 <= hi; o += 4) {
    const __m512 r0 = dot(x, w + (o + 0) * n, n), r1 = dot(x, w + (o + 1) * n, n);
    const __m512 r2 = dot(x, w + (o + 2) * n, n), r3 = dot(x, w + (o + 3) * n, n);
    y[o] = _mm512_reduce_add_ps(r0);
    y[o + 1] = _mm512_reduce_add_ps(r1);
    y[o + 2] = _mm512_reduce_add_ps(r2);
    y[o + 3] = _mm512_reduce_add_ps(r3);
  }
  for (; o < hi; ++o) y[o] = _mm512_reduce_add_ps(dot(x, w + o * n, n));
}

// ---- AVX2 + FMA, eight lanes wide; values past the last whole block of 16 are summed one by one. What reads fastest
// differs by dtype (measured on a 2-core Zen 3 host, against a plain read of the same bytes): fp32 reads four
// interleaved rows with no software prefetch (1.0x; one row at a time 1.1x, with the prefetch 1.2x); bf16 reads one
// row at a time with the prefetch (1.0x; four rows 1.3x).

__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float bf16_to_f32(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// y[0, R) = rows [0, R) of w (each n long) times x.
template <int R>
__attribute__((target("avx2,fma"))) inline void dot_f32_avx2(const float* x, const float* w, int64_t n, float* y) {
  __m256 a[R], b[R];
  for (int r = 0; r < R; ++r) a[r] = b[r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 xa = _mm256_loadu_ps(x + i), xb = _mm256_loadu_ps(x + i + 8);
    for (int r = 0; r < R; ++r) {
      a[r] = _mm256_fmadd_ps(xa, _mm256_loadu_ps(w + r * n + i), a[r]);
      b[r] = _mm256_fmadd_ps(xb, _mm256_loadu_ps(w + r * n + i + 8), b[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float tail = 0.f;
    for (int64_t j = i; j < n; ++j) tail += x[j] * w[r * n + j];
    y[r] = hsum8(_mm256_add_ps(a[r], b[r])) + tail;
  }
}

// x as float32, split per block of 16: xe holds a block's values 0, 2, .. 14 and xo 1, 3, .. 15, the lanes in which
// the shift and the mask below leave a block's even and odd bf16 weights. xf is all of x, for the tail.
struct SplitX {
  const float* xe;
  const float* xo;
  const float* xf;
};

__attribute__((target("avx2,fma"))) inline void dot_bf16_avx2(const SplitX& x, const uint16_t* w, int64_t n,
                                                              float* y) {
  constexpr int64_t ahead = kAheadBytes / sizeof(uint16_t);
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0, h = 0;  // h = i / 2: the offset in xe and xo
  for (; i + 32 <= n; i += 32, h += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead), _MM_HINT_T0);
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i + 16));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x.xe + h), _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x.xo + h), _mm256_castsi256_ps(_mm256_and_si256(v0, high)), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x.xe + h + 8), _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x.xo + h + 8), _mm256_castsi256_ps(_mm256_and_si256(v1, high)), a3);
  }
  for (; i + 16 <= n; i += 16, h += 8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x.xe + h), _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x.xo + h), _mm256_castsi256_ps(_mm256_and_si256(v, high)), a1);
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += x.xf[i] * bf16_to_f32(w[i]);
  *y = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + tail;
}

// Rows [lo, hi) of y, `rows` at a time.
template <int64_t rows, typename X, typename T, typename Dot, typename Dot1>
void rows_avx2(const X& x, const T* w, float* y, int64_t n, int64_t lo, int64_t hi, Dot dot, Dot1 dot1) {
  int64_t o = lo;
  for (; o + rows <= hi; o += rows) dot(x, w + o * n, n, y + o);
  for (; o < hi; ++o) dot1(x, w + o * n, n, y + o);
}

// ---- Several rows of x (a decode step of a small batch), AVX2 + FMA: each weight row is read from memory once and
// multiplied by up to 4 rows of x at a time; further rows reuse it from the cache. At these shapes oneDNN's and MKL's
// GEMMs read W at a fraction of memory speed: GPT-2 124M's 49 weights against 8 rows of x on 2 Zen 3 cores take
// 26-28 ms here against F.linear's 76-90 ms in fp32, 24 against 106 ms in bf16.

// y[m * out + r] (r < R, m < M) = rows r of w times rows m of x (all n long): R x M sums in registers, so that
// each load feeds several FMAs. Each cache line of the next R rows is prefetched: with this much arithmetic between
// loads the hardware prefetcher alone falls behind (8 rows of x: 26-28 vs 30-37 ms for GPT-2 124M's weights).
template <int R, int M>
__attribute__((target("avx2,fma"))) inline void dots_f32_avx2(const float* x, const float* w, int64_t n, float* y,
                                                               int64_t out) {
  __m256 a[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) a[r][m] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) {
      if (i % 16 == 0) _mm_prefetch(reinterpret_cast<const char*>(w + (R + r) * n + i), _MM_HINT_T0);
      wv[r] = _mm256_loadu_ps(w + r * n + i);
    }
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * n + i);
      for (int r = 0; r < R; ++r) a[r][m] = _mm256_fmadd_ps(xv, wv[r], a[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int m = 0; m < M; ++m) {
      float tail = 0.f;
      for (int64_t j = i; j < n; ++j) tail += x[m * n + j] * w[r * n + j];
      y[m * out + r] = hsum8(a[r][m]) + tail;
    }
  }
}

// The bf16 rows of x as float32, each split as in SplitX: xe/xo hold row m at m * n / 2, xf at m * n.
struct SplitRows {
  std::vector<float> xe, xo, xf;
};

// `rows` bf16 rows of x (each n long), as float32 and split.
SplitRows split_rows(const uint16_t* x, int64_t rows, int64_t n) {
  SplitRows s{std::vector<float>(rows * (n / 2)), std::vector<float>(rows * (n / 2)), std::vector<float>(rows * n)};
  for (int64_t i = 0; i < rows * n; ++i) s.xf[i] = bf16_to_f32(x[i]);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t b = 0; b + 16 <= n; b += 16) {
      for (int64_t k = 0; k < 8; ++k) {
        s.xe[m * (n / 2) + b / 2 + k] = s.xf[m * n + b + 2 * k];
        s.xo[m * (n / 2) + b / 2 + k] = s.xf[m * n + b + 2 * k + 1];
      }
    }
  }
  return s;
}

template <int M>
__attribute__((target("avx2,fma"))) inline void dots_bf16_avx2(const SplitRows& x, int64_t m0, const uint16_t* w,
                                                                int64_t n, float* y, int64_t out) {
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const float* xe = x.xe.data() + m0 * (n / 2);
  const float* xo = x.xo.data() + m0 * (n / 2);
  const float* xf = x.xf.data() + m0 * n;
  __m256 ae[M], ao[M];
  for (int m = 0; m < M; ++m) ae[m] = ao[m] = _mm256_setzero_ps();
  int64_t i = 0, h = 0;
  for (; i + 16 <= n; i += 16, h += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(w + i + kAheadBytes / sizeof(uint16_t)), _MM_HINT_T0);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), wo = _mm256_castsi256_ps(_mm256_and_si256(v, high));
    for (int m = 0; m < M; ++m) {
      ae[m] = _mm256_fmadd_ps(_mm256_loadu_ps(xe + m * (n / 2) + h), we, ae[m]);
      ao[m] = _mm256_fmadd_ps(_mm256_loadu_ps(xo + m * (n / 2) + h), wo, ao[m]);
    }
  }
  for (int m = 0; m < M; ++m) {
    float tail = 0.f;
    for (int64_t j = i; j < n; ++j) tail += xf[m * n + j] * bf16_to_f32(w[j]);
    y[m * out] = hsum8(_mm256_add_ps(ae[m], ao[m])) + tail;
  }
}

// dots_f32_avx2<rb, mc> for rb <= R and mc <= M known only at run time.
template <int R, int M>
void f32_block(int64_t rb, int64_t mc, const float* x, const float* w, int64_t n, float* y, int64_t out) {
  if constexpr (R > 1) {
    if (rb < R) return f32_block<R - 1, M>(rb, mc, x, w, n, y, out);
  }
  if constexpr (M > 1) {
    if (mc < M) return f32_block<R, M - 1>(rb, mc, x, w, n, y, out);
  }
  dots_f32_avx2<R, M>(x, w, n, y, out);
}

// Rows [lo, hi) of y (M, out) = x (M, n) W^T: each block of R weight rows is read from memory once, against chunks
// of up to `chunk` rows of x; dots(m0, mc, o, rb) computes rows o .. o + rb of y for rows m0 .. m0 + mc of x.
template <int R, int chunk, typename Dots>
void batch_rows(int64_t rows, int64_t lo, int64_t hi, Dots dots) {
  int64_t o = lo;
  for (; o < hi; o += R) {
    const int64_t rb = std::min<int64_t>(R, hi - o);
    for (int64_t m0 = 0; m0 < rows; m0 += chunk) dots(m0, std::min<int64_t>(chunk, rows - m0), o, rb);
  }
}

// The instruction sets to use: AVX-512 where the CPU has it, unless NEURALLAYERS_ROWDOT=avx2 asks for the AVX2 loops
// (to test them on an AVX-512 machine).
struct Isa {
  bool avx512, avx512bf16, avx2;
};

const Isa& isa() {
  static const Isa found = [] {
    __builtin_cpu_init();
    const char* env = std::getenv("NEURALLAYERS_ROWDOT");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = __builtin_cpu_supports("avx512f") && !(env && std::strcmp(env, "avx2") == 0);
    return Isa{avx512, avx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16"), avx2};
  }();
  return found;
}

// The loops for several rows of x run where they were measured faster than oneDNN: CPUs without AVX-512 (fp32) and
// CPUs without bf16 dot products (bf16, whose oneDNN path there converts element by element: ~1 GFLOP/s).
bool batch_f32() { return !isa().avx512 && isa().avx2; }
bool batch_bf16() { return !isa().avx512bf16 && isa().avx2; }

// Past this many rows of x (a prompt), at::linear's blocked GEMM is faster (fp32: 252 vs 277 ms at 64 rows, 152 vs
// 126 at 32, for GPT-2 124M's weights on 2 Zen 3 cores); bf16 goes to it through float32 copies of x and w where the
// CPU has no bf16 dot products (a 512-token prompt: 5.4 s in the batch loops).
constexpr int64_t kMaxBatchRows = 32;
constexpr int kBlockRows = 3, kBlockX = 4;  // fp32: weight rows x rows of x in registers (12 sums)

// One row of x against w; y (out,) float32.
void one_row(const at::Tensor& x, const at::Tensor& w, float* yp) {
  const Isa& cpu = isa();
  const int64_t out = w.size(0), n = w.size(1);
  if (w.scalar_type() == at::kFloat) {
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) {
      if (cpu.avx512) {
        rows(xp, wp, yp, n, lo, hi, dot_f32);
      } else {
        rows_avx2<4>(xp, wp, yp, n, lo, hi, dot_f32_avx2<4>, dot_f32_avx2<1>);
      }
    });
    return;
  }
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<c10::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>());
  if (cpu.avx512bf16) {
    at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) { rows(xp, wp, yp, n, lo, hi, dot_bf16); });
    return;
  }
  const SplitRows x1 = split_rows(xp, 1, n);
  const SplitX split{x1.xe.data(), x1.xo.data(), x1.xf.data()};
  at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) {
    rows_avx2<1>(split, wp, yp, n, lo, hi, dot_bf16_avx2, dot_bf16_avx2);
  });
}

// `rows` rows of x against w with the AVX2 batch loops; y (rows, out) float32.
void batch(const at::Tensor& x, const at::Tensor& w, int64_t rows, float* yp) {
  const int64_t out = w.size(0), n = w.size(1);
  if (w.scalar_type() == at::kFloat) {
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) {
      batch_rows<kBlockRows, kBlockX>(rows, lo, hi, [&](int64_t m0, int64_t mc, int64_t o, int64_t rb) {
        f32_block<kBlockRows, kBlockX>(rb, mc, xp + m0 * n, wp + o * n, n, yp + m0 * out + o, out);
      });
    });
    return;
  }
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<c10::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>());
  const SplitRows split = split_rows(xp, rows, n);
  at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) {
    batch_rows<1, 4>(rows, lo, hi, [&](int64_t m0, int64_t mc, int64_t o, int64_t) {
      const uint16_t* wo = wp + o * n;
      float* y = yp + m0 * out + o;
      switch (mc) {
        case 1: dots_bf16_avx2<1>(split, m0, wo, n, y, out); break;
        case 2: dots_bf16_avx2<2>(split, m0, wo, n, y, out); break;
        case 3: dots_bf16_avx2<3>(split, m0, wo, n, y, out); break;
        default: dots_bf16_avx2<4>(split, m0, wo, n, y, out); break;
      }
    });
  });
}

// x (..., in) and w (out, in), both contiguous float32 or both bfloat16 -> y (..., out) float32.
at::Tensor rowdot(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), "rowdot: x of shape ", x.sizes(),
              " against w of shape ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "rowdot: x and w differ in dtype");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "rowdot: x and w must be contiguous");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16,
              "rowdot: float32 or bfloat16 only, got ", w.scalar_type());
  const Isa& cpu = isa();
  TORCH_CHECK(cpu.avx512 || cpu.avx2, "rowdot: this CPU has neither AVX-512 nor AVX2 with FMA");
  const int64_t out = w.size(0), n = w.size(1), rows = n == 0 ? 0 : x.numel() / n;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  if (rows == 0) return at::zeros(shape, x.options().dtype(at::kFloat));  // no rows, or rows of no values
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  if (rows > kMaxBatchRows && bf16 && batch_bf16()) return at::linear(x.to(at::kFloat), w.to(at::kFloat));
  if (rows > kMaxBatchRows || (rows > 1 && !(bf16 ? batch_bf16() : batch_f32()))) {
    return at::linear(x, w).to(at::kFloat);  // a blocked GEMM (oneDNN / MKL)
  }
  at::Tensor y = at::empty(shape, x.options().dtype(at::kFloat));
  if (rows == 1) {
    one_row(x, w, y.data_ptr<float>());
  } else {
    batch(x, w, rows, y.data_ptr<float>());
  }
  return y;
}

// Which dtypes this CPU can run: 1 float32, 2 bfloat16 (both with AVX-512 BF16 or with AVX2 and FMA).
int64_t rowdot_dtypes() {
  const Isa& cpu = isa();
  if (cpu.avx512bf16 || cpu.avx2) return 3;
  return cpu.avx512 ? 1 : 0;
}

// The dtypes whose several-row products run the batch loops here (bits as rowdot_dtypes); others call at::linear.
int64_t rowdot_batch_dtypes() { return (batch_f32() ? 1 : 0) | (batch_bf16() ? 2 : 0); }

// The loops in use, by dtype, e.g. "fp32 avx512, bf16 avx512bf16" or "fp32 avx2, bf16 avx2; batches fp32 avx2,
// bf16 avx2"; "" for none.
std::string rowdot_isa() {
  const Isa& cpu = isa();
  std::string out;
  if (cpu.avx512 || cpu.avx2) out += std::string("fp32 ") + (cpu.avx512 ? "avx512" : "avx2");
  if (cpu.avx512bf16 || cpu.avx2) out += std::string(", bf16 ") + (cpu.avx512bf16 ? "avx512bf16" : "avx2");
  if (batch_f32() || batch_bf16()) {
    out += "; batches";
    if (batch_f32()) out += " fp32 avx2";
    if (batch_bf16()) out += std::string(batch_f32() ? "," : "") + " bf16 avx2";
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(neurallayers, m) {
  m.def("rowdot(Tensor x, Tensor w) -> Tensor");
  m.def("rowdot_dtypes() -> int", &rowdot_dtypes);
  m.def("rowdot_batch_dtypes() -> int", &rowdot_batch_dtypes);
  m.def("rowdot_isa() -> str", &rowdot_isa);
}

TORCH_LIBRARY_IMPL(neurallayers, CPU, m) { m.impl("rowdot", &rowdot); }
