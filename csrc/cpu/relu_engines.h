// Operand engines of the CPU relu_attention forward (relu_attention.cpp drives the passes): each
// one computes a tile of scores alpha * Q K^T and accumulates acc += P V for its input path.
//   FloatEngine<T>: fp32 / fp16 tiles (and bf16 without AVX512-BF16) through MKL's GEMMs.
//   Bf16Engine:     bf16 inputs on vdpbf16ps: K and V packed once per call, P rounded to bf16.
//   Int8Engine<T>:  int8_qkv: q, k per token and v per channel quantized once (docs/semantics.md §2), Q K^T on
//                   vpdpbusd; with quant the integer weight levels (u8) multiply int8 V on vpdpbusd,
//                   else p (as a bf16 hi + lo pair) multiplies the v levels on vdpbf16ps (without
//                   AVX512-BF16: fp32 GEMM against the dequantized v).
// Keys come in segments (KvSegs): kv = bhk * G + g, the keys [k0, k0 + nk) of (batch, kv head) bhk;
// one segment per packed sequence with cu_seqlens, else one holding every key. Query rows i0 are
// indices along Nq, key indices j0 are relative to the segment.
// Interface (all const, per-thread state in Local): kRoundsP (pv rounds unquantized P to bf16);
//   Local(dims); begin(L, bh, i0, rows); scores(L, kv, bh, i0, rows, j0, cols, alpha, S, ldS);
//   bad_values(L, kv, j0, cols, partial, bad); pv(L, P, ldP, kv, rows, j0, cols, levels, acc, ldA); acc_ld().
// bad_values lists the keys of a tile whose non-finite v the next pv calls leave out (CONTRACTS §2):
// engines that pack v drop them always; FloatEngine only where some row masks a key (`partial`),
// elsewhere the NaN reaches acc and the driver sees it there.
// `scores` may write up to the next multiple of 16 columns (ldS must allow it). `levels`: P holds
// integer weight levels 0..2^bits-1 (as floats) rather than unquantized weights.
#pragma once

#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

#include "cpu/attention_common.h"
#include "cpu/int8_quant.h"
#include "cpu/varlen.h"
#include "cpu/vnni_tile.h"

namespace fastattn::cpu {

constexpr int64_t kRowsPerTask = 128;  // query rows per forward task (kBM in relu_attention.cpp)
constexpr int64_t kKeysPerTile = 512;  // keys per forward tile (kBN)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-task operand access for MKL GEMMs: fp32 tiles (converted when needed) or native bf16.
template <typename T>
struct Tiles {
  static constexpr bool kBf16 = std::is_same_v<T, c10::BFloat16>;
  static constexpr bool kCopy = !kBf16 && !std::is_same_v<T, float>;
  std::vector<float> qbuf, kbuf, vbuf, vclean;
  std::vector<c10::BFloat16> pbuf;
  Tiles(int64_t D, int64_t Dv, int64_t bm, int64_t bn)
      : qbuf(kCopy ? bm * D : 0), kbuf(kCopy ? bn * D : 0), vbuf(kCopy ? bn * Dv : 0), pbuf(kBf16 ? bm * bn : 0) {}
  const T* q_raw = nullptr;
  const float* q_f = nullptr;
  void set_q(const T* q, int64_t rows, int64_t D) {
    if constexpr (kBf16) q_raw = q; else q_f = tile_ptr(q, rows, D, qbuf.data());
  }
  // S[rows x cols] = alpha * Q K^T
  void qk(const T* k, int64_t rows, int64_t cols, int64_t D, float alpha, float* S, int64_t ldS) {
    if constexpr (kBf16) gemm_bf16(false, true, rows, cols, D, alpha, q_raw, D, k, D, 0.0f, S, ldS);
    else gemm_nt(rows, cols, D, alpha, q_f, D, tile_ptr(k, cols, D, kbuf.data()), D, 0.0f, S, ldS);
  }
  // acc[rows x Dv] (row stride ldA) += P V, leaving out the keys in `bad` (tile rows of v holding a
  // non-finite value: a zero weight must not turn them into NaN)
  void pv(const float* P, int64_t ldP, const T* v, int64_t rows, int64_t cols, int64_t Dv, float* acc, int64_t ldA,
          const std::vector<int32_t>& bad) {
    if (!bad.empty()) {
      vclean.resize(cols * Dv);
      load_tile(v, Dv, cols, Dv, vclean.data(), Dv);
      for (const int32_t c : bad) std::fill(vclean.begin() + c * Dv, vclean.begin() + (c + 1) * Dv, 0.0f);
      gemm_nn(rows, Dv, cols, 1.0f, P, ldP, vclean.data(), Dv, 1.0f, acc, ldA);
    } else if constexpr (kBf16) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) pbuf[r * cols + c] = c10::BFloat16(P[r * ldP + c]);
      gemm_bf16(false, false, rows, Dv, cols, 1.0f, pbuf.data(), cols, v, Dv, 1.0f, acc, ldA);
    } else {
      gemm_nn(rows, Dv, cols, 1.0f, P, ldP, tile_ptr(v, cols, Dv, vbuf.data()), Dv, 1.0f, acc, ldA);
    }
  }
};

