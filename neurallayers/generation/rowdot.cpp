// One-row matrix-vector product y = W x for the batch-1 decode step (neurallayers/generation/rowdot.py builds it).
//
// Batch-1 decode on a CPU streams every weight once per token, so its speed is the speed of reading memory. With
// AVX-512 (measured on a Zen 5 host) the products read W row by row and prefetch 4 KiB ahead of the rows being read:
// with the hardware prefetcher alone the same loop (and inductor's) takes 1.1-1.3x the time of a plain read of the
// same bytes, with the software prefetch 1.0x; fp32 uses FMA and bf16 vdpbf16ps (exact bf16 x bf16 products summed in
// float32). CPUs with AVX2 and FMA only (Zen 3, most laptops) get loops eight lanes wide, tuned apart (below); their
// bf16 path widens each weight to float32 with a shift or a mask (a bf16 is the top half of a float32) and multiplies
// it by x, split once into its even and odd values: the same exact products, summed in float32.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int64_t kAheadBytes = 4096;  // how far ahead of the current read to prefetch
constexpr int64_t kRowsPerTask = 64;   // at::parallel_for grain: the work is split into equal halves on 2 cores

__attribute__((target("avx512f"))) inline __m512 dot_f32(const float* x, const float* w, int64_t n) {
  constexpr int64_t ahead = kAheadBytes / sizeof(float);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead + 16), _MM_HINT_T0);
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
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead + 32), _MM_HINT_T0);
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

// x (in,) and w (out, in), both contiguous float32 or both bfloat16 -> y (out,) float32.
at::Tensor rowdot(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && x.numel() == w.size(1), "rowdot: x of ", x.numel(), " values against w of shape ",
              w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "rowdot: x and w differ in dtype");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "rowdot: x and w must be contiguous");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16,
              "rowdot: float32 or bfloat16 only, got ", w.scalar_type());
  const Isa& cpu = isa();
  TORCH_CHECK(cpu.avx512 || cpu.avx2, "rowdot: this CPU has neither AVX-512 nor AVX2 with FMA");
  const int64_t out = w.size(0), n = w.size(1);
  at::Tensor y = at::empty({out}, x.options().dtype(at::kFloat));
  float* yp = y.data_ptr<float>();
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
    return y;
  }
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<c10::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>());
  if (cpu.avx512bf16) {
    at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) { rows(xp, wp, yp, n, lo, hi, dot_bf16); });
    return y;
  }
  TORCH_CHECK(cpu.avx2, "rowdot: bfloat16 needs AVX-512 BF16 or AVX2 with FMA");
  std::vector<float> xf(n), xe(n / 2), xo(n / 2);
  for (int64_t i = 0; i < n; ++i) xf[i] = bf16_to_f32(xp[i]);
  for (int64_t b = 0; b + 16 <= n; b += 16) {
    for (int64_t k = 0; k < 8; ++k) {
      xe[b / 2 + k] = xf[b + 2 * k];
      xo[b / 2 + k] = xf[b + 2 * k + 1];
    }
  }
  const SplitX split{xe.data(), xo.data(), xf.data()};
  at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) {
    rows_avx2<1>(split, wp, yp, n, lo, hi, dot_bf16_avx2, dot_bf16_avx2);
  });
  return y;
}

// Which dtypes this CPU can run: 1 float32, 2 bfloat16 (both with AVX-512 BF16 or with AVX2 and FMA).
int64_t rowdot_dtypes() {
  const Isa& cpu = isa();
  if (cpu.avx512bf16 || cpu.avx2) return 3;
  return cpu.avx512 ? 1 : 0;
}

// The loops in use, by dtype, e.g. "fp32 avx512, bf16 avx512bf16" or "fp32 avx2, bf16 avx2"; "" for none.
std::string rowdot_isa() {
  const Isa& cpu = isa();
  std::string out;
  if (cpu.avx512 || cpu.avx2) out += std::string("fp32 ") + (cpu.avx512 ? "avx512" : "avx2");
  if (cpu.avx512bf16 || cpu.avx2) out += std::string(", bf16 ") + (cpu.avx512bf16 ? "avx512bf16" : "avx2");
  return out;
}

}  // namespace

TORCH_LIBRARY(neurallayers, m) {
  m.def("rowdot(Tensor x, Tensor w) -> Tensor");
  m.def("rowdot_dtypes() -> int", &rowdot_dtypes);
  m.def("rowdot_isa() -> str", &rowdot_isa);
}

TORCH_LIBRARY_IMPL(neurallayers, CPU, m) { m.impl("rowdot", &rowdot); }
