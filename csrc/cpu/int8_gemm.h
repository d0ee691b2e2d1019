// int8 building blocks for the CPU kernels: SPEC-rounded symmetric quantization, VNNI packing and
// u8 x s8 -> s32 tile products on AVX512-VNNI (vpdpbusd), with a portable scalar fallback.
//
// vpdpbusd multiplies unsigned bytes by signed bytes, 4 at a time per 32-bit lane. Signed q is made
// unsigned by adding 128; the excess 128 * sum_d k_jd is subtracted afterwards (exact in int32).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define FASTATTN_VNNI 1
#endif

#include "common/relu.h"

namespace fastattn::cpu {

// Quantize `rows` contiguous rows of length n, one scale per row: scale = max|x| / 127 (1 if all
// zero), level = round_half_away(x / scale). Levels go to dst (stride n), scales to scales[r].
template <typename T>
inline void quantize_rows(const T* src, int64_t rows, int64_t n, int8_t* dst, float* scales) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = src + r * n;
    float amax = 0.0f;
    for (int64_t c = 0; c < n; ++c) amax = std::max(amax, std::abs(static_cast<float>(x[c])));
    const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
    for (int64_t c = 0; c < n; ++c) dst[r * n + c] = int8_level(static_cast<float>(x[c]), s);
    scales[r] = s;
  }
}

// Key-major int8 matrix (N x D, row stride D) packed for vpdpbusd: blocks of 16 rows (keys) x
// groups of 4 columns, 64 bytes per (block, group): byte [lane * 4 + t] = src[16 b + lane][4 g + t].
// Rows / columns beyond N / D are zero. Also returns rowsum[j] = sum_d src[j][d].
struct PackedK {
  int64_t n_blocks = 0, n_groups = 0;
  std::vector<int8_t> data;
  std::vector<int32_t> rowsum;
  void pack(const int8_t* src, int64_t N, int64_t D) {
    n_blocks = (N + 15) / 16;
    n_groups = (D + 3) / 4;
    data.assign(n_blocks * n_groups * 64, 0);
    rowsum.assign(n_blocks * 16, 0);
    for (int64_t j = 0; j < N; ++j)
      for (int64_t c = 0; c < D; ++c) {
        data[((j / 16) * n_groups + c / 4) * 64 + (j % 16) * 4 + c % 4] = src[j * D + c];
        rowsum[j] += src[j * D + c];
      }
  }
  const int8_t* block(int64_t b) const { return data.data() + b * n_groups * 64; }
};

// acc[r][0..16) = sum_g <ua[r][4g..4g+4), packed block [g]> for rows r < rows (<= 8):
// ua is an unsigned (row stride lda) operand of n_groups * 4 bytes per row.
inline void dot_block16(const uint8_t* ua, int64_t lda, int64_t rows, const int8_t* blk, int64_t n_groups,
                        int32_t* acc /* rows x 16 */) {
#ifdef FASTATTN_VNNI
  __m512i c[8];
  for (int r = 0; r < 8; ++r) c[r] = _mm512_setzero_si512();
  for (int64_t g = 0; g < n_groups; ++g) {
    const __m512i b = _mm512_loadu_si512(blk + g * 64);
    for (int64_t r = 0; r < rows; ++r) {
      int32_t a4;
      std::memcpy(&a4, ua + r * lda + g * 4, 4);
      c[r] = _mm512_dpbusd_epi32(c[r], _mm512_set1_epi32(a4), b);
    }
  }
  for (int64_t r = 0; r < rows; ++r) _mm512_storeu_si512(acc + r * 16, c[r]);
#else
  for (int64_t r = 0; r < rows; ++r)
    for (int lane = 0; lane < 16; ++lane) {
      int32_t s = 0;
      for (int64_t g = 0; g < n_groups; ++g)
        for (int t = 0; t < 4; ++t)
          s += static_cast<int32_t>(ua[r * lda + g * 4 + t]) * static_cast<int32_t>(blk[g * 64 + lane * 4 + t]);
      acc[r * 16 + lane] = s;
    }
#endif
}

}  // namespace fastattn::cpu