struct KvSegs {
  int64_t G = 1, n = 0;          // segments per (batch, kv head), and in all
  std::vector<int64_t> k0, nk;  // per g
  KvSegs(const Dims& d, const Ragged& rg) {
    if (rg.varlen) {
      G = static_cast<int64_t>(rg.seqs.size());
      for (const Seq& sq : rg.seqs) k0.push_back(sq.k0), nk.push_back(sq.nk);
    } else {
      k0 = {0};
      nk = {d.Nk};
    }
    n = d.B * d.Hk * G;
  }
  // The segment of sequence s of (batch, kv head) bhk.
  static int64_t index(const Ragged& rg, int64_t bhk, int64_t s) {
    return rg.varlen ? bhk * static_cast<int64_t>(rg.seqs.size()) + s : bhk;
  }
  int64_t bhk(int64_t kv) const { return kv / G; }
  int64_t first(int64_t kv) const { return k0[kv % G]; }
  int64_t len(int64_t kv) const { return nk[kv % G]; }
};

// The keys of one segment whose v holds a non-finite value, increasing (segment-relative); engines
// that pack v zero them in the pack and report them per tile.
struct BadKeys {
  std::vector<std::vector<int32_t>> keys;  // per kv segment
  // bad <- the keys of [j0, j0 + cols) in keys[bhk], tile-relative.
  void tile(int64_t bhk, int64_t j0, int64_t cols, std::vector<int32_t>& bad) const {
    bad.clear();
    const auto& ks = keys[bhk];
    for (auto it = std::lower_bound(ks.begin(), ks.end(), j0); it != ks.end() && *it < j0 + cols; ++it)
      bad.push_back(static_cast<int32_t>(*it - j0));
  }
  bool is_bad(int64_t bhk, int64_t j) const { return std::binary_search(keys[bhk].begin(), keys[bhk].end(), j); }
};

