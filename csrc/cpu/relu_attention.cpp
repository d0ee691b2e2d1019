// Fused, tiled CPU ByteScale ReLU attention (SPEC.md §2), forward and backward.
//
// Forward: one task per (batch, query head, query tile). Scores come from tile GEMMs (bf16 inputs
// go to MKL's bf16 GEMM, fp16 through fp32 tiles). Without quantization one pass suffices: the
// denominator is a per-row constant, so acc = sum_j a_ij v_j is divided at the end. With
// quantization p must be final before rounding, so pass 1 computes the row statistic (max/sum/count)
// and pass 2 rounds p = a / den and multiplies by V: results never depend on tile sizes.
// int8_qkv: q, k per token and v per channel are quantized once (O(N D)); QK^T then runs on
// AVX512-VNNI integer dot products (csrc/cpu/int8_gemm.h), and with quant the rounded weights
// (levels 0..2^bits-1, u8) multiply int8 V on VNNI too.
// Backward (gradient of the unquantized op): a row pass computes dden_i = -(sum_j a_ij dP_ij)/den_i^2
// (from out when unquantized, else by recomputing sum_j a_ij v_j), then one task per (batch, kv
// head, key tile) owns dK, dV and walks the query tiles of its GQA group; dQ and dgamma go to
// per-thread accumulators.
#include "cpu/relu_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "common/relu.h"
#include "cpu/attention_common.h"
#include "cpu/int8_gemm.h"

namespace fastattn::cpu {
namespace {

constexpr int64_t kBM = 128;   // query rows per task / inner step
constexpr int64_t kBN = 512;   // keys per tile (forward)
constexpr int64_t kBNB = 128;  // keys per task (backward)

struct Relu {
  Dims d;
  bool causal;
  float scale;
  int norm, bits;
  const float *gamma, *sink, *slopes, *tau;  // slopes / tau may be null
};

// In place: G (= scale * q.k, times gamma when `gamma_folded`) -> s = gamma G - slope |i'-j|, and
// disallowed keys (causal, below tau) -> -inf. Rows are query i0.., keys j0..j0+cols.
inline void finish_scores(float* S, int64_t ldS, int64_t rows, int64_t cols, int64_t i0, int64_t j0, int64_t bh,
                          int64_t h, const Relu& P, bool gamma_folded) {
  const float gamma = gamma_folded ? 1.0f : P.gamma[h];
  const float slope = P.slopes ? P.slopes[h] : 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * ldS;
    const int64_t i = i0 + r, i_abs = i + P.d.offset();
    if (P.slopes || gamma != 1.0f)
      for (int64_t c = 0; c < cols; ++c) s[c] = relu_score(s[c], gamma, slope, i_abs, j0 + c);
    const int64_t limit = key_limit(P.d, P.causal, i);
    const float* tau_row = P.tau ? P.tau + bh * P.d.Nq + i : nullptr;
    if (limit < j0 + cols || tau_row) mask_row(s, j0, cols, limit, tau_row);
  }
}

// Row statistic update over one score row (masked = -inf): max (with its index), sum, or count.
struct RowStat {
  float stat = 0.0f;
  int32_t arg = -1;
  void update(const float* s, int64_t cols, int64_t j0, int norm) {
    if (norm == kNormMax) {
      const float mx = row_max(s, cols);
      if (mx > stat) {
        stat = mx;
        for (int64_t c = 0; c < cols; ++c)
          if (s[c] == mx) { arg = static_cast<int32_t>(j0 + c); break; }
      }
    } else if (norm == kNormSum) {
      float part[kLanes] = {};
      int64_t c = 0;
      for (; c + kLanes <= cols; c += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) part[l] += s[c + l] > 0.0f ? s[c + l] : 0.0f;
      for (int64_t l = 0; l < kLanes; ++l) stat += part[l];
      for (; c < cols; ++c) stat += s[c] > 0.0f ? s[c] : 0.0f;
    } else {
      int64_t n = 0;
      for (int64_t c = 0; c < cols; ++c) n += s[c] != -kInf;
      stat += static_cast<float>(n);
    }
  }
};

inline void relu_row(float* s, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) s[c] = s[c] > 0.0f ? s[c] : 0.0f;
}

