// A few query rows against a run of keys (the decode-step score GEMV): S[r, j] = alpha * q_r . k_j.
//
// Why not BLAS: MKL's sgemm/sgemv for M = 1 with a row-major K runs at ~13 GFLOP/s on the dev
// machine, about half the rate at which the core can stream K from L3; a decode step is nothing
// but this product. Here 16 (row, key) pairs go at a time, one fp32 accumulator each over D, and
// a transpose-and-add tree leaves their 16 dot products in one register. bf16/fp16 keys are
// widened on load, so no fp32 copy of K is made.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
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

// S[r * ldS + j] = alpha * sum_d Q[r * D + d] * float(K[j * D + d]) for r < R, j < n: the scores of
// R query rows (R = 1, 2, 4, 8 or 16; see kGemvMaxRows), reading each key once for all of them.
// Q: (R, D) fp32; K: (n, D) row-major; S: (R, ldS) fp32.
// Each step takes 16 / R keys, so the 16 accumulators are the (row, key) pairs of the step and one
// transpose-add tree (reduce16) finishes all of them.
// Example: gemv_rows<4>(Nk, 64, scale, q_rows, k_head, scores, Nk)   // 4 decode queries
template <int R, typename T>
inline void gemv_rows(int64_t n, int64_t D, float alpha, const float* Q, const T* K, float* S, int64_t ldS) {
  static_assert(R == 1 || R == 2 || R == 4 || R == 8 || R == 16, "R must divide 16");
  constexpr int NK = 16 / R;  // keys per step
  int64_t j = 0;
#ifdef FASTATTN_GEMV_AVX512
  using gemv_detail::load16;
  for (; j + NK <= n; j += NK) {
    const T* kb = K + j * D;
    __m512 acc[16];  // acc[r * NK + kk]: query row r against key j + kk
    for (int a = 0; a < 16; ++a) acc[a] = _mm512_setzero_ps();
    for (int64_t c = 0; c < D; c += 16) {
      const __mmask16 m = D - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (D - c)) - 1);
      __m512 qc[R];  // (spilled to the stack, i.e. L1, when R = 16 leaves no registers)
      for (int r = 0; r < R; ++r) qc[r] = _mm512_maskz_loadu_ps(m, Q + r * D + c);
      for (int kk = 0; kk < NK; ++kk) {
        // 8 KB ahead: with the hardware prefetcher alone, one core streams K from L3 ~15% slower
        // (measured 2-8 KB and 16-32 KB: worse). Prefetches never fault, so running past the end
        // of K is harmless.
        _mm_prefetch(reinterpret_cast<const char*>(kb + kk * D + c) + 8192, _MM_HINT_T0);
        const __m512 x = load16(kb + kk * D + c, m);
        for (int r = 0; r < R; ++r)
          acc[r * NK + kk] = _mm512_fmadd_ps(x, qc[r], acc[r * NK + kk]);
      }
    }
    const __m512 sums = _mm512_mul_ps(gemv_detail::reduce16(acc), _mm512_set1_ps(alpha));
    if constexpr (R == 1) {
      _mm512_storeu_ps(S + j, sums);
    } else {
      alignas(64) float out[16];
      _mm512_store_ps(out, sums);
      for (int r = 0; r < R; ++r)
        for (int kk = 0; kk < NK; ++kk) S[r * ldS + j + kk] = out[r * NK + kk];
    }
  }
#endif
  for (; j < n; ++j) {  // the keys after the last full step (all of them without AVX-512)
    const T* kr = K + j * D;
    for (int r = 0; r < R; ++r) {
      float dot = 0.0f;
      for (int64_t c = 0; c < D; ++c) dot += Q[r * D + c] * static_cast<float>(kr[c]);
      S[r * ldS + j] = alpha * dot;
    }
  }
}

// Rows per call that gemv_small takes: up to 4 query rows beat MKL's small-M sgemm here (1.5x at 4
// rows, 2.3x at 2, single thread); at 8 and 16 the reduction tree costs more than the products.
constexpr int64_t kGemvMaxRows = 4;

// Scores of `rows` <= kGemvMaxRows query rows (Q: rows x D) against n keys into S (rows x ldS);
// 3 rows run as 4, with a zero query row from `qpad` (4 x D floats) whose scores land in S row 3,
// which the caller must leave room for.
template <typename T>
inline void gemv_small(int64_t rows, int64_t n, int64_t D, float alpha, const float* Q, const T* K, float* S,
                       int64_t ldS, float* qpad) {
  if (rows == 3) {
    std::copy(Q, Q + 3 * D, qpad);
    std::fill(qpad + 3 * D, qpad + 4 * D, 0.0f);
    Q = qpad;
    rows = 4;
  }
  switch (rows) {
    case 1: return gemv_rows<1>(n, D, alpha, Q, K, S, ldS);
    case 2: return gemv_rows<2>(n, D, alpha, Q, K, S, ldS);
    default: return gemv_rows<4>(n, D, alpha, Q, K, S, ldS);
  }
}

}  // namespace fastattn::cpu