template <typename T>
struct FloatEngine {
  static constexpr bool kRoundsP = Tiles<T>::kBf16;  // pv rounds P to bf16 (see fwd_driver)
  const T *q, *k, *v;
  Dims d;
  KvSegs seg;
  FloatEngine(const T* q, const T* k, const T* v, const Dims& d, const Ragged& rg)
      : q(q), k(k), v(v), d(d), seg(d, rg) {}
  const T* krow(int64_t kv, int64_t j) const { return k + d.k_off_bh(seg.bhk(kv)) + (seg.first(kv) + j) * d.D; }
  const T* vrow(int64_t kv, int64_t j) const { return v + d.v_off_bh(seg.bhk(kv)) + (seg.first(kv) + j) * d.Dv; }
  struct Local {
    Tiles<T> tl;
    std::vector<int32_t> bad;
    explicit Local(const Dims& d) : tl(d.D, d.Dv, kRowsPerTask, kKeysPerTile) {}
  };
  int64_t acc_ld() const { return d.Dv; }
  void begin(Local& L, int64_t bh, int64_t i0, int64_t rows) const { L.tl.set_q(q + (bh * d.Nq + i0) * d.D, rows, d.D); }
  void bad_values(Local& L, int64_t kv, int64_t j0, int64_t cols, bool partial, std::vector<int32_t>& bad) const {
    L.bad.clear();
    if (partial) nonfinite_rows(vrow(kv, j0), cols, d.Dv, d.Dv, L.bad);
    bad = L.bad;
  }
  void scores(Local& L, int64_t kv, int64_t, int64_t, int64_t rows, int64_t j0, int64_t cols, float alpha, float* S,
              int64_t ldS) const {
    L.tl.qk(krow(kv, j0), rows, cols, d.D, alpha, S, ldS);
  }
  void pv(Local& L, const float* P, int64_t ldP, int64_t kv, int64_t rows, int64_t j0, int64_t cols, bool,
          float* acc, int64_t ldA) const {
    L.tl.pv(P, ldP, vrow(kv, j0), rows, cols, d.Dv, acc, ldA, L.bad);
  }
};

#ifdef FASTATTN_AVX512_BF16
struct Bf16Engine {
  static constexpr bool kRoundsP = true;
  using T = c10::BFloat16;
  const T* q;
  Dims d;
  int64_t Du;  // q row length in 32-bit units (bf16 pairs)
  KvSegs seg;
  std::vector<Packed16<T>> kp, vp;  // per kv segment: K (keys x D), V^T (channels x keys, bad keys zeroed)
  BadKeys vbad;
  Bf16Engine(const T* q, const T* k, const T* v, const Dims& d, const Ragged& rg)
      : q(q), d(d), Du((d.D + 1) / 2), seg(d, rg), kp(seg.n), vp(seg.n) {
    vbad.keys.resize(seg.n);
    at::parallel_for(0, seg.n, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t kv = s0; kv < s1; ++kv) {
        const int64_t nk = seg.len(kv);
        const T* kh = k + d.k_off_bh(seg.bhk(kv)) + seg.first(kv) * d.D;
        const T* vh = v + d.v_off_bh(seg.bhk(kv)) + seg.first(kv) * d.Dv;
        nonfinite_rows(vh, nk, d.Dv, d.Dv, vbad.keys[kv]);
        kp[kv].pack(nk, d.D, [&](int64_t j, int64_t c) { return kh[j * d.D + c]; });
        if (vbad.keys[kv].empty())
          vp[kv].pack(d.Dv, nk, [&](int64_t c, int64_t j) { return vh[j * d.Dv + c]; });
        else
          vp[kv].pack(d.Dv, nk, [&](int64_t c, int64_t j) { return vbad.is_bad(kv, j) ? T(0.0f) : vh[j * d.Dv + c]; });
      }
    });
  }
  struct Local {
    std::vector<uint32_t> qa, pa;  // q rows and P rows as bf16 pairs
    explicit Local(const Dims& d) : qa(kRowsPerTask * ((d.D + 1) / 2)), pa(kRowsPerTask * kKeysPerTile / 2) {}
  };
  int64_t acc_ld() const { return round_up(d.Dv, 16); }
  void bad_values(Local&, int64_t kv, int64_t j0, int64_t cols, bool, std::vector<int32_t>& bad) const {
    vbad.tile(kv, j0, cols, bad);
  }
  void begin(Local& L, int64_t bh, int64_t i0, int64_t rows) const {
    std::fill(L.qa.begin(), L.qa.end(), 0u);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(L.qa.data() + r * Du, q + (bh * d.Nq + i0 + r) * d.D, d.D * sizeof(T));
  }
  void scores(Local& L, int64_t kv, int64_t, int64_t, int64_t rows, int64_t j0, int64_t cols, float alpha, float* S,
              int64_t ldS) const {
    const Packed16<T>& K = kp[kv];
    const __m512 a = _mm512_set1_ps(alpha);
    tile_product<Bf16Dot>(rows, L.qa.data(), Du, K.at(j0 / 16, 0), K.block_stride(), (cols + 15) / 16, K.n_groups,
                          [&](int64_t r, int64_t blk, __m512 x) { _mm512_storeu_ps(S + r * ldS + 16 * blk, _mm512_mul_ps(x, a)); });
  }
  void pv(Local& L, const float* P, int64_t ldP, int64_t kv, int64_t rows, int64_t j0, int64_t cols, bool,
          float* acc, int64_t ldA) const {
    const int64_t cu = (cols + 1) / 2;  // key pairs
    auto* pb = reinterpret_cast<T*>(L.pa.data());
    for (int64_t r = 0; r < rows; ++r) {
      to_bf16(P + r * ldP, cols, pb + r * 2 * cu);
      if (cols % 2) pb[r * 2 * cu + cols] = T(0.0f);
    }
    const Packed16<T>& V = vp[kv];
    tile_product<Bf16Dot>(rows, L.pa.data(), cu, V.at(0, j0 / 2), V.block_stride(), V.n_blocks, cu,
                          [&](int64_t r, int64_t blk, __m512 x) {
                            float* o = acc + r * ldA + 16 * blk;
                            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), x));
                          });
  }
};
#endif