// Per-task operand access: fp32 tiles (converted when needed) or native bf16 for MKL's bf16 GEMM.
template <typename T>
struct Tiles {
  static constexpr bool kBf16 = std::is_same_v<T, c10::BFloat16>;
  std::vector<float> qbuf, kbuf, vbuf;
  std::vector<c10::BFloat16> pbuf;
  Tiles(int64_t D, int64_t Dv, int64_t bn)
      : qbuf(kBf16 || std::is_same_v<T, float> ? 0 : kBM * D), kbuf(kBf16 || std::is_same_v<T, float> ? 0 : bn * D),
        vbuf(kBf16 || std::is_same_v<T, float> ? 0 : bn * Dv), pbuf(kBf16 ? kBM * bn : 0) {}
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
  // acc[rows x Dv] += P V
  void pv(const float* P, int64_t ldP, const T* v, int64_t rows, int64_t cols, int64_t Dv, float* acc) {
    if constexpr (kBf16) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) pbuf[r * cols + c] = c10::BFloat16(P[r * ldP + c]);
      gemm_bf16(false, false, rows, Dv, cols, 1.0f, pbuf.data(), cols, v, Dv, 1.0f, acc, Dv);
    } else {
      gemm_nn(rows, Dv, cols, 1.0f, P, ldP, tile_ptr(v, cols, Dv, vbuf.data()), Dv, 1.0f, acc, Dv);
    }
  }
};

template <typename T>
void fwd_kernel(const T* q, const T* k, const T* v, T* out, float* den_out, int32_t* arg_out, const Relu& P) {
  const Dims& d = P.d;
  const int64_t n_qt = (d.Nq + kBM - 1) / kBM;
  at::parallel_for(0, d.B * d.Hq * n_qt, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> S(kBM * kBN), acc(kBM * d.Dv), den(kBM);
    std::vector<RowStat> st(kBM);
    Tiles<T> tl(d.D, d.Dv, kBN);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task % n_qt, bh = task / n_qt, h = bh % d.Hq, b = bh / d.Hq, hk = h / d.group();
      const int64_t i0 = t * kBM, rows = std::min(kBM, d.Nq - i0);
      const T* kh = k + (b * d.Hk + hk) * d.Nk * d.D;
      const T* vh = v + (b * d.Hk + hk) * d.Nk * d.Dv;
      tl.set_q(q + (bh * d.Nq + i0) * d.D, rows, d.D);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(st.begin(), st.end(), RowStat{});
      const float alpha = P.gamma[h] * P.scale;
      const int64_t kend = key_limit(d, P.causal, i0 + rows - 1);
      // Pass 1 (the only pass without quantization): statistics, and acc += a V when unquantized.
      for (int64_t j0 = 0; j0 < kend; j0 += kBN) {
        const int64_t cols = std::min(kBN, kend - j0);
        tl.qk(kh + j0 * d.D, rows, cols, d.D, alpha, S.data(), kBN);
        finish_scores(S.data(), kBN, rows, cols, i0, j0, bh, h, P, true);
        for (int64_t r = 0; r < rows; ++r) {
          st[r].update(S.data() + r * kBN, cols, j0, P.norm);
          relu_row(S.data() + r * kBN, cols);
        }
        if (P.bits == 0) tl.pv(S.data(), kBN, vh + j0 * d.Dv, rows, cols, d.Dv, acc.data());
      }
      for (int64_t r = 0; r < rows; ++r) den[r] = P.sink[h] + st[r].stat;
      if (P.bits != 0) {  // pass 2: p = quant(a / den), acc += p V
        for (int64_t j0 = 0; j0 < kend; j0 += kBN) {
          const int64_t cols = std::min(kBN, kend - j0);
          tl.qk(kh + j0 * d.D, rows, cols, d.D, alpha, S.data(), kBN);
          finish_scores(S.data(), kBN, rows, cols, i0, j0, bh, h, P, true);
          for (int64_t r = 0; r < rows; ++r) {
            float* s = S.data() + r * kBN;
            // a / den as a division, exactly as SPEC writes it, so levels flip only at true ties
            const float dn = den[r] > 0.0f ? den[r] : kInf;
            for (int64_t c = 0; c < cols; ++c) s[c] = quantize_weight((s[c] > 0.0f ? s[c] : 0.0f) / dn, P.bits);
          }
          tl.pv(S.data(), kBN, vh + j0 * d.Dv, rows, cols, d.Dv, acc.data());
        }
      }
      T* ot = out + (bh * d.Nq + i0) * d.Dv;
      for (int64_t r = 0; r < rows; ++r) {
        float* a = acc.data() + r * d.Dv;
        if (P.bits == 0) scale_row(a, d.Dv, den[r] > 0.0f ? 1.0f / den[r] : 0.0f);
        store_row(a, d.Dv, ot + r * d.Dv);
        den_out[bh * d.Nq + i0 + r] = den[r];
        arg_out[bh * d.Nq + i0 + r] = P.norm == kNormMax ? st[r].arg : -1;
      }
    }
  });
}

