// One query's attention over the KV cache, for the decode step; neurallayers/generation/rowdot.py builds it with
// rowdot.cpp into one library.
//
// Inductor compiles the math attention of a one-token step into one kernel a layer: 33 us a layer for GPT-2 124M in
// bf16 at ~100 cached positions on 2 cores of an Intel Xeon (0.4 ms of an 11 ms step; fp32 50 us). This one takes 19
// us there (fp32 37; the bf16 step 0.3-0.5 ms faster side by side, fp32 no faster within the noise): it reads
// each key and value row once, prefetched (the cache is cold: a step streams 250 MB of weights between two reads of
// a layer's keys), computes the scores in float32 (bf16 values widened exactly), the softmax with a vectorised exp,
// and the weighted sum of the values in float32, rounded once to the output dtype. Hidden keys are neither read nor
// summed (a static cache's unwritten columns may hold anything).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kMaxHeadDim = 256;  // q and the output's sums are held in stack arrays of 16-float vectors

__attribute__((target("avx512f"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

__attribute__((target("avx512f"))) inline __m512 load16(const c10::BFloat16* p) {
  // a bf16 is the top half of a float32: widen exactly with a shift
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx512f"))) inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }

__attribute__((target("avx512f"))) inline void store16(c10::BFloat16* p, __m512 v) {
  // round to nearest even, as torch's float -> bfloat16 (NaN kept a quiet NaN)
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
}

// The last n < 16 values of a head dim that is not a multiple of 16, zero-padded through a small buffer.
template <typename T>
__attribute__((target("avx512f"))) inline __m512 load_tail(const T* p, int64_t n) {
  T buf[kLanes] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
  return load16(buf);
}

template <typename T>
__attribute__((target("avx512f"))) inline void store_tail(T* p, __m512 v, int64_t n) {
  T buf[kLanes];
  store16(buf, v);
  for (int64_t i = 0; i < n; ++i) p[i] = buf[i];
}

// exp(x) for x <= 0 or -inf (scores less their maximum): 2^n e^r with r = x - n ln2 in [-ln2/2, ln2/2] (Cody-Waite),
// e^r by its Taylor polynomial of degree 7 (relative error < 3e-9 there), 2^n by vscalefps, which also underflows
// to 0 and maps -inf to 0.
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  // e^-104 is below float's smallest denormal: 0 after scalef
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln2 split in two: n * hi is exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

constexpr int64_t kAheadRows = 8;  // keys prefetched ahead of the one being scored

inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}

// Where a key may be seen, and the bias added to its score: none (every key), a bool mask (True = attend) or an
// additive float bias (-inf = hidden, e.g. ALiBi's), each read with broadcast strides.
struct Mask {
  const bool* allow = nullptr;
  const float* bias_f32 = nullptr;
  const c10::BFloat16* bias_bf16 = nullptr;
  int64_t sb = 0, sh = 0, ss = 0;

  // -inf for a hidden key, else the bias to add (0 without one)
  float at(int64_t b, int64_t h, int64_t s) const {
    const int64_t i = b * sb + h * sh + s * ss;
    if (allow) return allow[i] ? 0.0f : -std::numeric_limits<float>::infinity();
    if (bias_f32) return bias_f32[i];
    if (bias_bf16) return static_cast<float>(bias_bf16[i]);
    return 0.0f;
  }
};

struct Layout {
  int64_t heads, groups, length, dim;  // query heads, query heads per key head, keys, head dim
  int64_t qb, qh, kb, kh, ks, vb, vh, vs;  // strides of q (B, H, 1, D), k and v (B, H_kv, S, D); D's stride is 1
};

// Output row (b, h): softmax(q k^T * scale + mask) v, zeros where every key is hidden.
template <typename T>
__attribute__((target("avx512f"))) void attend_row(const T* q, const T* k, const T* v, T* out, const Mask& mask,
                                                    const Layout& l, float scale, int64_t b, int64_t h,
                                                    float* scores) {
  const int64_t chunks = l.dim / kLanes, tail = l.dim % kLanes;  // whole vectors, and the values past them
  const T* qr = q + b * l.qb + h * l.qh;
  const T* kr = k + b * l.kb + (h / l.groups) * l.kh;
  const T* vr = v + b * l.vb + (h / l.groups) * l.vh;
  __m512 qv[kMaxHeadDim / kLanes + 1];
  for (int64_t c = 0; c < chunks; ++c) qv[c] = load16(qr + c * kLanes);
  if (tail) qv[chunks] = load_tail(qr + chunks * kLanes, tail);

  const float neg_inf = -std::numeric_limits<float>::infinity();
  float top = neg_inf;
  const int64_t row_bytes = l.dim * static_cast<int64_t>(sizeof(T));
  for (int64_t s = 0; s < l.length; ++s) {
    // The cache is cold (a step streams the weights through every cache between two reads of a layer's keys): fetch
    // the keys a few rows ahead and this row's values, which the sum below reads, while the scores are computed.
    if (s + kAheadRows < l.length) prefetch_row(kr + (s + kAheadRows) * l.ks, row_bytes);
    prefetch_row(vr + s * l.vs, row_bytes);
    const float bias = mask.at(b, h, s);
    if (bias == neg_inf) {
      scores[s] = neg_inf;
      continue;
    }
    const T* ks = kr + s * l.ks;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) acc = _mm512_fmadd_ps(qv[c], load16(ks + c * kLanes), acc);
    if (tail) acc = _mm512_fmadd_ps(qv[chunks], load_tail(ks + chunks * kLanes, tail), acc);
    const float score = _mm512_reduce_add_ps(acc) * scale + bias;
    scores[s] = score;
    top = std::isnan(score) || score > top ? score : top;  // a NaN score makes the row NaN, as in torch
  }
  T* o = out + (b * l.heads + h) * l.dim;
  if (top == neg_inf) {  // every key hidden: zeros, as torch's sdpa gives
    for (int64_t c = 0; c < chunks; ++c) store16(o + c * kLanes, _mm512_setzero_ps());
    if (tail) store_tail(o + chunks * kLanes, _mm512_setzero_ps(), tail);
    return;
  }

  const __m512 topv = _mm512_set1_ps(top);
  __m512 sums = _mm512_setzero_ps();
  int64_t s = 0;
  for (; s + kLanes <= l.length; s += kLanes) {
    const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + s), topv));
    _mm512_storeu_ps(scores + s, p);
    sums = _mm512_add_ps(sums, p);
  }
  float total = _mm512_reduce_add_ps(sums);
  if (s < l.length) {
    const __mmask16 m = static_cast<__mmask16>((1u << (l.length - s)) - 1);
    const __m512 p = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + s), topv));
    _mm512_mask_storeu_ps(scores + s, m, p);
    total += _mm512_mask_reduce_add_ps(m, p);
  }

  __m512 acc[kMaxHeadDim / kLanes + 1];
  for (int64_t c = 0; c <= chunks; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < l.length; ++j) {
    if (scores[j] == 0.0f) continue;  // hidden (or too unlikely to count): its value is never read
    const __m512 p = _mm512_set1_ps(scores[j]);
    const T* vs = vr + j * l.vs;
    for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm512_fmadd_ps(p, load16(vs + c * kLanes), acc[c]);
    if (tail) acc[chunks] = _mm512_fmadd_ps(p, load_tail(vs + chunks * kLanes, tail), acc[chunks]);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / total);
  for (int64_t c = 0; c < chunks; ++c) store16(o + c * kLanes, _mm512_mul_ps(acc[c], inv));
  if (tail) store_tail(o + chunks * kLanes, _mm512_mul_ps(acc[chunks], inv), tail);
}