template <typename T>
struct Int8Engine {
  static constexpr bool kRoundsP = false;  // p meets v as a (hi, lo) bf16 pair, near fp32
  Dims d;
  KvSegs seg;
  int64_t Du;      // q row length in 32-bit units (4 int8)
  std::vector<int8_t> q8, k8;
  // Scales: ks per key (B, Hk, Nkp + 16: padded so a block of 16 from any key stays inside), vs per
  // channel and kv segment; vf: dequantized v without quant (B, Hk, Nk, Dv)
  std::vector<float> qs, ks, vs, vf;
  std::vector<int32_t> ksum;          // sum_d k8[j][d], laid out as ks
  std::vector<int8_t> v8;             // v levels (B, Hk, Nk, Dv); 0 for the keys in vbad
  BadKeys vbad;
#ifdef FASTATTN_VNNI
  std::vector<Packed16<int8_t>> kp, vp;  // per kv segment
#endif
#ifdef FASTATTN_AVX512_BF16
  std::vector<Packed16<c10::BFloat16>> vpb;  // without quant: each key's v levels twice, for (hi, lo) pairs of p
#endif
  int64_t kst() const { return round_up(d.Nk, 16) + 16; }  // ks / ksum stride per (batch, kv head)
  // The v scale of each channel is the max over the segment's keys, or its allowed keys with a
  // key_padding_mask (CONTRACTS §1: garbage in padding cannot change real rows).
  Int8Engine(const T* q, const T* k, const T* v, const Dims& d, const Ragged& rg, bool levels)
      : d(d), seg(d, rg), Du((d.D + 3) / 4), q8(d.B * d.Hq * d.Nq * d.D), k8(d.B * d.Hk * d.Nk * d.D),
        qs(d.B * d.Hq * d.Nq), ks(d.B * d.Hk * kst(), 0.0f), vs(seg.n * round_up(d.Dv, 16), 0.0f),
        ksum(d.B * d.Hk * kst(), 0), v8(d.B * d.Hk * d.Nk * d.Dv) {
    const int64_t BHk = d.B * d.Hk, Dvp = round_up(d.Dv, 16);
    vbad.keys.resize(seg.n);
#ifdef FASTATTN_AVX512_BF16
    if (!levels) vpb.resize(seg.n);
#else
    if (!levels) vf.resize(BHk * d.Nk * d.Dv);
#endif
#ifdef FASTATTN_VNNI
    kp.resize(seg.n);
    if (levels) vp.resize(seg.n);
#endif
    at::parallel_for(0, d.B * d.Hq, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh)
        quantize_rows(q + bh * d.Nq * d.D, d.Nq, d.D, q8.data() + bh * d.Nq * d.D, qs.data() + bh * d.Nq);
    });
    at::parallel_for(0, BHk, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bhk = b0; bhk < b1; ++bhk) {
        int8_t* kq = k8.data() + bhk * d.Nk * d.D;
        quantize_rows(k + d.k_off_bh(bhk), d.Nk, d.D, kq, ks.data() + bhk * kst());
        for (int64_t j = 0; j < d.Nk; ++j) {
          int32_t s = 0;
          for (int64_t c = 0; c < d.D; ++c) s += kq[j * d.D + c];
          ksum[bhk * kst() + j] = s;
        }
      }
    });
    at::parallel_for(0, seg.n, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t kv = s0; kv < s1; ++kv) {
        const int64_t bhk = seg.bhk(kv), k0 = seg.first(kv), nk = seg.len(kv);
        const int8_t* kq = k8.data() + (bhk * d.Nk + k0) * d.D;
        int8_t* vq = v8.data() + (bhk * d.Nk + k0) * d.Dv;
        float* vsc = vs.data() + kv * Dvp;
        const bool* allowed = rg.kpm ? rg.kpm + (bhk / d.Hk) * d.Nk + k0 : nullptr;
        quantize_cols(v + d.v_off_bh(bhk) + k0 * d.Dv, nk, d.Dv, vq, vsc, vbad.keys[kv], allowed);
#ifdef FASTATTN_AVX512_BF16
        if (!levels)  // levels are integers in [-127, 127]: exact in bf16
          vpb[kv].pack(d.Dv, 2 * nk,
                       [&](int64_t c, int64_t r) { return c10::BFloat16(static_cast<float>(vq[(r / 2) * d.Dv + c])); });
#else
        if (!levels)
          for (int64_t j = 0; j < nk; ++j)
            for (int64_t c = 0; c < d.Dv; ++c) vf[(bhk * d.Nk + k0 + j) * d.Dv + c] = vq[j * d.Dv + c] * vsc[c];
#endif
#ifdef FASTATTN_VNNI
        kp[kv].pack(nk, d.D, [&](int64_t j, int64_t c) { return kq[j * d.D + c]; });
        if (levels) vp[kv].pack(d.Dv, nk, [&](int64_t c, int64_t j) { return vq[j * d.Dv + c]; });
#endif
      }
    });
  }
  struct Local {
    std::vector<uint32_t> qa, la, pa;  // q levels + 128 (u8), weight levels (u8), (hi, lo) bf16 pairs of p
    explicit Local(const Dims& d)
        : qa(kRowsPerTask * ((d.D + 3) / 4)), la(kRowsPerTask * kKeysPerTile / 4), pa(kRowsPerTask * kKeysPerTile) {}
  };
  int64_t acc_ld() const { return round_up(d.Dv, 16); }
  void bad_values(Local&, int64_t kv, int64_t j0, int64_t cols, bool, std::vector<int32_t>& bad) const {
    vbad.tile(kv, j0, cols, bad);
  }
  void begin(Local& L, int64_t bh, int64_t i0, int64_t rows) const {
    auto* qu = reinterpret_cast<uint8_t*>(L.qa.data());
    std::fill(qu, qu + L.qa.size() * 4, uint8_t{128});  // pad: (128 - 128) * 0
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < d.D; ++c)
        qu[r * Du * 4 + c] = static_cast<uint8_t>(q8[(bh * d.Nq + i0 + r) * d.D + c] + 128);
  }
  // S = alpha * qs_i * ks_j * (sum_d (q + 128) k - 128 sum_d k)
  void scores(Local& L, int64_t kv, int64_t bh, int64_t i0, int64_t rows, int64_t j0, int64_t cols, float alpha,
              float* S, int64_t ldS) const {
    const int64_t bhk = seg.bhk(kv), jg = seg.first(kv) + j0;  // jg: the key index along Nk
    const float* ksc = ks.data() + bhk * kst() + jg;
    const int32_t* kss = ksum.data() + bhk * kst() + jg;
    const float* qsc = qs.data() + bh * d.Nq + i0;
#ifdef FASTATTN_VNNI
    const Packed16<int8_t>& K = kp[kv];
    tile_product<Int8Dot>(rows, L.qa.data(), Du, K.at(j0 / 16, 0), K.block_stride(), (cols + 15) / 16, K.n_groups,
                          [&](int64_t r, int64_t blk, __m512i x) {
                            const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(kss + 16 * blk), 7);
                            const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(x, corr));
                            const __m512 sc = _mm512_mul_ps(_mm512_loadu_ps(ksc + 16 * blk), _mm512_set1_ps(alpha * qsc[r]));
                            _mm512_storeu_ps(S + r * ldS + 16 * blk, _mm512_mul_ps(f, sc));
                          });