// int8_qkv forward: the same passes as fwd_kernel, with QK^T (and, with quant, P V) as VNNI integer
// products over the quantized operands. See the file comment.
template <typename T>
void fwd_int8_kernel(const T* q, const T* k, const T* v, T* out, float* den_out, int32_t* arg_out, const Relu& P) {
  const Dims& d = P.d;
  const int64_t BHk = d.B * d.Hk, Dp = (d.D + 3) / 4 * 4;
  // Quantize once: q, k per token; v per channel over the sequence (per batch and kv head).
  std::vector<int8_t> q8(d.B * d.Hq * d.Nq * d.D), k8(BHk * d.Nk * d.D);
  std::vector<float> qs(d.B * d.Hq * d.Nq), ks(BHk * d.Nk), vs(BHk * d.Dv);
  std::vector<PackedK> kp(BHk), vp(P.bits ? BHk : 0);
  std::vector<float> vf(P.bits ? 0 : BHk * d.Nk * d.Dv);  // dequantized v for the float P V
  at::parallel_for(0, d.B * d.Hq, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bh = b0; bh < b1; ++bh)
      quantize_rows(q + bh * d.Nq * d.D, d.Nq, d.D, q8.data() + bh * d.Nq * d.D, qs.data() + bh * d.Nq);
  });
  at::parallel_for(0, BHk, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> vt(d.Dv * d.Nk);
    std::vector<int8_t> vt8(d.Dv * d.Nk);
    for (int64_t bhk = b0; bhk < b1; ++bhk) {
      quantize_rows(k + bhk * d.Nk * d.D, d.Nk, d.D, k8.data() + bhk * d.Nk * d.D, ks.data() + bhk * d.Nk);
      kp[bhk].pack(k8.data() + bhk * d.Nk * d.D, d.Nk, d.D);
      const T* vh = v + bhk * d.Nk * d.Dv;
      for (int64_t j = 0; j < d.Nk; ++j)
        for (int64_t c = 0; c < d.Dv; ++c) vt[c * d.Nk + j] = static_cast<float>(vh[j * d.Dv + c]);
      quantize_rows(vt.data(), d.Dv, d.Nk, vt8.data(), vs.data() + bhk * d.Dv);  // rows of v^T = channels
      if (P.bits) {
        vp[bhk].pack(vt8.data(), d.Dv, d.Nk);
      } else {
        for (int64_t j = 0; j < d.Nk; ++j)
          for (int64_t c = 0; c < d.Dv; ++c)
            vf[(bhk * d.Nk + j) * d.Dv + c] = vt8[c * d.Nk + j] * vs[bhk * d.Dv + c];
      }
    }
  });
  const int64_t n_qt = (d.Nq + kBM - 1) / kBM;
  const float L = P.bits ? static_cast<float>((1 << P.bits) - 1) : 1.0f;
  at::parallel_for(0, d.B * d.Hq * n_qt, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> S(kBM * kBN), acc(kBM * d.Dv), den(kBM);
    std::vector<RowStat> st(kBM);
    std::vector<uint8_t> qu(kBM * Dp), lvl(kBM * kBN);
    std::vector<int32_t> dot(8 * 16);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task % n_qt, bh = task / n_qt, h = bh % d.Hq, b = bh / d.Hq, bhk = b * d.Hk + h / d.group();
      const int64_t i0 = t * kBM, rows = std::min(kBM, d.Nq - i0);
      std::fill(qu.begin(), qu.end(), uint8_t{128});
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < d.D; ++c) qu[r * Dp + c] = static_cast<uint8_t>(q8[(bh * d.Nq + i0 + r) * d.D + c] + 128);
      const float gs = P.gamma[h] * P.scale;
      const PackedK& K = kp[bhk];
      // S[r][c] = gs * qs_i * ks_j * (sum_d (q+128) k - 128 sum_d k) for keys j0..j0+cols
      auto scores = [&](int64_t j0, int64_t cols) {
        for (int64_t r0 = 0; r0 < rows; r0 += 8) {
          const int64_t rr = std::min<int64_t>(8, rows - r0);
          for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            const int64_t blk = (j0 + c0) / 16;
            dot_block16(qu.data() + r0 * Dp, Dp, rr, K.block(blk), K.n_groups, dot.data());
            const int64_t cc = std::min<int64_t>(16, cols - c0);
            for (int64_t r = 0; r < rr; ++r) {
              const float qsc = gs * qs[bh * d.Nq + i0 + r0 + r];
              for (int64_t l = 0; l < cc; ++l) {
                const int64_t j = j0 + c0 + l;
                S[(r0 + r) * kBN + c0 + l] =
                    static_cast<float>(dot[r * 16 + l] - 128 * K.rowsum[j]) * qsc * ks[bhk * d.Nk + j];
              }
            }
          }
        }
        finish_scores(S.data(), kBN, rows, cols, i0, j0, bh, h, P, true);
      };
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(st.begin(), st.end(), RowStat{});
      const int64_t kend = key_limit(d, P.causal, i0 + rows - 1);
      for (int64_t j0 = 0; j0 < kend; j0 += kBN) {
        const int64_t cols = std::min(kBN, kend - j0);
        scores(j0, cols);
        for (int64_t r = 0; r < rows; ++r) {
          st[r].update(S.data() + r * kBN, cols, j0, P.norm);
          relu_row(S.data() + r * kBN, cols);
        }
        if (!P.bits)
          gemm_nn(rows, d.Dv, cols, 1.0f, S.data(), kBN, vf.data() + (bhk * d.Nk + j0) * d.Dv, d.Dv, 1.0f,
                  acc.data(), d.Dv);
      }
      for (int64_t r = 0; r < rows; ++r) den[r] = P.sink[h] + st[r].stat;
      if (P.bits) {  // pass 2: integer levels of p times int8 v (channels in blocks of 16)
        const PackedK& V = vp[bhk];
        for (int64_t j0 = 0; j0 < kend; j0 += kBN) {
          const int64_t cols = std::min(kBN, kend - j0), groups = (cols + 3) / 4;
          scores(j0, cols);
          std::fill(lvl.begin(), lvl.end(), uint8_t{0});
          for (int64_t r = 0; r < rows; ++r) {
            const float dn = den[r] > 0.0f ? den[r] : kInf;
            const float* s = S.data() + r * kBN;
            for (int64_t c = 0; c < cols; ++c)
              lvl[r * kBN + c] = static_cast<uint8_t>(weight_level((s[c] > 0.0f ? s[c] : 0.0f) / dn, P.bits));
          }
          for (int64_t r0 = 0; r0 < rows; r0 += 8) {
            const int64_t rr = std::min<int64_t>(8, rows - r0);
            for (int64_t cb = 0; cb < V.n_blocks; ++cb) {
              dot_block16(lvl.data() + r0 * kBN, kBN, rr, V.block(cb) + (j0 / 4) * 64, groups, dot.data());
              const int64_t cc = std::min<int64_t>(16, d.Dv - cb * 16);
              for (int64_t r = 0; r < rr; ++r)
                for (int64_t l = 0; l < cc; ++l)
                  acc[(r0 + r) * d.Dv + cb * 16 + l] += static_cast<float>(dot[r * 16 + l]) * vs[bhk * d.Dv + cb * 16 + l];
            }
          }
        }
      }
      T* ot = out + (bh * d.Nq + i0) * d.Dv;
      for (int64_t r = 0; r < rows; ++r) {
        float* a = acc.data() + r * d.Dv;
        scale_row(a, d.Dv, P.bits ? 1.0f / L : (den[r] > 0.0f ? 1.0f / den[r] : 0.0f));
        store_row(a, d.Dv, ot + r * d.Dv);
        den_out[bh * d.Nq + i0 + r] = den[r];
        arg_out[bh * d.Nq + i0 + r] = P.norm == kNormMax ? st[r].arg : -1;
      }
    }
  });
}

