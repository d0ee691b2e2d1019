// Fused, tiled CPU ByteScale ReLU attention (docs/semantics.md §2), forward and backward.
//
// Forward: one task per (batch, query head, query tile); the operand engines of relu_engines.h
// compute score tiles and P V (fp32/fp16 on MKL tiles, bf16 on AVX512-BF16, int8_qkv on VNNI).
// Without quantization one pass suffices: the denominator is a per-row constant, so
// acc = sum_j a_ij v_j is divided at the end. With quantization p must be final before rounding, so
// pass 1 computes the row statistic (max/sum/count) and pass 2 rounds p = a / den and multiplies by
// V: results never depend on tile sizes.
// Backward (gradient of the unquantized op): a row pass recomputes the scores and computes
// dden_i = -(sum_j a_ij dP_ij)/den_i^2 and den_i from them (see dden_kernel), then one task per (batch, kv
// head, key tile) owns dK, dV and walks the query tiles of its GQA group; dQ and dgamma go to
// per-thread accumulators.
#include "cpu/relu_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <optional>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common/relu.h"
#include "cpu/attention_common.h"
#include "cpu/relu_engines.h"
#include "cpu/varlen.h"

namespace fastattn::cpu {
namespace {

constexpr int64_t kBM = kRowsPerTask;  // query rows per task / inner step
constexpr int64_t kBN = kKeysPerTile;   // keys per tile (forward)
constexpr int64_t kCacheBytes = int64_t{4} << 20;  // per-thread score cache for the quantized pass 2
constexpr int64_t kBNB = 128;  // keys per task (backward)

struct Relu {
  Dims d;
  Ragged rg;
  bool causal;
  float scale;
  int norm, bits;
  const float *gamma, *sink, *slopes, *tau;  // slopes / tau may be null
};

// In place: G (= scale * q.k, times gamma when `gamma_folded`) -> s = gamma G - slope |i'-j|, and
// disallowed keys (causal, padding, below tau) -> -inf. Rows are local queries i0.. of sequence sq
// (their first row in (B, Hq, Nq) order is row0), keys j0..j0+cols of it. poison[r] is set where an
// allowed score is not finite (see attention_common.h).
inline void finish_scores(float* S, int64_t ldS, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t row0,
                          int64_t h, const Seq& sq, const bool* keep, const Relu& P, bool gamma_folded,
                          uint8_t* poison) {
  const float gamma = gamma_folded ? 1.0f : P.gamma[h];
  const float slope = P.slopes ? P.slopes[h] : 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * ldS;
    const int64_t i = i0 + r, i_abs = i + sq.offset();
    if (P.slopes || gamma != 1.0f)
      for (int64_t c = 0; c < cols; ++c) s[c] = relu_score(s[c], gamma, slope, i_abs, j0 + c);
    poison[r] |= !mask_row(s, j0, cols, sq.limit(P.causal, i), P.tau ? P.tau + row0 + r : nullptr, keep);
  }
}

// Forward and dden tasks: (sequence, query head, query tile); backward tasks: (sequence, kv head, key
// tile). Costs for the balanced schedule as in softmax_attention.cpp.
struct Task {
  int32_t s, h;
  int64_t i0;  // first local query (forward) or key (backward)
};

std::vector<Task> query_tasks(const Relu& P, std::vector<int64_t>& cost) {
  std::vector<Task> tasks;
  for (int32_t s = 0; s < static_cast<int32_t>(P.rg.seqs.size()); ++s) {
    const Seq& sq = P.rg.seqs[s];
    for (int64_t i0 = 0; i0 < sq.nq; i0 += kBM)
      for (int32_t h = 0; h < P.d.Hq; ++h) {
        tasks.push_back({s, h, i0});
        cost.push_back(std::min(kBM, sq.nq - i0) * (sq.limit(P.causal, std::min(sq.nq, i0 + kBM) - 1) + 16));
      }
  }
  return tasks;
}

inline void relu_row(float* s, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) s[c] = s[c] > 0.0f ? s[c] : 0.0f;
}