#else
    const int8_t* kq = k8.data() + (bhk * d.Nk + jg) * d.D;
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* qq = q8.data() + (bh * d.Nq + i0 + r) * d.D;
      for (int64_t c = 0; c < cols; ++c) {
        int32_t s = 0;
        for (int64_t e = 0; e < d.D; ++e) s += static_cast<int32_t>(qq[e]) * kq[c * d.D + e];
        S[r * ldS + c] = static_cast<float>(s) * (ksc[c] * (alpha * qsc[r]));  // rounded as above
      }
    }
#endif
  }
  void pv(Local& L, const float* P, int64_t ldP, int64_t kv, int64_t rows, int64_t j0, int64_t cols, bool levels,
          float* acc, int64_t ldA) const {
    const float* vsc = vs.data() + kv * round_up(d.Dv, 16);
    const int64_t jg = seg.first(kv) + j0, bhk = seg.bhk(kv);  // jg: the key index along Nk
    if (!levels) {
#ifdef FASTATTN_AVX512_BF16
      // Unquantized p against integer v levels on vdpbf16ps: p = hi + lo with hi = bf16(p) and
      // lo = bf16(p - hi) leaves |p - hi - lo| <= 2^-16 |p|, near fp32 (the v levels are exact in
      // bf16); one (hi, lo) unit per key meets that key's level twice in the packed V.
      uint32_t* pa = L.pa.data();
      for (int64_t r = 0; r < rows; ++r) {
        const float* src = P + r * ldP;
        uint32_t* dst = pa + r * kKeysPerTile;
        int64_t c = 0;
        for (; c + 16 <= cols; c += 16) {
          const __m512 p = _mm512_loadu_ps(src + c);
          const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(p));
          const __m512 rest = _mm512_sub_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(hi, 16)));
          const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(rest));
          _mm512_storeu_si512(dst + c, _mm512_or_si512(hi, _mm512_slli_epi32(lo, 16)));
        }
        for (; c < cols; ++c) {
          const c10::BFloat16 hi(src[c]), lo(src[c] - static_cast<float>(hi));
          dst[c] = static_cast<uint32_t>(hi.x) | (static_cast<uint32_t>(lo.x) << 16);
        }
      }
      const Packed16<c10::BFloat16>& V = vpb[kv];
      tile_product<Bf16Dot>(rows, pa, kKeysPerTile, V.at(0, j0), V.block_stride(), V.n_blocks, cols,
                            [&](int64_t r, int64_t blk, __m512 x) {
                              float* o = acc + r * ldA + 16 * blk;
                              _mm512_storeu_ps(o, _mm512_fmadd_ps(x, _mm512_loadu_ps(vsc + 16 * blk), _mm512_loadu_ps(o)));
                            });
