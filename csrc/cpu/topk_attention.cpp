// Top-K threshold on the CPU: see topk_attention.h.
//
// Selection: per query row a candidate buffer holding at most 2K values >= the current threshold t.
// A score enters only if it beats t; when the buffer fills, nth_element keeps its K largest and t
// becomes the K-th of them (a new score equal to t cannot change the K-th largest). Amortized O(1)
// per score on top of the tile GEMM that produces the scores; memory O(K) per row.
// Key splitting: with few (batch, head, query-tile) tasks (decoding), the keys are split so every
// thread has work; each split returns its candidates (its own K largest) and a merge selects the
// K-th largest of their union, which is the K-th largest overall.
#include "cpu/topk_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <vector>

#include "common/relu.h"
#include "cpu/attention_common.h"

namespace fastattn::cpu {
namespace {

constexpr int64_t kBM = 64, kBN = 256;
// tau is lowered by kTieMargin * max(1, |tau|) so the key defining it survives when another kernel
// recomputes its score with another summation order; keys that close to tau are the near-ties
// SPEC §3 lets backends select differently. Same margin as kernels/topk_attention.py.
constexpr float kTieMargin = 2e-5f;

inline float with_margin(float t) { return t == -kInf ? t : t - kTieMargin * std::max(1.0f, std::abs(t)); }

struct RowTopK {
  int64_t K;
  float t = -kInf;  // current threshold once K values are held
  int64_t allowed = 0;
  std::vector<float> buf;
  explicit RowTopK(int64_t k) : K(k) { buf.reserve(2 * k + 1); }
  void shrink() {  // keep the K largest, threshold = the K-th largest
    std::nth_element(buf.begin(), buf.begin() + (K - 1), buf.end(), std::greater<float>());
    buf.resize(K);
    t = *std::min_element(buf.begin(), buf.end());
  }
  // One tile row: `n_allowed` of its n scores are allowed (masked ones are -inf, never > t).
  void push_row(const float* s, int64_t n, int64_t n_allowed) {
    allowed += n_allowed;
    float tl = t;  // a local copy keeps the hot compare in a register (push_back may alias t)
    for (int64_t c = 0; c < n; ++c) {
      if (s[c] > tl) {  // t stays -inf until the buffer first fills: then everything allowed enters
        buf.push_back(s[c]);
        if (static_cast<int64_t>(buf.size()) >= 2 * K) {
          shrink();
          tl = t;
        }
      }
    }
  }
  // The candidates: at most K values, the largest seen.
  void finish() {
    if (static_cast<int64_t>(buf.size()) > K) shrink();
  }
};

template <typename T>
void threshold_kernel(const T* q, const T* k, const float* gamma, const float* slopes, float* tau, const Dims& d,
                      bool causal, float scale, int64_t K) {
  const int64_t n_qt = (d.Nq + kBM - 1) / kBM;
  const int64_t tasks = d.B * d.Hq * n_qt;
  const int64_t threads = at::get_num_threads();
  // Split keys when there are fewer tasks than 4 per thread and the rows are long.
  // FASTATTN_TOPK_SPLITS=1 turns splitting off (the benchmark's "without key splitting" baseline).
  const char* env = std::getenv("FASTATTN_TOPK_SPLITS");
  int64_t splits = 1;
  if (tasks < 4 * threads && d.Nk >= 4 * kBN) splits = std::min<int64_t>((4 * threads + tasks - 1) / tasks, d.Nk / kBN);
  if (env != nullptr && std::atoi(env) >= 1) splits = std::min<int64_t>(std::atoi(env), std::max<int64_t>(1, d.Nk / kBN));
  const int64_t span = (d.Nk + splits - 1) / splits;
  // Candidates of every (task, split, row): K floats + a count of allowed keys and of candidates.
  std::vector<float> cand(splits > 1 ? tasks * splits * kBM * K : 0);
  std::vector<int64_t> n_cand(splits > 1 ? tasks * splits * kBM : 0), n_allowed(n_cand.size());
  at::parallel_for(0, tasks * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> S(kBM * kBN), qbuf(kBM * d.D), kbuf(kBN * d.D);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t split = job % splits, task = job / splits;
      const int64_t t = task % n_qt, bh = task / n_qt, h = bh % d.Hq, b = bh / d.Hq, hk = h / d.group();
      const int64_t i0 = t * kBM, rows = std::min(kBM, d.Nq - i0);
      const float* Q = tile_ptr(q + (bh * d.Nq + i0) * d.D, rows, d.D, qbuf.data());
      const T* kh = k + (b * d.Hk + hk) * d.Nk * d.D;
      const float slope = slopes ? slopes[h] : 0.0f;
      std::vector<RowTopK> sel(rows, RowTopK(K));
      const int64_t lo = split * span;
      const int64_t hi = std::min(key_limit(d, causal, i0 + rows - 1), std::min(d.Nk, lo + span));
      for (int64_t j0 = lo; j0 < hi; j0 += kBN) {
        const int64_t cols = std::min(kBN, hi - j0);
        gemm_nt(rows, cols, d.D, gamma[h] * scale, Q, d.D, tile_ptr(kh + j0 * d.D, cols, d.D, kbuf.data()), d.D,
                0.0f, S.data(), kBN);
        for (int64_t r = 0; r < rows; ++r) {
          float* s = S.data() + r * kBN;
          const int64_t i_abs = i0 + r + d.offset();
          if (slopes)
            for (int64_t c = 0; c < cols; ++c) s[c] = relu_score(s[c], 1.0f, slope, i_abs, j0 + c);
          const int64_t limit = key_limit(d, causal, i0 + r);
          mask_row(s, j0, cols, limit, nullptr);
          sel[r].push_row(s, cols, std::clamp<int64_t>(limit - j0, 0, cols));
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        RowTopK& rs = sel[r];
        rs.finish();
        if (splits == 1) {
          // After finish() the buffer holds the K largest whenever K keys were allowed.
          tau[bh * d.Nq + i0 + r] = rs.allowed >= K ? with_margin(*std::min_element(rs.buf.begin(), rs.buf.end())) : -kInf;
        } else {
          const int64_t slot = (task * splits + split) * kBM + r;
          std::copy(rs.buf.begin(), rs.buf.end(), cand.begin() + slot * K);
          n_cand[slot] = static_cast<int64_t>(rs.buf.size());
          n_allowed[slot] = rs.allowed;
        }
      }
    }
  });
  if (splits == 1) return;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {  // merge the splits' candidates
    std::vector<float> all;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task % n_qt, bh = task / n_qt;
      const int64_t i0 = t * kBM, rows = std::min(kBM, d.Nq - i0);
      for (int64_t r = 0; r < rows; ++r) {
        all.clear();
        int64_t allowed = 0;
        for (int64_t sp = 0; sp < splits; ++sp) {
          const int64_t slot = (task * splits + sp) * kBM + r;
          all.insert(all.end(), cand.begin() + slot * K, cand.begin() + slot * K + n_cand[slot]);
          allowed += n_allowed[slot];
        }
        float v = -kInf;
        if (allowed >= K) {
          std::nth_element(all.begin(), all.begin() + (K - 1), all.end(), std::greater<float>());
          v = all[K - 1];
        }
        tau[bh * d.Nq + i0 + r] = with_margin(v);
      }
    }
  });
}

}  // namespace

at::Tensor topk_attention_threshold_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& gamma,
                                        const at::Tensor& alibi_slopes, bool causal, double scale, int64_t topk) {
  const char* op = "topk_attention_threshold";
  check_attention_inputs(op, q, k, k);
  check_head_param(op, "gamma", gamma, q.size(1), false);
  check_head_param(op, "alibi_slopes", alibi_slopes, q.size(1), true);
  TORCH_CHECK(topk >= 1 && topk <= 4096, op, ": topk must be in [1, 4096] on the cpu backend, got ", topk);
  const Dims d{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), q.size(3)};
  auto tau = at::empty({d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));
  if (tau.numel() == 0) return tau;
  if (d.Nk == 0) return tau.fill_(-kInf);
  dispatch_float_types(q.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    threshold_kernel<T>(q.data_ptr<T>(), k.data_ptr<T>(), gamma.data_ptr<float>(),
                        alibi_slopes.numel() ? alibi_slopes.data_ptr<float>() : nullptr, tau.data_ptr<float>(), d,
                        causal, static_cast<float>(scale), topk);
  });
  return tau;
}

}  // namespace fastattn::cpu