// dden_i = -(sum_j a_ij (do_i . v_j)) / den_i^2 = -(do_i . sum_j a_ij v_j) / den_i^2 (0 where den = 0).
template <typename T>
void dden_kernel(const T* dout, const T* q, const T* k, const T* v, const T* out, const float* den, float* dden,
                 const Relu& P, bool recompute) {
  const Dims& d = P.d;
  const int64_t n_qt = (d.Nq + kBM - 1) / kBM;
  at::parallel_for(0, d.B * d.Hq * n_qt, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> S(kBM * kBN), acc(kBM * d.Dv);
    Tiles<T> tl(d.D, d.Dv, kBN);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task % n_qt, bh = task / n_qt, h = bh % d.Hq, b = bh / d.Hq, hk = h / d.group();
      const int64_t i0 = t * kBM, rows = std::min(kBM, d.Nq - i0);
      if (recompute) {  // sum_j a_ij v_j from scratch (the saved out was quantized)
        std::fill(acc.begin(), acc.end(), 0.0f);
        tl.set_q(q + (bh * d.Nq + i0) * d.D, rows, d.D);
        const int64_t kend = key_limit(d, P.causal, i0 + rows - 1);
        for (int64_t j0 = 0; j0 < kend; j0 += kBN) {
          const int64_t cols = std::min(kBN, kend - j0);
          tl.qk(k + ((b * d.Hk + hk) * d.Nk + j0) * d.D, rows, cols, d.D, P.gamma[h] * P.scale, S.data(), kBN);
          finish_scores(S.data(), kBN, rows, cols, i0, j0, bh, h, P, true);
          for (int64_t r = 0; r < rows; ++r) relu_row(S.data() + r * kBN, cols);
          tl.pv(S.data(), kBN, v + ((b * d.Hk + hk) * d.Nk + j0) * d.Dv, rows, cols, d.Dv, acc.data());
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = bh * d.Nq + i0 + r;
        const float dn = den[row];
        double dot = 0.0;
        for (int64_t c = 0; c < d.Dv; ++c) {
          const double o = recompute ? acc[r * d.Dv + c] : static_cast<double>(out[row * d.Dv + c]) * dn;
          dot += static_cast<double>(dout[row * d.Dv + c]) * o;
        }
        dden[row] = dn > 0.0f ? static_cast<float>(-dot / (static_cast<double>(dn) * dn)) : 0.0f;
      }
    }
  });
}