// AVX-512, unless NEURALLAYERS_ROWDOT=avx2 asks to behave as a CPU without it (as rowdot.cpp's loops do)
bool has_avx512() {
  static const bool found = [] {
    __builtin_cpu_init();
    const char* env = std::getenv("NEURALLAYERS_ROWDOT");
    return __builtin_cpu_supports("avx512f") != 0 && !(env && std::strcmp(env, "avx2") == 0);
  }();
  return found;
}

// q (B, H, 1, D), k and v (B, H_kv, S, D) with H a multiple of H_kv and D at most 256, all float32 or
// all bfloat16, each with D contiguous; mask: None, bool (True = attend) or an additive float bias, broadcastable to
// (B, H, 1, S). -> (B, H, 1, D) contiguous, in q's dtype.
at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                            const std::optional<at::Tensor>& mask_in, double scale) {
  TORCH_CHECK(has_avx512(), "decode_attention: needs AVX-512");
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4 && q_in.size(2) == 1,
              "decode_attention: q (B, H, 1, D), k and v (B, H_kv, S, D); got ", q_in.sizes(), ", ", k_in.sizes(),
              ", ", v_in.sizes());
  const int64_t batch = q_in.size(0), heads = q_in.size(1), dim = q_in.size(3);
  const int64_t kv_heads = k_in.size(1), length = k_in.size(2);
  TORCH_CHECK(k_in.size(0) == batch && v_in.sizes() == k_in.sizes() && k_in.size(3) == dim && kv_heads > 0 &&
                  heads % kv_heads == 0,
              "decode_attention: shapes do not match: q ", q_in.sizes(), ", k ", k_in.sizes(), ", v ", v_in.sizes());
  TORCH_CHECK(dim > 0 && dim <= kMaxHeadDim, "decode_attention: head dim ", dim, " must be in [1, 256]");
  const auto dtype = q_in.scalar_type();
  TORCH_CHECK((dtype == at::kFloat || dtype == at::kBFloat16) && k_in.scalar_type() == dtype &&
                  v_in.scalar_type() == dtype,
              "decode_attention: q, k and v must all be float32 or all bfloat16");
  // D must be contiguous; anything else is copied (a compiled step passes views that already are)
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  at::Tensor out = at::empty({batch, heads, 1, dim}, q.options());
  if (batch == 0 || heads == 0) return out;

  Mask mask;
  at::Tensor m;  // keeps an expanded view alive
  if (mask_in.has_value()) {
    TORCH_CHECK(mask_in->dim() <= 4, "decode_attention: mask must broadcast to (B, H, 1, S), got ", mask_in->sizes());
    m = mask_in->expand({batch, heads, 1, length});
    mask.sb = m.stride(0);
    mask.sh = m.stride(1);
    mask.ss = m.stride(3);
    if (m.scalar_type() == at::kBool) {
      mask.allow = m.data_ptr<bool>();
    } else if (m.scalar_type() == at::kFloat) {
      mask.bias_f32 = m.data_ptr<float>();
    } else {
      TORCH_CHECK(m.scalar_type() == at::kBFloat16, "decode_attention: mask must be bool, float32 or bfloat16");
      mask.bias_bf16 = m.data_ptr<c10::BFloat16>();
    }
  }
  const Layout l{heads, heads / kv_heads, length, dim, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                 k.stride(2), v.stride(0), v.stride(1), v.stride(2)};
  const auto s = static_cast<float>(scale);
  at::parallel_for(0, batch * heads, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> scores(length);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / heads, h = i % heads;
      if (dtype == at::kFloat) {
        attend_row(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr<float>(), mask, l,
                   s, b, h, scores.data());
      } else {
        attend_row(q.data_ptr<c10::BFloat16>(), k.data_ptr<c10::BFloat16>(), v.data_ptr<c10::BFloat16>(),
                   out.data_ptr<c10::BFloat16>(), mask, l, s, b, h, scores.data());
      }
    }
  });
  return out;
}

// Which dtypes it runs here (bits as rowdot_dtypes: 1 float32, 2 bfloat16): both with AVX-512, none without.
int64_t decode_attention_dtypes() { return has_avx512() ? 3 : 0; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(neurallayers, m) {
  // flexible_layout: inductor may pass the cache's own strided window (the kernel reads any strides) instead of a copy
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor", {at::Tag::flexible_layout});
  m.def("decode_attention_dtypes() -> int", &decode_attention_dtypes);
}

TORCH_LIBRARY_IMPL(neurallayers, CPU, m) { m.impl("decode_attention", &decode_attention); }
