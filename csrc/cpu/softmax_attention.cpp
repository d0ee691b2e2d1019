// Fused, tiled CPU softmax attention (flash-style), forward and backward. See softmax_attention.h.
//
// Forward: one task per (batch, query head, query tile of kBlockM rows); the task streams key tiles
// of kBlockN keys: S = scale * Q K^T (MKL gemm), online softmax row update, acc += P V (gemm).
// Scratch is tile-sized; no Nq x Nk buffer. Causal tasks stop at the last key their rows can see.
// Backward: one task per (batch, kv head, key tile): it owns dK, dV of its keys (no races) and
// walks the query tiles of every query head in its GQA group, recomputing P from the saved lse:
//   dV += P^T dO, dP = dO V^T, dS = P (dP - delta), dK += scale dS^T Q, dQ += scale dS K.
// dQ rows are shared between tasks, so each thread accumulates into its own fp32 dQ buffer
// (threads x |q| floats: linear in N), summed at the end. 5 GEMMs per tile pair and no second pass:
// the FlashAttention-2 split (a dK/dV pass over key tiles + a dQ pass over query tiles) recomputes
// S = QK^T and dP = dO V^T in both passes (7 GEMMs), i.e. ~40% more work, which on a 2-core CPU
// costs more than one extra |q|-sized fp32 buffer per thread saves.
#include "cpu/softmax_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention_common.h"
#include "cpu/row_stats.h"
#include "cpu/varlen.h"