#else
      gemm_nn(rows, d.Dv, cols, 1.0f, P, ldP, vf.data() + (bhk * d.Nk + jg) * d.Dv, d.Dv, 1.0f, acc, ldA);
#endif
      return;
    }
#ifdef FASTATTN_VNNI
    const int64_t cu = (cols + 3) / 4;  // key quads
    auto* lv = reinterpret_cast<uint8_t*>(L.la.data());
    for (int64_t r = 0; r < rows; ++r) {
      uint8_t* dst = lv + r * 4 * cu;
      const float* src = P + r * ldP;
      int64_t c = 0;
      for (; c + 16 <= cols; c += 16)  // levels are integers in [0, 255]: exact conversion
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c), _mm512_cvtusepi32_epi8(_mm512_cvttps_epi32(_mm512_loadu_ps(src + c))));
      for (; c < cols; ++c) dst[c] = static_cast<uint8_t>(src[c]);
      for (; c < 4 * cu; ++c) dst[c] = 0;
    }
    const Packed16<int8_t>& V = vp[kv];
    tile_product<Int8Dot>(rows, L.la.data(), cu, V.at(0, j0 / 4), V.block_stride(), V.n_blocks, cu,
                          [&](int64_t r, int64_t blk, __m512i x) {
                            float* o = acc + r * ldA + 16 * blk;
                            _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(x), _mm512_loadu_ps(vsc + 16 * blk),
                                                                _mm512_loadu_ps(o)));
                          });
