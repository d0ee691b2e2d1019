// One query row against a run of keys (the decode-step score GEMV): s[j] = alpha * q . k_j.
//
// Why not BLAS: MKL's sgemm/sgemv for M = 1 with a row-major K runs at ~13 GFLOP/s on the dev
// machine, about half the rate at which the core can stream K from L3; a decode step is nothing
// but this product. Here 16 keys go at a time, one fp32 accumulator per key over D, and a
// transpose-and-add tree leaves their 16 dot products in one register. bf16/fp16 keys are widened
// on load, so no fp32 copy of K is made.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define FASTATTN_GEMV_AVX512 1
#include <immintrin.h>
#endif

namespace fastattn::cpu {

#ifdef FASTATTN_GEMV_AVX512
namespace gemv_detail {

// 16 values of T from p (lanes outside `m` read nothing and are 0), widened to fp32.
template <typename T>
inline __m512 load16(const T* p, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(m, p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {  // bf16 = the high half of an fp32
    const __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    static_assert(std::is_same_v<T, c10::Half>);
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
}

// r[j] = sum of the 16 lanes of a[j], j < 16. Each step adds two halves of every input while
// packing two inputs into one register (512 -> 256 -> 128 bits per key, then within 128-bit
// lanes); the last step leaves key 4m + L at position 4L + m, which one permute undoes.
inline __m512 reduce16(__m512 a[16]) {
  __m512 z[8], w[4], u[2];
  for (int i = 0; i < 8; ++i)
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(w[2 * i], w[2 * i + 1]), _mm512_unpackhi_ps(w[2 * i], w[2 * i + 1]));
  const __m512d u0 = _mm512_castps_pd(u[0]), u1 = _mm512_castps_pd(u[1]);
  const __m512 r = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(u0, u1)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(u0, u1)));
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_ps(order, r);
}

}  // namespace gemv_detail
#endif

// s[j] = alpha * sum_d q[d] * float(K[j * D + d]) for j < n.
// q: (D,) fp32; K: (n, D) row-major; s: (n,) fp32.
// Example: gemv_nt(Nk, 64, scale, q_row, k_head, scores)   // one decode query's scores
template <typename T>
inline void gemv_nt(int64_t n, int64_t D, float alpha, const float* q, const T* K, float* s) {
  int64_t j = 0;
#ifdef FASTATTN_GEMV_AVX512
  using gemv_detail::load16;
  for (; j + 16 <= n; j += 16) {
    const T* kb = K + j * D;
    __m512 acc[16];  // stays in registers: 16 accumulators + one q chunk of the 32 zmm
    for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < D; c += 16) {
      const __mmask16 m = D - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (D - c)) - 1);
      const __m512 qc = _mm512_maskz_loadu_ps(m, q + c);
      for (int r = 0; r < 16; ++r) {
        // 8 KB ahead: with the hardware prefetcher alone, one core streams K from L3 ~15% slower
        // (measured 2-8 KB and 16-32 KB: worse). Prefetches never fault, so running past the end
        // of K is harmless.
        _mm_prefetch(reinterpret_cast<const char*>(kb + r * D + c) + 8192, _MM_HINT_T0);
        acc[r] = _mm512_fmadd_ps(load16(kb + r * D + c, m), qc, acc[r]);
      }
    }
    _mm512_storeu_ps(s + j, _mm512_mul_ps(gemv_detail::reduce16(acc), _mm512_set1_ps(alpha)));
  }
#endif
  for (; j < n; ++j) {  // the last n % 16 keys (all of them without AVX-512)
    const T* kr = K + j * D;
    float dot = 0.0f;
    for (int64_t c = 0; c < D; ++c) dot += q[c] * static_cast<float>(kr[c]);
    s[j] = alpha * dot;
  }
}

}  // namespace fastattn::cpu
