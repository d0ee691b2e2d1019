// Symmetric int8 quantization for the int8_qkv paths, rounded as docs/semantics.md §2 says (the VNNI
// products that consume the levels are in vnni_tile.h).
#pragma once

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common/relu.h"
#include "cpu/attention_common.h"

namespace fastattn::cpu {

#ifdef __AVX512F__
// d[0..16) = int8_level's rounding of y = x / scale: round half away from zero, clamped to +-127.
inline void store_levels16(int8_t* d, __m512 y) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  const __m512 a = _mm512_min_ps(_mm512_roundscale_ps(_mm512_add_ps(_mm512_andnot_ps(sign, y), _mm512_set1_ps(0.5f)),
                                                      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
                                 _mm512_set1_ps(127.0f));
  const __m512 q = _mm512_or_ps(a, _mm512_and_ps(sign, y));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(q)));
}
#endif

// Quantize `rows` contiguous rows of length n, one scale per row: scale = max|x| / 127 (1 if all
// zero), level = round_half_away(x / scale). Levels go to dst (stride n), scales to scales[r].
// The AVX-512 loops compute exactly int8_level's arithmetic (a division, floor(|y| + 0.5), sign).
// A row holding a non-finite value gets the scale NaN (and levels 0), so every score it takes part
// in is NaN, as with unquantized operands (CONTRACTS §2: the integer products alone would hide it).
template <typename T>
inline void quantize_rows(const T* src, int64_t rows, int64_t n, int8_t* dst, float* scales) {
  std::vector<float> buf(std::is_same_v<T, float> ? 0 : n);
  for (int64_t r = 0; r < rows; ++r) {
    const float* x;
    if constexpr (std::is_same_v<T, float>) {
      x = src + r * n;
    } else {
      for (int64_t c = 0; c < n; ++c) buf[c] = static_cast<float>(src[r * n + c]);
      x = buf.data();
    }
    float part[16] = {};
    int64_t c = 0;
    for (; c + 16 <= n; c += 16)
      for (int l = 0; l < 16; ++l) part[l] = std::max(part[l], std::abs(x[c + l]));
    float amax = 0.0f;
    for (int l = 0; l < 16; ++l) amax = std::max(amax, part[l]);
    for (; c < n; ++c) amax = std::max(amax, std::abs(x[c]));
    const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
    int8_t* d = dst + r * n;
    if (!all_finite(x, n)) {
      std::fill(d, d + n, int8_t{0});
      scales[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    c = 0;
#ifdef __AVX512F__
    for (; c + 16 <= n; c += 16) store_levels16(d + c, _mm512_div_ps(_mm512_loadu_ps(x + c), _mm512_set1_ps(s)));
#endif
    for (; c < n; ++c) d[c] = int8_level(x[c], s);
    scales[r] = s;
  }
}

// Per-column quantization of a row-major rows x n matrix (v per channel over the sequence):
// scales[c] = max_r |x[r][c]| / 127 (1 if all zero), dst[r][c] = round_half_away(x[r][c] / scales[c]).
// Non-finite values take no part in the scales (as if they were 0), and their rows (`bad`, increasing)
// get levels 0: the rows that read them are NaN by the driver, the others stay exact (CONTRACTS §2).
// With `allowed` (per row), only the allowed rows make the scales (the others get clamped levels).
template <typename T>
inline void quantize_cols(const T* src, int64_t rows, int64_t n, int8_t* dst, float* scales,
                          std::vector<int32_t>& bad, const bool* allowed = nullptr) {
  nonfinite_rows(src, rows, n, n, bad);
  std::vector<float> amax(n, 0.0f), row(n);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n && (allowed == nullptr || allowed[r]); ++c) {
      const float a = std::abs(static_cast<float>(src[r * n + c]));
      amax[c] = a <= std::numeric_limits<float>::max() ? std::max(amax[c], a) : amax[c];  // false for NaN, inf
    }
  for (int64_t c = 0; c < n; ++c) scales[c] = amax[c] > 0.0f ? amax[c] / 127.0f : 1.0f;
  auto b = bad.begin();
  for (int64_t r = 0; r < rows; ++r) {
    int8_t* d = dst + r * n;
    if (b != bad.end() && *b == r) {
      ++b;
      std::fill(d, d + n, int8_t{0});
      continue;
    }
    for (int64_t c = 0; c < n; ++c) row[c] = static_cast<float>(src[r * n + c]);
    int64_t c = 0;
#ifdef __AVX512F__
    for (; c + 16 <= n; c += 16) store_levels16(d + c, _mm512_div_ps(_mm512_loadu_ps(row.data() + c), _mm512_loadu_ps(scales + c)));
#endif
    for (; c < n; ++c) d[c] = int8_level(row[c], scales[c]);
  }
}

}  // namespace fastattn::cpu
