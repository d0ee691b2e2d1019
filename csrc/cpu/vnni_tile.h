// Register-blocked tile products on AVX-512 "dot-pair" instructions, shared by the int8 and bf16
// CPU paths:
//   int8: vpdpbusd   (u8 x s8 -> s32, 4 products per 32-bit lane)   -- AVX512-VNNI
//   bf16: vdpbf16ps  (bf16 x bf16 -> fp32, 2 products per lane)     -- AVX512-BF16
// C[r][16 nb + lane] = sum_g <A[r] unit g, B block nb unit (g, lane)>, where a "unit" is 32 bits
// (4 int8 or 2 bf16 along the reduction dimension). A rows are read as units and broadcast; B is
// packed (Packed16) so one 64-byte load feeds 16 output columns. R rows x NB blocks of 16 columns
// stay in registers for the whole reduction, and a caller functor consumes each finished vector
// (scaling, masking, ... fused into the store).
//
//   Packed16<int8_t> kp; kp.pack(Nk, D, [&](int64_t j, int64_t d) { return k8[j * D + d]; });
//   tile_rows<Int8Dot, 2>(rows, qu_units, Dp / 4, kp.at(block, 0), kp.block_stride(), kp.n_groups, store);
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include <c10/util/BFloat16.h>

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define FASTATTN_VNNI 1
#endif
#if defined(FASTATTN_VNNI) && defined(__AVX512BF16__)
#define FASTATTN_AVX512_BF16 1
#endif

namespace fastattn::cpu {

// B operand (n_out x n_red, element (o, r) from get(o, r)) packed in blocks of 16 output columns
// x groups of 32-bit units along the reduction: unit ((b * n_groups + g) * 16 + lane) holds the U
// elements (16 b + lane, U g + t), t < U. Out-of-range elements are zero.
template <typename E>
struct Packed16 {
  static constexpr int64_t U = 4 / sizeof(E);
  int64_t n_blocks = 0, n_groups = 0;
  std::vector<uint32_t> data;
  template <typename Get>
  void pack(int64_t n_out, int64_t n_red, Get get) {
    n_blocks = (n_out + 15) / 16;
    n_groups = (n_red + U - 1) / U;
    data.assign(n_blocks * n_groups * 16, 0u);
    E* e = reinterpret_cast<E*>(data.data());
    for (int64_t b = 0; b < n_blocks; ++b)
      for (int64_t g = 0; g < n_groups; ++g, e += 16 * U)
        for (int64_t lane = 0; lane < 16 && 16 * b + lane < n_out; ++lane)
          for (int64_t t = 0; t < U && U * g + t < n_red; ++t) e[lane * U + t] = get(16 * b + lane, U * g + t);
  }
  int64_t block_stride() const { return n_groups * 16; }
  const uint32_t* at(int64_t block, int64_t group) const { return data.data() + (block * n_groups + group) * 16; }
};

#ifdef FASTATTN_VNNI
struct Int8Dot {  // A: u8 units, B: s8 units, C: s32
  using V = __m512i;
  static V zero() { return _mm512_setzero_si512(); }
  static V dot(V c, __m512i a, __m512i b) { return _mm512_dpbusd_epi32(c, a, b); }
};
#endif
#ifdef FASTATTN_AVX512_BF16
struct Bf16Dot {  // A, B: bf16 pairs, C: fp32
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V dot(V c, __m512i a, __m512i b) { return _mm512_dpbf16_ps(c, (__m512bh)a, (__m512bh)b); }
};

// dst[0..n) = bf16(src[0..n)) (round to nearest even), n a multiple of 32 or a zero-padded tail.
inline void to_bf16(const float* src, int64_t n, c10::BFloat16* dst) {
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + c + 16), _mm512_loadu_ps(src + c));
    _mm512_storeu_si512(dst + c, (__m512i)v);
  }
  for (; c < n; ++c) dst[c] = c10::BFloat16(src[c]);
}
#endif

#ifdef FASTATTN_VNNI
// R rows (compile time) x NB blocks of 16 columns; a: rows of 32-bit units (row stride lda units),
// b: NB blocks at stride bstride units, n_groups units deep. store(r, nb, vector) gets each result.
template <class Op, int R, int NB, typename Store>
inline void tile_kernel(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t bstride, int64_t n_groups,
                        Store&& store) {
  typename Op::V c[R][NB];
  for (int r = 0; r < R; ++r)
    for (int nb = 0; nb < NB; ++nb) c[r][nb] = Op::zero();
  for (int64_t g = 0; g < n_groups; ++g) {
    __m512i bv[NB];
    for (int nb = 0; nb < NB; ++nb) bv[nb] = _mm512_loadu_si512(b + nb * bstride + g * 16);
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[r * lda + g]));
      for (int nb = 0; nb < NB; ++nb) c[r][nb] = Op::dot(c[r][nb], av, bv[nb]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int nb = 0; nb < NB; ++nb) store(r, nb, c[r][nb]);
}

// tile_kernel over `rows` (<= 8, run time) rows, NB blocks.
template <class Op, int NB, typename Store>
inline void tile_rows(int64_t rows, const uint32_t* a, int64_t lda, const uint32_t* b, int64_t bstride,
                      int64_t n_groups, Store&& store) {
  switch (rows) {
    case 8: return tile_kernel<Op, 8, NB>(a, lda, b, bstride, n_groups, store);
    case 7: return tile_kernel<Op, 7, NB>(a, lda, b, bstride, n_groups, store);
    case 6: return tile_kernel<Op, 6, NB>(a, lda, b, bstride, n_groups, store);
    case 5: return tile_kernel<Op, 5, NB>(a, lda, b, bstride, n_groups, store);
    case 4: return tile_kernel<Op, 4, NB>(a, lda, b, bstride, n_groups, store);
    case 3: return tile_kernel<Op, 3, NB>(a, lda, b, bstride, n_groups, store);
    case 2: return tile_kernel<Op, 2, NB>(a, lda, b, bstride, n_groups, store);
    default: return tile_kernel<Op, 1, NB>(a, lda, b, bstride, n_groups, store);
  }
}

// Full product: C (rows x 16 * n_blocks) over row groups of 8 and column pairs of blocks.
// store(r, block, vector) with r the row index and block the 16-column block index.
template <class Op, typename Store>
inline void tile_product(int64_t rows, const uint32_t* a, int64_t lda, const uint32_t* b0, int64_t bstride,
                         int64_t n_blocks, int64_t n_groups, Store&& store) {
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int64_t rr = std::min<int64_t>(8, rows - r0);
    int64_t nb = 0;
    for (; nb + 2 <= n_blocks; nb += 2)
      tile_rows<Op, 2>(rr, a + r0 * lda, lda, b0 + nb * bstride, bstride, n_groups,
                       [&](int r, int k, typename Op::V v) { store(r0 + r, nb + k, v); });
    if (nb < n_blocks)
      tile_rows<Op, 1>(rr, a + r0 * lda, lda, b0 + nb * bstride, bstride, n_groups,
                       [&](int r, int, typename Op::V v) { store(r0 + r, nb, v); });
  }
}
#endif

}  // namespace fastattn::cpu
