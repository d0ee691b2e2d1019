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
#include <vector>

#include "cpu/attention_common.h"

namespace fastattn::cpu {
namespace {

// Tile sizes, tuned at B=1, H=8, D=64, fp32 on 2 cores (N = 1k, 4k; see the report): bigger tiles
// give MKL larger GEMMs and amortize the per-row softmax bookkeeping; the fp32 scratch per thread
// (S: kBlockM x kBlockN = 256 KB forward) still sits in L2.
constexpr int64_t kBlockM = 128;  // query rows per task (fwd)
constexpr int64_t kBlockN = 512;  // keys per tile (fwd)
constexpr int64_t kBlockMB = 128; // query rows per inner step (bwd)
constexpr int64_t kBlockNB = 128; // keys per task (bwd)

// Causal work grows along the query tiles (forward) and shrinks along the key tiles (backward), and
// at::parallel_for hands each thread one contiguous range of task indices. Visiting tiles in the
// order 0, n-1, 1, n-2, ... puts heavy and light tiles in every range, so the two threads stay
// balanced even when B * H is 1. A bijection of [0, n).
inline int64_t zigzag(int64_t idx, int64_t n) { return (idx % 2 == 0) ? idx / 2 : n - 1 - idx / 2; }

template <typename T>
void fwd_kernel(const T* q, const T* k, const T* v, const float* tau, T* out, float* lse, const Dims& d,
                bool causal, float scale) {
  const int64_t n_qt = (d.Nq + kBlockM - 1) / kBlockM;
  at::parallel_for(0, d.B * d.Hq * n_qt, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> S(kBlockM * kBlockN), acc(kBlockM * d.Dv), m(kBlockM), l(kBlockM);
    std::vector<float> qbuf(std::is_same_v<T, float> ? 0 : kBlockM * d.D);
    std::vector<float> kbuf(std::is_same_v<T, float> ? 0 : kBlockN * d.D);
    std::vector<float> vbuf(std::is_same_v<T, float> ? 0 : kBlockN * d.Dv);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = zigzag(task % n_qt, n_qt), bh = task / n_qt, h = bh % d.Hq, b = bh / d.Hq;
      const int64_t hk = h / d.group();
      const int64_t i0 = t * kBlockM, rows = std::min(kBlockM, d.Nq - i0);
      const T* qt = q + ((b * d.Hq + h) * d.Nq + i0) * d.D;
      const T* kh = k + d.k_off(b, hk);
      const T* vh = v + d.v_off(b, hk);
      const float* tau_t = tau ? tau + (b * d.Hq + h) * d.Nq + i0 : nullptr;
      const float* Q = tile_ptr(qt, rows, d.D, qbuf.data());
      std::fill(m.begin(), m.end(), -kInf);
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      const int64_t kend = key_limit(d, causal, i0 + rows - 1);  // last row sees the most keys
      for (int64_t j0 = 0; j0 < kend; j0 += kBlockN) {
        const int64_t cols = std::min(kBlockN, kend - j0);
        const float* K = tile_ptr(kh + j0 * d.D, cols, d.D, kbuf.data());
        gemm_nt(rows, cols, d.D, scale, Q, d.D, K, d.D, 0.0f, S.data(), kBlockN);
        for (int64_t r = 0; r < rows; ++r) {
          float* s = S.data() + r * kBlockN;
          const int64_t limit = key_limit(d, causal, i0 + r);
          if (limit < j0 + cols || tau_t) mask_row(s, j0, cols, limit, tau_t ? tau_t + r : nullptr);
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
        const float* V = tile_ptr(vh + j0 * d.Dv, cols, d.Dv, vbuf.data());
        gemm_nn(rows, d.Dv, cols, 1.0f, S.data(), kBlockN, V, d.Dv, 1.0f, acc.data(), d.Dv);
      }
      T* ot = out + ((b * d.Hq + h) * d.Nq + i0) * d.Dv;
      float* lt = lse + (b * d.Hq + h) * d.Nq + i0;
      for (int64_t r = 0; r < rows; ++r) {
        float* a = acc.data() + r * d.Dv;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int64_t c = 0; c < d.Dv; ++c) a[c] *= inv;
        store_row(a, d.Dv, ot + r * d.Dv);
        lt[r] = l[r] > 0.0f ? m[r] + std::log(l[r]) : kInf;
      }
    }
  });
}

