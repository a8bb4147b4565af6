// One-row matrix-vector product y = W x for the batch-1 decode step (neurallayers/generation/rowdot.py builds it).
//
// Batch-1 decode on a CPU streams every weight once per token, so its speed is the speed of reading memory. The
// products here read W row by row with AVX-512 and prefetch 4 KiB ahead of the rows being read: with the hardware
// prefetcher alone the same loop (and inductor's) takes 1.1-1.3x the time of a plain read of the same bytes, with the
// software prefetch 1.0x. fp32 uses FMA; bf16 uses vdpbf16ps (exact bf16 x bf16 products summed in float32).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

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

// x (in,) and w (out, in), both contiguous float32 or both bfloat16 -> y (out,) float32.
at::Tensor rowdot(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && x.numel() == w.size(1), "rowdot: x of ", x.numel(), " values against w of shape ",
              w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "rowdot: x and w differ in dtype");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "rowdot: x and w must be contiguous");
  const int64_t out = w.size(0), n = w.size(1);
  at::Tensor y = at::empty({out}, x.options().dtype(at::kFloat));
  float* yp = y.data_ptr<float>();
  if (w.scalar_type() == at::kFloat) {
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) { rows(xp, wp, yp, n, lo, hi, dot_f32); });
  } else {
    TORCH_CHECK(w.scalar_type() == at::kBFloat16, "rowdot: float32 or bfloat16 only, got ", w.scalar_type());
    const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<c10::BFloat16>());
    const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>());
    at::parallel_for(0, out, kRowsPerTask, [&](int64_t lo, int64_t hi) { rows(xp, wp, yp, n, lo, hi, dot_bf16); });
  }
  return y;
}

// Which dtypes this CPU can run: 1 float32 (AVX-512F), 2 bfloat16 (AVX-512 BF16).
int64_t rowdot_dtypes() {
  __builtin_cpu_init();
  int64_t bits = 0;
  if (__builtin_cpu_supports("avx512f")) bits |= 1;
  if (bits && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16")) bits |= 2;
  return bits;
}

}  // namespace

TORCH_LIBRARY(neurallayers, m) {
  m.def("rowdot(Tensor x, Tensor w) -> Tensor");
  m.def("rowdot_dtypes() -> int", &rowdot_dtypes);
}

TORCH_LIBRARY_IMPL(neurallayers, CPU, m) { m.impl("rowdot", &rowdot); }
