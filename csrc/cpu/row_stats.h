// Row statistics of the softmax-family CPU backwards (softmax, top-K, adaptive span), from the
// backward's own scores (issue 21).
//
// The backward needs, per query row i, lse_i = log sum_j w_ij exp(s_ij) and
// delta_i = sum_j p_ij dp_ij with p_ij = w_ij exp(s_ij - lse_i) (w: the span factor m, else 1).
// Taking lse from the forward (other GEMM shapes, so scores that differ in the last bit) or
// delta = dO . O (O rounded to the output dtype) leaves a residue in rows whose score gradients
// cancel to ~0: in a one-key row, exp(s_bwd - lse_fwd) != 1 gives dS ~ 1e-7 |s| instead of 0, and
// the rounded O gives delta != dp. A pre-pass that issues exactly the main pass's tile GEMMs (same
// shapes, operands and order, so bitwise the same s and dp) and accumulates both online makes
// p_ij exactly 1 and delta_i exactly dp_ij in a one-key row: its dS is exactly 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/tile_gemm.h"

namespace fastattn::cpu {

// Online (max, sum, weighted dp sum) per row of a query tile, over its key tiles.
class RowStats {
 public:
  void reset(int64_t rows) {
    m_.assign(rows, -kInf);
    l_.assign(rows, 0.0f);
    acc_.assign(rows, 0.0f);
  }

  // Adds n keys of row r: scores s (masked keys -inf), weights w (nullptr: all 1), dp = dO_i . v_j.
  void add(int64_t r, const float* s, const float* w, const float* dp, int64_t n) {
    const float mx = row_max(s, n);
    if (mx == -kInf) return;  // nothing allowed in this tile
    const float m_new = std::max(m_[r], mx);
    float sum[kLanes] = {}, dot[kLanes] = {};
    int64_t c = 0;
    for (; c + kLanes <= n; c += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) {
        const float e = fast_exp(s[c + j] - m_new) * (w ? w[c + j] : 1.0f);
        sum[j] += e;
        dot[j] += e * dp[c + j];
      }
    for (; c < n; ++c) {
      const float e = fast_exp(s[c] - m_new) * (w ? w[c] : 1.0f);
      sum[0] += e;
      dot[0] += e * dp[c];
    }
    const float alpha = fast_exp(m_[r] - m_new);  // 0 when m was -inf
    l_[r] = l_[r] * alpha + row_sum(sum, kLanes);
    acc_[r] = acc_[r] * alpha + row_sum(dot, kLanes);
    m_[r] = m_new;
  }

  // Row r's lse (+inf without an allowed key) and delta times `gain` (the span gate g_i).
  void finish(int64_t r, float* lse, float* delta, float gain = 1.0f) const {
    *lse = l_[r] > 0.0f ? m_[r] + std::log(l_[r]) : kInf;
    *delta = l_[r] > 0.0f ? gain * (acc_[r] / l_[r]) : 0.0f;
  }

 private:
  std::vector<float> m_, l_, acc_;
};

}  // namespace fastattn::cpu