// Row statistic update over one score row (masked = -inf): max (with its first index), sum, or
// count. With `relu`, also s <- relu(s) in the same sweep (the unquantized pass needs a = relu(s)).
// max(relu(s)) = relu(max(s)), and a new max is > stat >= 0, so it survives the relu.
struct RowStat {
  float stat = 0.0f;
  int32_t arg = -1;
  void update(float* s, int64_t cols, int64_t j0, int norm, bool relu) {
    if (norm == kNormLen) {
      int64_t n = 0;
      for (int64_t c = 0; c < cols; ++c) n += s[c] != -kInf;
      stat += static_cast<float>(n);
      if (relu) relu_row(s, cols);
      return;
    }
#ifdef __AVX512F__
    // Per lane: running max and the index where it was first reached (strict >), or the sum.
    const __m512 zero = _mm512_setzero_ps();
    __m512 m = relu ? zero : _mm512_set1_ps(-kInf), sum = zero;
    __m512i idx = _mm512_set1_epi32(-1), cur = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    for (int64_t c = 0; c < cols; c += 16, cur = _mm512_add_epi32(cur, step)) {
      const __mmask16 in = cols - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (cols - c)) - 1);
      __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), in, s + c);
      const __m512 a = _mm512_max_ps(x, zero);
      if (relu) {
        _mm512_mask_storeu_ps(s + c, in, a);
        x = a;
      }
      if (norm == kNormMax) {
        const __mmask16 gt = _mm512_cmp_ps_mask(x, m, _CMP_GT_OQ);
        m = _mm512_mask_mov_ps(m, gt, x);
        idx = _mm512_mask_mov_epi32(idx, gt, cur);
      } else {
        sum = _mm512_add_ps(sum, a);
      }
    }
    if (norm == kNormMax) {
      const float mx = _mm512_reduce_max_ps(m);
      if (mx > stat) {
        stat = mx;
        arg = static_cast<int32_t>(j0 + _mm512_mask_reduce_min_epi32(_mm512_cmp_ps_mask(m, _mm512_set1_ps(mx), _CMP_EQ_OQ), idx));
      }
    } else {
      stat += _mm512_reduce_add_ps(sum);
    }
#else
    if (norm == kNormMax) {
      const float mx = row_max(s, cols);
      if (mx > stat) {
        stat = mx;
        for (int64_t c = 0; c < cols; ++c)
          if (s[c] == mx) { arg = static_cast<int32_t>(j0 + c); break; }
      }
    } else {
      for (int64_t c = 0; c < cols; ++c) stat += s[c] > 0.0f ? s[c] : 0.0f;
    }
    if (relu) relu_row(s, cols);
#endif
  }
};