template <typename T>
void bwd_kernel(const T* dout, const T* q, const T* k, const T* v, const float* den, const int32_t* argmax,
                const float* dden, float* dq_acc, float* dgamma_acc, T* dk, T* dv, const Relu& P) {
  const Dims& d = P.d;
  const int64_t n_kt = (d.Nk + kBNB - 1) / kBNB;
  const int64_t q_numel = d.B * d.Hq * d.Nq * d.D;
  at::parallel_for(0, d.B * d.Hk * n_kt, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* dq_mine = dq_acc + tid * q_numel;
    float* dg_mine = dgamma_acc + tid * d.Hq;
    std::vector<float> G(kBM * kBNB), S(kBM * kBNB), dP(kBM * kBNB);
    std::vector<float> dK(kBNB * d.D), dV(kBNB * d.Dv);
    std::vector<float> qbuf(kBM * d.D), obuf(kBM * d.Dv), kbuf(kBNB * d.D), vbuf(kBNB * d.Dv);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t jt = task % n_kt, bhk = task / n_kt, hk = bhk % d.Hk, b = bhk / d.Hk;
      const int64_t j0 = jt * kBNB, cols = std::min(kBNB, d.Nk - j0);
      const float* K = tile_ptr(k + (bhk * d.Nk + j0) * d.D, cols, d.D, kbuf.data());
      const float* V = tile_ptr(v + (bhk * d.Nk + j0) * d.Dv, cols, d.Dv, vbuf.data());
      std::fill(dK.begin(), dK.end(), 0.0f);
      std::fill(dV.begin(), dV.end(), 0.0f);
      const int64_t i_first = P.causal ? std::clamp<int64_t>(j0 - d.offset(), 0, d.Nq) : 0;
      for (int64_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
        const int64_t bh = b * d.Hq + h;
        const float gs = P.gamma[h] * P.scale;
        // dgamma_h = sum_ij ds_ij G_ij cancels almost exactly (the op is homogeneous in gamma but
        // for sink and ALiBi), so for gamma != 0 use the identity sum_j ds_ij a_ij = -dden_i * sink
        // (max/sum) or -dden_i * den_i (len), added on the host, and sum here only the ALiBi part:
        // dgamma_h = (sum_i c_i + slope_h sum_ij ds_ij |x_ij|) / gamma_h.
        const bool identity = P.gamma[h] != 0.0f;
        const float slope = P.slopes ? P.slopes[h] : 0.0f;
        double dgamma = 0.0;
        for (int64_t i0 = (i_first / kBM) * kBM; i0 < d.Nq; i0 += kBM) {
          const int64_t rows = std::min(kBM, d.Nq - i0);
          const float* Q = tile_ptr(q + (bh * d.Nq + i0) * d.D, rows, d.D, qbuf.data());
          const float* dO = tile_ptr(dout + (bh * d.Nq + i0) * d.Dv, rows, d.Dv, obuf.data());
          gemm_nt(rows, cols, d.D, P.scale, Q, d.D, K, d.D, 0.0f, G.data(), kBNB);  // G = scale q.k
          std::copy(G.begin(), G.begin() + rows * kBNB, S.begin());
          finish_scores(S.data(), kBNB, rows, cols, i0, j0, bh, h, P, false);
          gemm_nt(rows, cols, d.Dv, 1.0f, dO, d.Dv, V, d.Dv, 0.0f, dP.data(), kBNB);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t row = bh * d.Nq + i0 + r;
            const float dn = den[row], inv = dn > 0.0f ? 1.0f / dn : 0.0f, dd = dden[row];
            const int32_t am = P.norm == kNormMax ? argmax[row] : -1;
            float* s = S.data() + r * kBNB;
            float* dp = dP.data() + r * kBNB;
            const float* g = G.data() + r * kBNB;
            const float dd_all = P.norm == kNormSum ? dd : 0.0f;
            double part[kLanes] = {};  // dgamma sums many terms that cancel: accumulate in double
            for (int64_t c = 0; c < cols; ++c) {
              const bool pos = s[c] > 0.0f;  // allowed and positive (masked are -inf)
              const float ds = pos ? dp[c] * inv + dd_all : 0.0f;
              s[c] = pos ? s[c] * inv : 0.0f;  // p = a / den (unquantized)
              dp[c] = ds;
              const int64_t x = i0 + r + d.offset() - (j0 + c);
              part[c % kLanes] += static_cast<double>(ds) * (identity ? static_cast<float>(x < 0 ? -x : x) : g[c]);
            }
            if (am >= j0 && am < j0 + cols && S[r * kBNB + (am - j0)] > 0.0f) {  // max norm: d den / d a
              const int64_t x = i0 + r + d.offset() - am;
              dp[am - j0] += dd;
              part[0] += static_cast<double>(dd) * (identity ? static_cast<float>(x < 0 ? -x : x) : g[am - j0]);
            }
            for (int64_t l = 0; l < kLanes; ++l) dgamma += part[l];
          }
          gemm_tn(cols, d.Dv, rows, 1.0f, S.data(), kBNB, dO, d.Dv, 1.0f, dV.data(), d.Dv);
          gemm_tn(cols, d.D, rows, gs, dP.data(), kBNB, Q, d.D, 1.0f, dK.data(), d.D);
          gemm_nn(rows, d.D, cols, gs, dP.data(), kBNB, K, d.D, 1.0f, dq_mine + (bh * d.Nq + i0) * d.D, d.D);
        }
        dg_mine[h] += static_cast<float>(identity ? dgamma * slope / P.gamma[h] : dgamma);
      }
      for (int64_t c = 0; c < cols; ++c) {
        store_row(dK.data() + c * d.D, d.D, dk + (bhk * d.Nk + j0 + c) * d.D);
        store_row(dV.data() + c * d.Dv, d.Dv, dv + (bhk * d.Nk + j0 + c) * d.Dv);
      }
    }
  });
}