template <typename T>
void bwd_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                const float* tau, float* const* dq_acc, int64_t n_acc, T* dk, T* dv, const Dims& d, bool causal,
                float scale) {
  const int64_t n_kt = (d.Nk + kBlockNB - 1) / kBlockNB;
  at::parallel_for(0, d.B * d.Hk * n_kt, 1, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    TORCH_CHECK(tid >= 0 && tid < n_acc, "softmax_attention_bwd: thread ", tid, " has no dq buffer (", n_acc, ")");
    float* dq_mine = dq_acc[tid];
    std::vector<float> P(kBlockMB * kBlockNB), dP(kBlockMB * kBlockNB);
    std::vector<float> dK(kBlockNB * d.D), dV(kBlockNB * d.Dv);
    std::vector<float> qbuf(kBlockMB * d.D), obuf(kBlockMB * d.Dv), kbuf(kBlockNB * d.D), vbuf(kBlockNB * d.Dv);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t jt = zigzag(task % n_kt, n_kt), bhk = task / n_kt, hk = bhk % d.Hk, b = bhk / d.Hk;
      const int64_t j0 = jt * kBlockNB, cols = std::min(kBlockNB, d.Nk - j0);
      const float* K = tile_ptr(k + ((b * d.Hk + hk) * d.Nk + j0) * d.D, cols, d.D, kbuf.data());
      const float* V = tile_ptr(v + ((b * d.Hk + hk) * d.Nk + j0) * d.Dv, cols, d.Dv, vbuf.data());
      std::fill(dK.begin(), dK.end(), 0.0f);
      std::fill(dV.begin(), dV.end(), 0.0f);
      // Causal: query i sees key j0 iff i + offset >= j0.
      const int64_t i_first = causal ? std::clamp<int64_t>(j0 - d.offset(), 0, d.Nq) : 0;
      for (int64_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
        const int64_t row0 = (b * d.Hq + h) * d.Nq;
        for (int64_t i0 = (i_first / kBlockMB) * kBlockMB; i0 < d.Nq; i0 += kBlockMB) {
          const int64_t rows = std::min(kBlockMB, d.Nq - i0);
          const float* Q = tile_ptr(q + (row0 + i0) * d.D, rows, d.D, qbuf.data());
          const float* dO = tile_ptr(dout + (row0 + i0) * d.Dv, rows, d.Dv, obuf.data());
          gemm_nt(rows, cols, d.D, scale, Q, d.D, K, d.D, 0.0f, P.data(), kBlockNB);
          gemm_nt(rows, cols, d.Dv, 1.0f, dO, d.Dv, V, d.Dv, 0.0f, dP.data(), kBlockNB);
          for (int64_t r = 0; r < rows; ++r) {
            float* p = P.data() + r * kBlockNB;
            float* dp = dP.data() + r * kBlockNB;
            const int64_t i = i0 + r;
            mask_row(p, j0, cols, key_limit(d, causal, i), tau ? tau + row0 + i : nullptr);
            const float L = lse[row0 + i], dl = delta[row0 + i];
            for (int64_t c = 0; c < cols; ++c) {
              const float pv = fast_exp(p[c] - L);  // L = +inf on empty rows -> 0
              p[c] = pv;
              dp[c] = pv * (dp[c] - dl);  // dS (scale applied in the GEMMs below)
            }
          }
          gemm_tn(cols, d.Dv, rows, 1.0f, P.data(), kBlockNB, dO, d.Dv, 1.0f, dV.data(), d.Dv);
          gemm_tn(cols, d.D, rows, scale, dP.data(), kBlockNB, Q, d.D, 1.0f, dK.data(), d.D);
          gemm_nn(rows, d.D, cols, scale, dP.data(), kBlockNB, K, d.D, 1.0f, dq_mine + (row0 + i0) * d.D, d.D);
        }
      }
      T* dkt = dk + ((b * d.Hk + hk) * d.Nk + j0) * d.D;
      T* dvt = dv + ((b * d.Hk + hk) * d.Nk + j0) * d.Dv;
      for (int64_t c = 0; c < cols; ++c) {
        store_row(dK.data() + c * d.D, d.D, dkt + c * d.D);
        store_row(dV.data() + c * d.Dv, d.Dv, dvt + c * d.Dv);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> softmax_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, const at::Tensor& tau,
                                                             bool causal, double scale) {
  const Dims d = check_kv_view_inputs("softmax_attention_fwd", q, k, v);  // k, v may be KV-cache views
  check_tau("softmax_attention_fwd", tau, q);
  auto out = at::empty({d.B, d.Hq, d.Nq, d.Dv}, q.options());
  auto lse = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  const float* tau_p = tau.numel() ? tau.data_ptr<float>() : nullptr;
  dispatch_float_types(q.scalar_type(), "softmax_attention_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    fwd_kernel<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), tau_p,
                         out.data_ptr<scalar_t>(), lse.data_ptr<float>(), d, causal, static_cast<float>(scale));
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& tau, bool causal, double scale) {
  check_attention_inputs("softmax_attention_bwd", q, k, v);
  check_tau("softmax_attention_bwd", tau, q);
  const Dims d = dims_of(q, k, v);
  TORCH_CHECK(dout.sizes() == out.sizes() && out.size(3) == d.Dv && dout.scalar_type() == q.scalar_type() &&
                  dout.is_contiguous() && out.is_contiguous(),
              "softmax_attention_bwd: dout and out must be contiguous (B, Hq, Nq, Dv) in q's dtype");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.numel() == d.B * d.Hq * d.Nq,
              "softmax_attention_bwd: lse must be a contiguous float32 (B, Hq, Nq) tensor");
  auto dk = at::empty_like(k), dv = at::empty_like(v);
  if (q.numel() == 0 || k.numel() == 0) {
    return {at::zeros_like(q), dk.zero_(), dv.zero_()};
  }
  // delta_i = dO_i . O_i (fp32): the softmax backward's row term.
  const auto delta = (dout.to(at::kFloat) * out.to(at::kFloat)).sum(-1).contiguous();
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
    bwd_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                         v.data_ptr<scalar_t>(), lse.data_ptr<float>(), delta.data_ptr<float>(), tau_p,
                         dq_acc.data(), n_threads, dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), d, causal,
                         static_cast<float>(scale));
  });
  for (int64_t t = 0; t + 1 < n_threads; ++t) dq32.add_(dq_extra[t]);
  return {dq32.to(q.scalar_type()), dk, dv};
}

}  // namespace fastattn::cpu