// s[c] <- floor(relu(s[c]) / den * L + 0.5), the weight level (docs/semantics.md §2.5), or with bits = 0 the
// weight relu(s[c]) / den itself. a / den is a division, exactly as docs/semantics.md §2 writes it, so
// levels flip only at true ties.
inline void weight_levels(float* s, int64_t cols, float den, int bits) {
  int64_t c = 0;
  if (bits == 0) {
    for (; c < cols; ++c) s[c] = (s[c] > 0.0f ? s[c] : 0.0f) / den;
    return;
  }
#ifdef __AVX512F__  // weight_level (common/relu.h), 16 lanes at a time
  const float L = static_cast<float>((1 << bits) - 1);
  const __m512 vd = _mm512_set1_ps(den), vl = _mm512_set1_ps(L), half = _mm512_set1_ps(0.5f), zero = _mm512_setzero_ps();
  for (; c + 16 <= cols; c += 16) {
    const __m512 p = _mm512_div_ps(_mm512_max_ps(_mm512_loadu_ps(s + c), zero), vd);
    _mm512_storeu_ps(s + c, _mm512_roundscale_ps(_mm512_add_ps(_mm512_mul_ps(p, vl), half),
                                                  _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
  }
#endif
  for (; c < cols; ++c) s[c] = static_cast<float>(weight_level((s[c] > 0.0f ? s[c] : 0.0f) / den, bits));
}


// The forward passes over one engine (relu_engines.h). Pass 1 computes the finished scores of each
// tile and the row statistic; without quantization it also accumulates a V (den is a per-row
// constant, applied at the end). With quantization, pass 2 rounds p = a / den to levels and
// accumulates levels * V (scaled by 1 / L at the end); an engine that rounds P to bf16
// (Engine::kRoundsP) also takes pass 2, with p = a / den: p, not a, is what docs/semantics.md rounds, so
// a row carried by one key gets p = 1 exactly. The scores of pass 1 are kept for pass 2 in a
// per-thread row-block cache (kBM x Nk, not Nq x Nk) when that fits kCacheBytes, else recomputed.
template <typename T, class Engine>
void fwd_driver(const Engine& E, T* out, float* den_out, int32_t* arg_out, const Relu& P) {
  const Dims& d = P.d;
  const int64_t ldA = E.acc_ld();
  const float L = P.bits ? static_cast<float>((1 << P.bits) - 1) : 1.0f;
  const bool two_pass = P.bits != 0 || Engine::kRoundsP;
  std::vector<int64_t> cost;
  const std::vector<Task> tasks = query_tasks(P, cost);
  run_balanced(balance(cost, at::get_num_threads()), [&](int64_t, const std::vector<int64_t>& mine) {
    typename Engine::Local loc(d);
    std::vector<float> S(kBM * kBN), acc(kBM * ldA), den(kBM), cache;
    std::vector<RowStat> st(kBM);
    std::vector<uint8_t> poison(kBM);
    std::vector<int32_t> bad;
    for (const int64_t task : mine) {
      const Seq& sq = P.rg.seqs[tasks[task].s];
      const int64_t h = tasks[task].h, i0 = tasks[task].i0, b = sq.b, bh = b * d.Hq + h;
      const int64_t kv = KvSegs::index(P.rg, b * d.Hk + h / d.group(), tasks[task].s);
      const int64_t rows = std::min(kBM, sq.nq - i0), row0 = P.rg.row0(d, sq, h) + i0;
      E.begin(loc, bh, sq.q0 + i0, rows);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(st.begin(), st.end(), RowStat{});
      std::fill(poison.begin(), poison.end(), 0);
      const float alpha = P.gamma[h] * P.scale;
      const int64_t kend = sq.limit(P.causal, i0 + rows - 1), ldc = round_up(kend, 16);
      const bool cached = two_pass && rows * ldc * static_cast<int64_t>(sizeof(float)) <= kCacheBytes;
      if (cached && static_cast<int64_t>(cache.size()) < rows * ldc) cache.resize(rows * ldc);
      auto tile = [&](int64_t j0, int64_t cols, bool fresh) -> std::pair<float*, int64_t> {
        float* Sp = cached ? cache.data() + j0 : S.data();
        const int64_t ld = cached ? ldc : kBN;
        const bool* keep = P.rg.keep(b, sq.k0 + j0, cols);
        if (fresh) {
          E.scores(loc, kv, bh, sq.q0 + i0, rows, j0, cols, alpha, Sp, ld);
          finish_scores(Sp, ld, rows, cols, i0, j0, row0, h, sq, keep, P, true, poison.data());
        }
        // Keys with a non-finite v that pv leaves out (some row masks a key of this tile, or the
        // engine packed v): the rows that may still read them are poisoned.
        E.bad_values(loc, kv, j0, cols, P.tau || keep || sq.limit(P.causal, i0) < j0 + cols, bad);
        if (fresh && !bad.empty()) poison_rows(Sp, ld, rows, bad, poison.data());
        return {Sp, ld};
      };
      for (int64_t j0 = 0; j0 < kend; j0 += kBN) {
        const int64_t cols = std::min(kBN, kend - j0);
        if (P.rg.allowed(b, sq.k0 + j0, cols) == 0) continue;  // padding only
        auto [Sp, ld] = tile(j0, cols, true);
        for (int64_t r = 0; r < rows; ++r) st[r].update(Sp + r * ld, cols, j0, P.norm, !two_pass);
        if (!two_pass) E.pv(loc, Sp, ld, kv, rows, j0, cols, false, acc.data(), ldA);
      }
      for (int64_t r = 0; r < rows; ++r) den[r] = P.sink[h] + st[r].stat;
      if (two_pass) {
        for (int64_t j0 = 0; j0 < kend; j0 += kBN) {
          const int64_t cols = std::min(kBN, kend - j0);
          if (P.rg.allowed(b, sq.k0 + j0, cols) == 0) continue;
          auto [Sp, ld] = tile(j0, cols, !cached);
          for (int64_t r = 0; r < rows; ++r) {
            if (poison[r]) std::fill(Sp + r * ld, Sp + r * ld + cols, 0.0f);  // no level from a NaN
            weight_levels(Sp + r * ld, cols, den[r] > 0.0f ? den[r] : kInf, P.bits);
          }
          E.pv(loc, Sp, ld, kv, rows, j0, cols, P.bits != 0, acc.data(), ldA);
        }
      }
      T* ot = out + row0 * d.Dv;
      for (int64_t r = 0; r < rows; ++r) {
        float* a = acc.data() + r * ldA;
        if (poison[r] || !all_finite(a, d.Dv)) {  // a non-finite q, allowed k or supporting v
          fill_nan(ot + r * d.Dv, d.Dv);
          den_out[row0 + r] = kNaN;
          arg_out[row0 + r] = -1;
          continue;
        }
        scale_row(a, d.Dv, two_pass ? 1.0f / L : (den[r] > 0.0f ? 1.0f / den[r] : 0.0f));
        store_row(a, d.Dv, ot + r * d.Dv);
        den_out[row0 + r] = den[r];
        arg_out[row0 + r] = P.norm == kNormMax ? st[r].arg : -1;  // a key index local to the sequence
      }
    }
  });
}

template <typename T>
void fwd_kernel(const T* q, const T* k, const T* v, T* out, float* den_out, int32_t* arg_out, const Relu& P,
                bool int8_qkv) {
  if (int8_qkv) {
    fwd_driver<T>(Int8Engine<T>(q, k, v, P.d, P.rg, P.bits != 0), out, den_out, arg_out, P);
    return;
  }
#ifdef FASTATTN_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    fwd_driver<T>(Bf16Engine(q, k, v, P.d, P.rg), out, den_out, arg_out, P);
    return;
  }
#endif
  fwd_driver<T>(FloatEngine<T>(q, k, v, P.d, P.rg), out, den_out, arg_out, P);
}

// dden_i = -(sum_j a_ij dP_ij) / den_i^2 with dP = dO V^T (0 where den = 0), and den_b_i: den_i
// recomputed from the same scores a_ij (the row statistic; den itself for norm "len"), which the
// backward then divides by. Both come from scores recomputed here, never from the saved out and den:
// those were rounded (out to q's dtype, or quantized) or computed by another engine in another
// summation order, and where one key carries a row (p = a / den near 1) the exact gradient cancels to
// ~0 while such a rounding difference survives, amplified by 1 / den.
// Also delta_i = sum_j p_ij dP_ij = -dden_i den_i, which the backward subtracts from dP before it scales by
// 1 / den (see row_grad). With int8_qkv (q8, k8 given) the scores are the forward's, from the levels (Int8Rows).
template <typename T>
void dden_kernel(const T* dout, const T* q, const T* k, const T* v, const float* den, float* den_b, float* dden,
                 float* delta, const Relu& P, const Int8Rows* q8, const Int8Rows* k8) {
  const Dims& d = P.d;
  std::vector<int64_t> cost;
  const std::vector<Task> tasks = query_tasks(P, cost);
  run_balanced(balance(cost, at::get_num_threads()), [&](int64_t, const std::vector<int64_t>& mine) {
    std::vector<float> S(kBM * kBN), dP(kBM * kBN), obuf(kBM * d.Dv), vbuf(kBN * d.Dv);
    std::vector<RowStat> st(kBM);
    std::vector<double> dot(kBM);
    std::vector<uint8_t> poison(kBM);  // rows poisoned in the forward have den = NaN: unused here
    Tiles<T> tl(d.D, d.Dv, kBM, kBN);
    for (const int64_t task : mine) {
      const Seq& sq = P.rg.seqs[tasks[task].s];
      const int64_t h = tasks[task].h, i0 = tasks[task].i0, b = sq.b, hk = h / d.group();
      const int64_t rows = std::min(kBM, sq.nq - i0), row0 = P.rg.row0(d, sq, h) + i0;
      std::fill(st.begin(), st.end(), RowStat{});
      std::fill(dot.begin(), dot.end(), 0.0);
      tl.set_q(q + row0 * d.D, rows, d.D);
      const float* dO = tile_ptr(dout + row0 * d.Dv, rows, d.Dv, obuf.data());
      const int64_t kend = sq.limit(P.causal, i0 + rows - 1), krow = (b * d.Hk + hk) * d.Nk + sq.k0;
      for (int64_t j0 = 0; j0 < kend; j0 += kBN) {
        const int64_t cols = std::min(kBN, kend - j0);
        if (P.rg.allowed(b, sq.k0 + j0, cols) == 0) continue;
        if (q8)
          int8_scores(*q8, row0, *k8, krow + j0, rows, cols, d.D, P.gamma[h] * P.scale, S.data(), kBN);
        else
          tl.qk(k + (krow + j0) * d.D, rows, cols, d.D, P.gamma[h] * P.scale, S.data(), kBN);
        finish_scores(S.data(), kBN, rows, cols, i0, j0, row0, h, sq, P.rg.keep(b, sq.k0 + j0, cols), P, true,
                      poison.data());
        gemm_nt(rows, cols, d.Dv, 1.0f, dO, d.Dv, tile_ptr(v + (krow + j0) * d.Dv, cols, d.Dv, vbuf.data()), d.Dv,
                0.0f, dP.data(), kBN);
        for (int64_t r = 0; r < rows; ++r) {
          float* a = S.data() + r * kBN;
          const float* dp = dP.data() + r * kBN;
          st[r].update(a, cols, j0, P.norm, /*relu=*/true);
          double part[kLanes] = {};
          for (int64_t c = 0; c < cols; ++c)  // keys with a = 0 may hold a non-finite v the row does not read
            if (a[c] > 0.0f) part[c % kLanes] += static_cast<double>(a[c]) * dp[c];
          for (int64_t l = 0; l < kLanes; ++l) dot[r] += part[l];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = row0 + r;
        const float dn = den[row], db = P.norm == kNormLen || std::isnan(dn) ? dn : P.sink[h] + st[r].stat;
        den_b[row] = db;
        dden[row] = std::isnan(db) ? kNaN : (db > 0.0f ? static_cast<float>(-dot[r] / (static_cast<double>(db) * db)) : 0.0f);
        delta[row] = std::isnan(db) ? kNaN : (db > 0.0f ? static_cast<float>(dot[r] / db) : 0.0f);
      }
    }
  });
}

// One backward score row, in place: ds = (dp - dl) / den where s > 0 (allowed and positive; masked
// are -inf), else 0, written over dp; p = s / den over s. dl is delta (norm "sum": every a_ij enters den_i)
// or 0: subtracting before the 1 / den scaling keeps the rows carried by one key exact (dp - delta = 0
// there), where dp / den + dden would leave the rounding of two products, amplified by 1 / den. With `dg`, part[] (double) gathers
// sum ds * w with w = |x| (x = base - c, the ALiBi distance) when `identity`, else w = g (the scaled
// q.k): the gamma gradient's terms (see bwd_kernel). Without ALiBi and with gamma != 0 they are
// multiplied by a zero slope, so the caller passes dg = false and the sweep skips them.
inline void row_grad(float* s, float* dp, const float* g, int64_t cols, float inv, float dl, float base,
                     bool identity, bool dg, double* part) {
  int64_t c = 0;
#ifdef __AVX512F__
  const __m512 vinv = _mm512_set1_ps(inv), vdl = _mm512_set1_ps(dl), zero = _mm512_setzero_ps();
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
  for (; c + 16 <= cols; c += 16) {
    const __m512 x = _mm512_loadu_ps(s + c);
    const __mmask16 pos = _mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ);
    const __m512 ds = _mm512_maskz_mov_ps(pos, _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(dp + c), vdl), vinv));
    _mm512_storeu_ps(s + c, _mm512_maskz_mul_ps(pos, x, vinv));
    _mm512_storeu_ps(dp + c, ds);
    if (dg) {
      const __m512 w = identity ? _mm512_abs_ps(_mm512_sub_ps(_mm512_set1_ps(base - static_cast<float>(c)), iota))
                                : _mm512_loadu_ps(g + c);
      acc0 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(ds)), _mm512_cvtps_pd(_mm512_castps512_ps256(w)), acc0);
      acc1 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ds), 1))),
                             _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w), 1))), acc1);
    }
  }
  if (dg) part[1] += _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