Relu make_problem(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& gamma, const at::Tensor& sink, const at::Tensor& alibi, const at::Tensor& tau,
                  bool causal, double scale, int64_t norm, int64_t quant) {
  check_attention_inputs(op, q, k, v);
  check_tau(op, tau, q);
  check_head_param(op, "gamma", gamma, q.size(1), false);
  check_head_param(op, "sink", sink, q.size(1), false);
  check_head_param(op, "alibi_slopes", alibi, q.size(1), true);
  TORCH_CHECK(norm >= 0 && norm <= 2, op, ": norm must be 0 (max), 1 (sum) or 2 (len), got ", norm);
  TORCH_CHECK(quant == 0 || quant == 7 || quant == 8, op, ": quant must be 0, 7 or 8 bits, got ", quant);
  TORCH_CHECK(quant == 0 || norm != kNormLen, op, ": quant needs norm max or sum");
  return Relu{dims_of(q, k, v), causal, static_cast<float>(scale), static_cast<int>(norm), static_cast<int>(quant),
              gamma.data_ptr<float>(), sink.data_ptr<float>(), alibi.numel() ? alibi.data_ptr<float>() : nullptr,
              tau.numel() ? tau.data_ptr<float>() : nullptr};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& gamma, const at::Tensor& sink,
    const at::Tensor& alibi_slopes, const at::Tensor& tau, bool causal, double scale, int64_t norm, int64_t quant,
    bool int8_qkv) {
  const Relu P = make_problem("relu_attention_fwd", q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm,
                              quant);
  const Dims& d = P.d;
  auto out = at::empty({d.B, d.Hq, d.Nq, d.Dv}, q.options());
  auto den = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));
  auto argmax = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, den, argmax};
  dispatch_float_types(q.scalar_type(), "relu_attention_fwd", [&](auto tag) {
    using T = decltype(tag);
    (int8_qkv ? fwd_int8_kernel<T> : fwd_kernel<T>)(q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out.data_ptr<T>(), den.data_ptr<float>(),
                  argmax.data_ptr<int32_t>(), P);
  });
  return {out, den, argmax};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> relu_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& den, const at::Tensor& argmax, const at::Tensor& gamma, const at::Tensor& sink,
    const at::Tensor& alibi_slopes, const at::Tensor& tau, bool causal, double scale, int64_t norm, int64_t quant) {
  const Relu P = make_problem("relu_attention_bwd", q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm,
                              quant);
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
  auto dden = at::empty({d.B, d.Hq, d.Nq}, den.options());
  auto dq_acc = at::zeros({at::get_num_threads(), d.B, d.Hq, d.Nq, d.D}, q.options().dtype(at::kFloat));
  auto dg_acc = at::zeros({at::get_num_threads(), d.Hq}, gamma.options());
  dispatch_float_types(q.scalar_type(), "relu_attention_bwd", [&](auto tag) {
    using T = decltype(tag);
    dden_kernel<T>(dout.data_ptr<T>(), q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out.data_ptr<T>(),
                   den.data_ptr<float>(), dden.data_ptr<float>(), P, quant != 0);
    bwd_kernel<T>(dout.data_ptr<T>(), q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), den.data_ptr<float>(),
                  argmax.data_ptr<int32_t>(), dden.data_ptr<float>(), dq_acc.data_ptr<float>(),
                  dg_acc.data_ptr<float>(), dk.data_ptr<T>(), dv.data_ptr<T>(), P);
  });
  dsink = dden.sum({0, 2});
  // The row part of dgamma (see bwd_kernel): sum_i c_i / gamma_h where gamma_h != 0.
  const auto c = (norm == kNormLen ? dden.to(at::kDouble) * den.to(at::kDouble)
                                   : dden.to(at::kDouble) * sink.to(at::kDouble).view({1, -1, 1}));
  const auto row_part = at::where(gamma != 0, -c.sum({0, 2}) / gamma.to(at::kDouble), at::zeros_like(c.sum({0, 2})));
  return {dq_acc.sum(0).to(q.scalar_type()), dk, dv, (dg_acc.sum(0).to(at::kDouble) + row_part).to(at::kFloat),
          dsink};
}

}  // namespace fastattn::cpu