namespace fastattn::cpu {
namespace {

// Tile sizes, tuned at B=1, H=8, D=64, fp32 on 2 cores (N = 1k, 4k; see the report): bigger tiles
// give MKL larger GEMMs and amortize the per-row softmax bookkeeping; the fp32 scratch per thread
// (S: kBlockM x kBlockN = 256 KB forward) still sits in L2.
constexpr int64_t kBlockM = 128;  // query rows per task (fwd)
constexpr int64_t kBlockN = 512;  // keys per tile (fwd)
constexpr int64_t kBlockMB = 128; // query rows per inner step (bwd)
constexpr int64_t kBlockNB = 128; // keys per task (bwd)

// A task of the forward or of the backward's row-statistics pre-pass: (sequence, query head, query
// tile). Its cost, for the balanced schedule: rows times the keys its last row sees (plus a constant,
// so rows without keys still get their zeros).
struct QueryTask {
  int32_t s, h;
  int64_t i0;
};

// The tasks (sequence, query head, query tile of `block` rows) of a pass over query tiles, with their costs.
void query_tile_tasks(const Dims& d, const Ragged& rg, bool causal, int64_t block, std::vector<QueryTask>& tasks,
                      std::vector<int64_t>& cost) {
  for (int32_t s = 0; s < static_cast<int32_t>(rg.seqs.size()); ++s) {
    const Seq& sq = rg.seqs[s];
    for (int64_t i0 = 0; i0 < sq.nq; i0 += block)
      for (int32_t h = 0; h < d.Hq; ++h) {
        tasks.push_back({s, h, i0});
        cost.push_back(std::min(block, sq.nq - i0) * (sq.limit(causal, std::min(sq.nq, i0 + block) - 1) + 16));
      }
  }
}

template <typename T>
void fwd_kernel(const T* q, const T* k, const T* v, const float* tau, T* out, float* lse, const Dims& d,
                const Ragged& rg, bool causal, float scale) {
  std::vector<QueryTask> tasks;
  std::vector<int64_t> cost;
  query_tile_tasks(d, rg, causal, kBlockM, tasks, cost);
  run_balanced(balance(cost, at::get_num_threads()), [&](int64_t, const std::vector<int64_t>& mine) {
    std::vector<float> S(kBlockM * kBlockN), acc(kBlockM * d.Dv), m(kBlockM), l(kBlockM);
    std::vector<float> qbuf(std::is_same_v<T, float> ? 0 : kBlockM * d.D);
    std::vector<float> kbuf(std::is_same_v<T, float> ? 0 : kBlockN * d.D);
    std::vector<float> vbuf(std::is_same_v<T, float> ? 0 : kBlockN * d.Dv), vclean;
    std::vector<uint8_t> poison(kBlockM);
    std::vector<int32_t> bad;
    for (const int64_t task : mine) {
      const Seq& sq = rg.seqs[tasks[task].s];
      const int64_t h = tasks[task].h, b = sq.b, hk = h / d.group(), i0 = tasks[task].i0;
      const int64_t rows = std::min(kBlockM, sq.nq - i0), row0 = rg.row0(d, sq, h) + i0;
      const T* qt = q + row0 * d.D;
      const T* kh = k + d.k_off(b, hk) + sq.k0 * d.D;
      const T* vh = v + d.v_off(b, hk) + sq.k0 * d.Dv;
      const float* tau_t = tau ? tau + row0 : nullptr;
      const float* Q = tile_ptr(qt, rows, d.D, qbuf.data());
      std::fill(m.begin(), m.end(), -kInf);
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(poison.begin(), poison.end(), 0);
      const int64_t kend = sq.limit(causal, i0 + rows - 1);  // last row sees the most keys
      for (int64_t j0 = 0; j0 < kend; j0 += kBlockN) {
        const int64_t cols = std::min(kBlockN, kend - j0);
        if (rg.allowed(b, sq.k0 + j0, cols) == 0) continue;  // padding only
        const bool* keep = rg.keep(b, sq.k0 + j0, cols);
        const float* K = tile_ptr(kh + j0 * d.D, cols, d.D, kbuf.data());
        gemm_nt(rows, cols, d.D, scale, Q, d.D, K, d.D, 0.0f, S.data(), kBlockN);
        const float* V = tile_ptr(vh + j0 * d.Dv, cols, d.Dv, vbuf.data());
        bad.clear();  // in a tile where some row masks a key: the keys with a non-finite v (zeroed)
        if (tau_t || keep || sq.limit(causal, i0) < j0 + cols) nonfinite_rows(V, cols, d.Dv, d.Dv, bad);
        if (!bad.empty()) {
          vclean.resize(kBlockN * d.Dv);
          V = zero_rows(V, cols, d.Dv, bad, vclean.data());
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* s = S.data() + r * kBlockN;
          poison[r] |= !mask_row(s, j0, cols, sq.limit(causal, i0 + r), tau_t ? tau_t + r : nullptr, keep);
          if (!bad.empty()) poison_rows(s, kBlockN, 1, bad, &poison[r]);
          const float m_new = std::max(m[r], row_max(s, cols));
          if (m_new == -kInf) {  // nothing allowed yet in this row: P row is all zero
            std::fill(s, s + cols, 0.0f);
            continue;
          }
          const float sum = exp_shift_sum(s, cols, m_new);
          const float alpha = fast_exp(m[r] - m_new);  // 0 when m was -inf
          if (alpha != 1.0f) scale_row(acc.data() + r * d.Dv, d.Dv, alpha);
          l[r] = l[r] * alpha + sum;
          m[r] = m_new;
        }
        gemm_nn(rows, d.Dv, cols, 1.0f, S.data(), kBlockN, V, d.Dv, 1.0f, acc.data(), d.Dv);
      }
      T* ot = out + row0 * d.Dv;
      float* lt = lse + row0;
      for (int64_t r = 0; r < rows; ++r) {
        float* a = acc.data() + r * d.Dv;
        if (poison[r] || !all_finite(a, d.Dv)) {  // a non-finite q, allowed k or supporting v
          fill_nan(ot + r * d.Dv, d.Dv);
          lt[r] = kNaN;
          continue;
        }
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int64_t c = 0; c < d.Dv; ++c) a[c] *= inv;
        store_row(a, d.Dv, ot + r * d.Dv);
        lt[r] = l[r] > 0.0f ? m[r] + std::log(l[r]) : kInf;
      }
    }
  });
}

// The backward's tile loads and its two score GEMMs (S = scale Q K^T, dP = dO V^T), shared by the
// row-statistics pre-pass and the main pass so that both see bitwise the same S and dP (row_stats.h):
// same tile grid (query tiles at multiples of kBlockMB, key tiles at multiples of kBlockNB), same calls.
template <typename T>
struct BwdTiles {
  const T *dout, *q, *k, *v;
  const Dims& d;
  KeyTile kt;
  std::vector<float> P, dP, qbuf, obuf;
  const float *Q = nullptr, *dO = nullptr;