#endif
  for (; c < cols; ++c) {
    const bool pos = s[c] > 0.0f;
    const float ds = pos ? (dp[c] - dl) * inv : 0.0f;
    s[c] = pos ? s[c] * inv : 0.0f;  // p = a / den (unquantized)
    dp[c] = ds;
    if (dg) {
      const float x = base - static_cast<float>(c);
      part[c % kLanes] += static_cast<double>(ds) * (identity ? std::abs(x) : g[c]);
    }
  }
}

template <typename T>
void bwd_kernel(const T* dout, const T* q, const T* k, const T* v, const float* den, const int32_t* argmax,
                const float* delta, float* dq_acc, float* dgamma_acc, int64_t n_acc, T* dk, T* dv, const Relu& P,
                const Int8Rows* q8, const Int8Rows* k8) {
  const Dims& d = P.d;
  const int64_t q_numel = d.B * d.Hq * d.Nq * d.D;
  std::vector<Task> tasks;
  std::vector<int64_t> cost;
  for (int32_t s = 0; s < static_cast<int32_t>(P.rg.seqs.size()); ++s) {
    const Seq& sq = P.rg.seqs[s];
    for (int64_t j0 = 0; j0 < sq.nk; j0 += kBNB) {
      const int64_t cols = std::min(kBNB, sq.nk - j0);
      if (P.rg.allowed(sq.b, sq.k0 + j0, cols) == 0) continue;  // padding only: dk, dv stay 0
      const int64_t i_first = P.causal ? std::clamp<int64_t>(j0 - sq.offset(), 0, sq.nq) : 0;
      for (int32_t hk = 0; hk < d.Hk; ++hk) {
        tasks.push_back({s, hk, j0});
        cost.push_back(cols * ((sq.nq - i_first) * d.group() + 16));
      }
    }
  }
  run_balanced(balance(cost, n_acc), [&](int64_t l, const std::vector<int64_t>& mine) {
    float* dq_mine = dq_acc + l * q_numel;
    float* dg_mine = dgamma_acc + l * d.Hq;
    std::vector<float> G(kBM * kBNB), S(kBM * kBNB), dP(kBM * kBNB);
    std::vector<float> dK(kBNB * d.D), dV(kBNB * d.Dv);
    std::vector<float> qbuf(kBM * d.D), obuf(kBM * d.Dv), kbuf(kBNB * d.D), vbuf(kBNB * d.Dv);
    std::vector<uint8_t> poison(kBM);  // unused: the inputs are sanitized, NaN rows have den = NaN
    Sanitizer clean;
    for (const int64_t task : mine) {
      const Seq& sq = P.rg.seqs[tasks[task].s];
      const int64_t hk = tasks[task].h, b = sq.b, j0 = tasks[task].i0, cols = std::min(kBNB, sq.nk - j0);
      const int64_t krow = (b * d.Hk + hk) * d.Nk + sq.k0 + j0;
      const bool* keep = P.rg.keep(b, sq.k0 + j0, cols);
      const float* K = clean.k(tile_ptr(k + krow * d.D, cols, d.D, kbuf.data()), cols, d.D);
      const float* V = clean.v(tile_ptr(v + krow * d.Dv, cols, d.Dv, vbuf.data()), cols, d.Dv);
      std::fill(dK.begin(), dK.end(), 0.0f);
      std::fill(dV.begin(), dV.end(), 0.0f);
      const int64_t i_first = P.causal ? std::clamp<int64_t>(j0 - sq.offset(), 0, sq.nq) : 0;
      for (int64_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
        const int64_t row0 = P.rg.row0(d, sq, h);
        const float gs = P.gamma[h] * P.scale;
        // dgamma_h = sum_ij ds_ij G_ij cancels almost exactly (the op is homogeneous in gamma but
        // for sink and ALiBi), so for gamma != 0 use the identity sum_j ds_ij a_ij = -dden_i * sink
        // (max/sum) or -dden_i * den_i (len), added on the host, and sum here only the ALiBi part:
        // dgamma_h = (sum_i c_i + slope_h sum_ij ds_ij |x_ij|) / gamma_h.
        const bool identity = P.gamma[h] != 0.0f;
        const float slope = P.slopes ? P.slopes[h] : 0.0f;
        double dgamma = 0.0;
        for (int64_t i0 = (i_first / kBM) * kBM; i0 < sq.nq; i0 += kBM) {
          const int64_t rows = std::min(kBM, sq.nq - i0);
          const float* Q = clean.q(tile_ptr(q + (row0 + i0) * d.D, rows, d.D, qbuf.data()), rows, d.D);
          const float* dO = tile_ptr(dout + (row0 + i0) * d.Dv, rows, d.Dv, obuf.data());
          if (q8)  // G = scale q.k
            int8_scores(*q8, row0 + i0, *k8, krow, rows, cols, d.D, P.scale, G.data(), kBNB);
          else
            gemm_nt(rows, cols, d.D, P.scale, Q, d.D, K, d.D, 0.0f, G.data(), kBNB);
          std::copy(G.begin(), G.begin() + rows * kBNB, S.begin());
          finish_scores(S.data(), kBNB, rows, cols, i0, j0, row0 + i0, h, sq, keep, P, false, poison.data());
          gemm_nt(rows, cols, d.Dv, 1.0f, dO, d.Dv, V, d.Dv, 0.0f, dP.data(), kBNB);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t row = row0 + i0 + r;
            const float dn = den[row], inv = dn > 0.0f ? 1.0f / dn : 0.0f, dl = delta[row];
            const int32_t am = P.norm == kNormMax ? argmax[row] : -1;
            float* s = S.data() + r * kBNB;
            float* dp = dP.data() + r * kBNB;
            if (std::isnan(dn)) {  // a NaN row of the forward: NaN gradients through every allowed key
              const int64_t allowed = sq.limit(P.causal, i0 + r) - j0;
              nan_row_grad(s, dp, cols, allowed, keep);
              if (allowed > 0) dgamma = kNaN;
              continue;
            }
            const float* g = G.data() + r * kBNB;
            const bool has_am = am >= j0 && am < j0 + cols;
            const float dp_am = has_am ? dp[am - j0] : 0.0f;
            double part[kLanes] = {};  // dgamma sums many terms that cancel: accumulate in double
            row_grad(s, dp, g, cols, inv, P.norm == kNormSum ? dl : 0.0f, static_cast<float>(i0 + r + sq.offset() - j0),
                     identity, !identity || slope != 0.0f, part);
            if (has_am && S[r * kBNB + (am - j0)] > 0.0f) {  // max norm: den depends on a_am, ds_am = (dp_am - delta) / den
              const int64_t x = i0 + r + sq.offset() - am;
              const float ds = (dp_am - dl) * inv, change = ds - dp[am - j0];
              dp[am - j0] = ds;
              part[0] += static_cast<double>(change) * (identity ? static_cast<float>(x < 0 ? -x : x) : g[am - j0]);
            }
            for (int64_t l = 0; l < kLanes; ++l) dgamma += part[l];
          }
          gemm_tn(cols, d.Dv, rows, 1.0f, S.data(), kBNB, dO, d.Dv, 1.0f, dV.data(), d.Dv);
          gemm_tn(cols, d.D, rows, gs, dP.data(), kBNB, Q, d.D, 1.0f, dK.data(), d.D);
          gemm_nn(rows, d.D, cols, gs, dP.data(), kBNB, K, d.D, 1.0f, dq_mine + (row0 + i0) * d.D, d.D);
        }
        dg_mine[h] += static_cast<float>(identity ? dgamma * slope / P.gamma[h] : dgamma);
      }
      for (int64_t c = 0; c < cols; ++c) {
        store_row(dK.data() + c * d.D, d.D, dk + (krow + c) * d.D);
        store_row(dV.data() + c * d.Dv, d.Dv, dv + (krow + c) * d.Dv);
      }
    }
  });
}