#else
    const int8_t* vq = v8.data() + (bhk * d.Nk + jg) * d.Dv;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < d.Dv; ++c) {
        int32_t s = 0;
        for (int64_t j = 0; j < cols; ++j) s += static_cast<int32_t>(P[r * ldP + j]) * vq[j * d.Dv + c];
        acc[r * ldA + c] += static_cast<float>(s) * vsc[c];
      }
#endif
  }
};

// int8_qkv in the backward, which receives q and k int8-rounded and dequantized (level * scale, fp32): its
// scores must be the forward's. An fp32 GEMM of the dequantized values leaves ~1e-7 |q||k| of rounding where
// the integer dot is 0 (common with 255 levels); where that lands > 0, relu lets through a key the forward
// left out. quantize_rows gives the levels back (x / scale lies within a few ulp of an integer), and their
// fp32 GEMM is exact (|dot| <= 127^2 * 256 < 2^24).
struct Int8Rows {
  std::vector<float> lev, scale;  // rows x n levels as floats; per row scale, 0 for a row with a non-finite value
  template <typename T>
  Int8Rows(const T* x, int64_t rows, int64_t n) : lev(rows * n), scale(rows) {
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      std::vector<int8_t> l8((r1 - r0) * n);
      quantize_rows(x + r0 * n, r1 - r0, n, l8.data(), scale.data() + r0);
      std::copy(l8.begin(), l8.end(), lev.begin() + r0 * n);
    });
    // quantize_rows gives such a row the scale NaN; the forward made every row that reads it NaN, and those
    // get their gradients elsewhere: 0 keeps the NaN out of the others (as Sanitizer's zeroed rows do).
    for (float& s : scale) s = std::isfinite(s) ? s : 0.0f;
  }
};

// S[rows x cols] = alpha * qs_i * ks_j * (level dot), for rows i0.. of q and j0.. of k, rounded as
// Int8Engine::scores rounds it.
inline void int8_scores(const Int8Rows& q, int64_t i0, const Int8Rows& k, int64_t j0, int64_t rows, int64_t cols,
                        int64_t D, float alpha, float* S, int64_t ldS) {
  gemm_nt(rows, cols, D, 1.0f, q.lev.data() + i0 * D, D, k.lev.data() + j0 * D, D, 0.0f, S, ldS);
  for (int64_t r = 0; r < rows; ++r) {
    const float aq = alpha * q.scale[i0 + r];
    const float* ks = k.scale.data() + j0;
    float* s = S + r * ldS;
    for (int64_t c = 0; c < cols; ++c) s[c] *= ks[c] * aq;
  }
}

}  // namespace fastattn::cpu