  BwdTiles(const T* dout_, const T* q_, const T* k_, const T* v_, const Dims& d_)
      : dout(dout_), q(q_), k(k_), v(v_), d(d_), kt(kBlockNB, d_), P(kBlockMB * kBlockNB), dP(kBlockMB * kBlockNB),
        qbuf(kBlockMB * d.D), obuf(kBlockMB * d.Dv) {}
  void load_keys(int64_t krow, int64_t cols) { kt.load(k, v, krow, cols, d); }
  // Query rows [row, row + rows) of the (B, Hq, Nq) rows.
  void load_queries(int64_t row, int64_t rows) {
    Q = kt.clean.q(tile_ptr(q + row * d.D, rows, d.D, qbuf.data()), rows, d.D);
    dO = tile_ptr(dout + row * d.Dv, rows, d.Dv, obuf.data());
  }
  // P <- scale Q K^T, dP <- dO V^T for the loaded tiles.
  void scores(int64_t rows, int64_t cols, float scale) {
    gemm_nt(rows, cols, d.D, scale, Q, d.D, kt.K, d.D, 0.0f, P.data(), kBlockNB);
    gemm_nt(rows, cols, d.Dv, 1.0f, dO, d.Dv, kt.V, d.Dv, 0.0f, dP.data(), kBlockNB);
  }
};

// Causal: query i sees key j0 iff i + offset >= j0; the first query tile a key tile meets.
inline int64_t first_query(const Seq& sq, bool causal, int64_t j0) {
  return causal ? std::clamp<int64_t>(j0 - sq.offset(), 0, sq.nq) : 0;
}

// Row statistics pre-pass (row_stats.h): one task per (sequence, query head, query tile of the main
// pass) walking its key tiles. lse, delta: (B, Hq, Nq) fp32 outputs; a NaN row of the forward
// (lse_fwd NaN) keeps lse = NaN, which the main pass reads as its NaN flag.
template <typename T>
void row_stats_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse_fwd, const float* tau,
                      float* lse, float* delta, const Dims& d, const Ragged& rg, bool causal, float scale) {
  std::vector<QueryTask> tasks;
  std::vector<int64_t> cost;
  query_tile_tasks(d, rg, causal, kBlockMB, tasks, cost);
  run_balanced(balance(cost, at::get_num_threads()), [&](int64_t, const std::vector<int64_t>& mine) {
    BwdTiles<T> tiles(dout, q, k, v, d);
    RowStats st;
    for (const int64_t task : mine) {
      const Seq& sq = rg.seqs[tasks[task].s];
      const int64_t h = tasks[task].h, b = sq.b, hk = h / d.group(), i0 = tasks[task].i0;
      const int64_t rows = std::min(kBlockMB, sq.nq - i0), row0 = rg.row0(d, sq, h) + i0;
      st.reset(rows);
      tiles.load_queries(row0, rows);
      const int64_t kend = sq.limit(causal, i0 + rows - 1);
      for (int64_t j0 = 0; j0 < kend; j0 += kBlockNB) {
        const int64_t cols = std::min(kBlockNB, sq.nk - j0);
        if (rg.allowed(b, sq.k0 + j0, cols) == 0) continue;  // skipped by the main pass too
        const bool* keep = rg.keep(b, sq.k0 + j0, cols);
        tiles.load_keys((b * d.Hk + hk) * d.Nk + sq.k0 + j0, cols);
        tiles.scores(rows, cols, scale);
        for (int64_t r = 0; r < rows; ++r) {
          float* p = tiles.P.data() + r * kBlockNB;
          mask_row(p, j0, cols, sq.limit(causal, i0 + r), tau ? tau + row0 + r : nullptr, keep);
          st.add(r, p, nullptr, tiles.dP.data() + r * kBlockNB, cols);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        st.finish(r, lse + row0 + r, delta + row0 + r);
        if (std::isnan(lse_fwd[row0 + r])) lse[row0 + r] = kNaN;
      }
    }
  });
}

// One backward task: (sequence, kv head, key tile); it walks the query tiles of its sequence. Cost:
// keys times the query rows that can see them, over the GQA group.
struct BwdTask {
  int32_t s, hk;
  int64_t j0;
};

template <typename T>
void bwd_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                const float* tau, float* const* dq_acc, int64_t n_acc, T* dk, T* dv, const Dims& d, const Ragged& rg,
                bool causal, float scale) {
  std::vector<BwdTask> tasks;
  std::vector<int64_t> cost;
  for (int32_t s = 0; s < static_cast<int32_t>(rg.seqs.size()); ++s) {
    const Seq& sq = rg.seqs[s];
    for (int64_t j0 = 0; j0 < sq.nk; j0 += kBlockNB) {
      const int64_t cols = std::min(kBlockNB, sq.nk - j0);
      if (rg.allowed(sq.b, sq.k0 + j0, cols) == 0) continue;  // padding only: dk, dv stay 0
      const int64_t i_first = first_query(sq, causal, j0);
      for (int32_t hk = 0; hk < d.Hk; ++hk) {
        tasks.push_back({s, hk, j0});
        cost.push_back(cols * ((sq.nq - i_first) * d.group() + 16));
      }
    }
  }
  run_balanced(balance(cost, n_acc), [&](int64_t l, const std::vector<int64_t>& mine) {
    float* dq_mine = dq_acc[l];
    BwdTiles<T> tiles(dout, q, k, v, d);
    std::vector<float> dK(kBlockNB * d.D), dV(kBlockNB * d.Dv);
    for (const int64_t task : mine) {
      const Seq& sq = rg.seqs[tasks[task].s];
      const int64_t hk = tasks[task].hk, b = sq.b, j0 = tasks[task].j0, cols = std::min(kBlockNB, sq.nk - j0);
      const int64_t krow = (b * d.Hk + hk) * d.Nk + sq.k0 + j0;
      const bool* keep = rg.keep(b, sq.k0 + j0, cols);
      tiles.load_keys(krow, cols);
      std::fill(dK.begin(), dK.end(), 0.0f);
      std::fill(dV.begin(), dV.end(), 0.0f);
      const int64_t i_first = first_query(sq, causal, j0);
      for (int64_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
        const int64_t row0 = rg.row0(d, sq, h);
        for (int64_t i0 = (i_first / kBlockMB) * kBlockMB; i0 < sq.nq; i0 += kBlockMB) {
          const int64_t rows = std::min(kBlockMB, sq.nq - i0);
          tiles.load_queries(row0 + i0, rows);
          tiles.scores(rows, cols, scale);
          for (int64_t r = 0; r < rows; ++r) {
            float* p = tiles.P.data() + r * kBlockNB;
            float* dp = tiles.dP.data() + r * kBlockNB;
            const int64_t i = i0 + r;
            const float L = lse[row0 + i], dl = delta[row0 + i];
            if (std::isnan(L)) {  // a NaN row of the forward: NaN gradients through every allowed key
              nan_row_grad(p, dp, cols, sq.limit(causal, i) - j0, keep);
              continue;
            }
            mask_row(p, j0, cols, sq.limit(causal, i), tau ? tau + row0 + i : nullptr, keep);
            for (int64_t c = 0; c < cols; ++c) {
              const float pv = fast_exp(p[c] - L);  // L = +inf on empty rows -> 0
              p[c] = pv;
              dp[c] = pv * (dp[c] - dl);  // dS (scale applied in the GEMMs below)
            }
          }
          gemm_tn(cols, d.Dv, rows, 1.0f, tiles.P.data(), kBlockNB, tiles.dO, d.Dv, 1.0f, dV.data(), d.Dv);
          gemm_tn(cols, d.D, rows, scale, tiles.dP.data(), kBlockNB, tiles.Q, d.D, 1.0f, dK.data(), d.D);
          gemm_nn(rows, d.D, cols, scale, tiles.dP.data(), kBlockNB, tiles.kt.K, d.D, 1.0f, dq_mine + (row0 + i0) * d.D, d.D);
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        store_row(dK.data() + c * d.D, d.D, dk + (krow + c) * d.D);
        store_row(dV.data() + c * d.Dv, d.Dv, dv + (krow + c) * d.Dv);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> softmax_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, const at::Tensor& tau,
                                                             bool causal, double scale, const RaggedArgs& ra) {
  const Dims d = check_kv_view_inputs("softmax_attention_fwd", q, k, v);  // k, v may be KV-cache views
  check_tau("softmax_attention_fwd", tau, q);
  const Ragged rg = make_ragged("softmax_attention_fwd", d, ra);
  auto out = at::empty({d.B, d.Hq, d.Nq, d.Dv}, q.options());
  auto lse = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  const float* tau_p = tau.numel() ? tau.data_ptr<float>() : nullptr;
  dispatch_float_types(q.scalar_type(), "softmax_attention_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    fwd_kernel<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), tau_p,
                         out.data_ptr<scalar_t>(), lse.data_ptr<float>(), d, rg, causal, static_cast<float>(scale));
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& tau, bool causal, double scale,
    const RaggedArgs& ra) {
  check_attention_inputs("softmax_attention_bwd", q, k, v);
  check_tau("softmax_attention_bwd", tau, q);
  const Dims d = dims_of(q, k, v);
  const Ragged rg = make_ragged("softmax_attention_bwd", d, ra);
  TORCH_CHECK(dout.sizes() == out.sizes() && out.size(3) == d.Dv && dout.scalar_type() == q.scalar_type() &&
                  dout.is_contiguous() && out.is_contiguous(),
              "softmax_attention_bwd: dout and out must be contiguous (B, Hq, Nq, Dv) in q's dtype");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.numel() == d.B * d.Hq * d.Nq,
              "softmax_attention_bwd: lse must be a contiguous float32 (B, Hq, Nq) tensor");
  // Key tiles that are all padding are skipped: their dk, dv are zeros.
  auto dk = ra.dense() ? at::empty_like(k) : at::zeros_like(k), dv = ra.dense() ? at::empty_like(v) : at::zeros_like(v);
  if (q.numel() == 0 || k.numel() == 0) {
    return {at::zeros_like(q), dk.zero_(), dv.zero_()};
  }
  // lse_i and delta_i = sum_j P_ij dP_ij from the backward's own scores (row_stats.h), not the
  // forward's lse and dO . O.
  auto lse_own = at::empty_like(lse), delta = at::empty_like(lse);
  // One fp32 dQ accumulator per thread (thread 0 writes the result itself; the others' are added
  // into it at the end): linear in N, and no atomics or locks in the inner loop.
  const int64_t n_threads = at::get_num_threads();
  auto dq32 = at::zeros_like(q, q.options().dtype(at::kFloat));
  auto dq_extra = at::zeros({n_threads - 1, d.B, d.Hq, d.Nq, d.D}, q.options().dtype(at::kFloat));
  std::vector<float*> dq_acc{dq32.data_ptr<float>()};
  for (int64_t t = 1; t < n_threads; ++t) dq_acc.push_back(dq_extra.data_ptr<float>() + (t - 1) * q.numel());
  const float* tau_p = tau.numel() ? tau.data_ptr<float>() : nullptr;
  dispatch_float_types(q.scalar_type(), "softmax_attention_bwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    row_stats_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                               v.data_ptr<scalar_t>(), lse.data_ptr<float>(), tau_p, lse_own.data_ptr<float>(),
                               delta.data_ptr<float>(), d, rg, causal, static_cast<float>(scale));
    bwd_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                         v.data_ptr<scalar_t>(), lse_own.data_ptr<float>(), delta.data_ptr<float>(), tau_p,
                         dq_acc.data(), n_threads, dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), d, rg, causal,
                         static_cast<float>(scale));
  });
  for (int64_t t = 0; t + 1 < n_threads; ++t) dq32.add_(dq_extra[t]);
  return {dq32.to(q.scalar_type()), dk, dv};
}

}  // namespace fastattn::cpu