Relu make_problem(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& gamma, const at::Tensor& sink, const at::Tensor& alibi, const at::Tensor& tau,
                  bool causal, double scale, int64_t norm, int64_t quant, const RaggedArgs& ra,
                  bool kv_views = false) {
  Dims d;
  if (kv_views) {
    d = check_kv_view_inputs(op, q, k, v);
  } else {
    check_attention_inputs(op, q, k, v);
    d = dims_of(q, k, v);
  }
  check_tau(op, tau, q);
  check_head_param(op, "gamma", gamma, q.size(1), false);
  check_head_param(op, "sink", sink, q.size(1), false);
  check_head_param(op, "alibi_slopes", alibi, q.size(1), true);
  TORCH_CHECK(norm >= 0 && norm <= 2, op, ": norm must be 0 (max), 1 (sum) or 2 (len), got ", norm);
  TORCH_CHECK(quant == 0 || quant == 7 || quant == 8, op, ": quant must be 0, 7 or 8 bits, got ", quant);
  TORCH_CHECK(quant == 0 || norm != kNormLen, op, ": quant needs norm max or sum");
  return Relu{d, make_ragged(op, d, ra), causal, static_cast<float>(scale), static_cast<int>(norm), static_cast<int>(quant),
              gamma.data_ptr<float>(), sink.data_ptr<float>(), alibi.numel() ? alibi.data_ptr<float>() : nullptr,
              tau.numel() ? tau.data_ptr<float>() : nullptr};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& gamma, const at::Tensor& sink,
    const at::Tensor& alibi_slopes, const at::Tensor& tau, bool causal, double scale, int64_t norm, int64_t quant,
    bool int8_qkv, const RaggedArgs& ra) {
  const Relu P = make_problem("relu_attention_fwd", q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm,
                              quant, ra, /*kv_views=*/true);  // the engines read k, v through Dims::k_off_bh
  const Dims& d = P.d;
  auto out = at::empty({d.B, d.Hq, d.Nq, d.Dv}, q.options());
  auto den = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));
  auto argmax = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, den, argmax};
  dispatch_float_types(q.scalar_type(), "relu_attention_fwd", [&](auto tag) {
    using T = decltype(tag);
    fwd_kernel<T>(q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out.data_ptr<T>(), den.data_ptr<float>(),
                  argmax.data_ptr<int32_t>(), P, int8_qkv);
  });
  return {out, den, argmax};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> relu_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& den, const at::Tensor& argmax, const at::Tensor& gamma, const at::Tensor& sink,
    const at::Tensor& alibi_slopes, const at::Tensor& tau, bool causal, double scale, int64_t norm, int64_t quant,
    bool int8_qkv, const RaggedArgs& ra) {
  const Relu P = make_problem("relu_attention_bwd", q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm,
                              quant, ra);
  const Dims& d = P.d;
  TORCH_CHECK(dout.sizes() == out.sizes() && out.size(3) == d.Dv && dout.scalar_type() == q.scalar_type() &&
                  out.scalar_type() == q.scalar_type() && dout.is_contiguous() && out.is_contiguous(),
              "relu_attention_bwd: dout and out must be contiguous (B, Hq, Nq, Dv) in q's dtype");
  TORCH_CHECK(den.scalar_type() == at::kFloat && den.is_contiguous() && den.numel() == d.B * d.Hq * d.Nq,
              "relu_attention_bwd: den must be a contiguous float32 (B, Hq, Nq) tensor");
  TORCH_CHECK(argmax.scalar_type() == at::kInt && argmax.is_contiguous() && argmax.numel() == d.B * d.Hq * d.Nq,
              "relu_attention_bwd: argmax must be a contiguous int32 (B, Hq, Nq) tensor");
  auto dk = at::zeros_like(k), dv = at::zeros_like(v);
  auto dgamma = at::zeros({d.Hq}, gamma.options()), dsink = at::zeros({d.Hq}, sink.options());
  if (q.numel() == 0 || k.numel() == 0) return {at::zeros_like(q), dk, dv, dgamma, dsink};
  auto dden = at::empty({d.B, d.Hq, d.Nq}, den.options()), den_b = at::empty_like(dden), delta = at::empty_like(dden);
  const int64_t n_acc = at::get_num_threads();  // per-thread accumulators of dq and dgamma
  auto dq_acc = at::zeros({n_acc, d.B, d.Hq, d.Nq, d.D}, q.options().dtype(at::kFloat));
  auto dg_acc = at::zeros({n_acc, d.Hq}, gamma.options());
  dispatch_float_types(q.scalar_type(), "relu_attention_bwd", [&](auto tag) {
    using T = decltype(tag);
    std::optional<Int8Rows> q8, k8;
    if (int8_qkv) {
      q8.emplace(q.data_ptr<T>(), d.B * d.Hq * d.Nq, d.D);
      k8.emplace(k.data_ptr<T>(), d.B * d.Hk * d.Nk, d.D);
    }
    const Int8Rows *q8p = q8 ? &*q8 : nullptr, *k8p = k8 ? &*k8 : nullptr;
    dden_kernel<T>(dout.data_ptr<T>(), q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), den.data_ptr<float>(),
                   den_b.data_ptr<float>(), dden.data_ptr<float>(), delta.data_ptr<float>(), P, q8p, k8p);
    bwd_kernel<T>(dout.data_ptr<T>(), q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), den_b.data_ptr<float>(),
                  argmax.data_ptr<int32_t>(), delta.data_ptr<float>(), dq_acc.data_ptr<float>(),
                  dg_acc.data_ptr<float>(), n_acc, dk.data_ptr<T>(), dv.data_ptr<T>(), P, q8p, k8p);
  });
  dsink = dden.sum({0, 2});
  // The row part of dgamma (see bwd_kernel): sum_i c_i / gamma_h where gamma_h != 0.
  const auto c = (norm == kNormLen ? dden.to(at::kDouble) * den_b.to(at::kDouble)
                                   : dden.to(at::kDouble) * sink.to(at::kDouble).view({1, -1, 1}));
  const auto row_part = at::where(gamma != 0, -c.sum({0, 2}) / gamma.to(at::kDouble), at::zeros_like(c.sum({0, 2})));
  // The same identity fixes dq_i's component along q_i: q_i . dq_i = gamma_h sum_j ds_ij G_ij = -c_i on heads
  // without ALiBi. Its terms cancel there (with sink 0, p is homogeneous in q: q . dq = 0), and fp32 leaves
  // eps |terms| amplified by 1 / den (a small q_i: D = 1 rows of fuzz seed 21, dq 1.2e-2 for an exact 0).
  auto dq = dq_acc.sum(0).to(at::kDouble);
  const auto qd = q.to(at::kDouble), qq = (qd * qd).sum(-1), qdq = (qd * dq).sum(-1);
  auto heads = gamma != 0;
  if (alibi_slopes.numel()) heads = heads & (alibi_slopes == 0);
  const auto fix = at::where(heads.view({1, -1, 1}) & (qq > 0) & at::isfinite(c) & at::isfinite(qdq),
                             (-c - qdq) / qq, at::zeros_like(qq));
  dq = dq + qd * fix.unsqueeze(-1);
  return {dq.to(q.scalar_type()), dk, dv, (dg_acc.sum(0).to(at::kDouble) + row_part).to(at::kFloat), dsink};
}

}  // namespace fastattn::cpu
