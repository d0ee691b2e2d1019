// Ragged batches for the CPU kernels: see varlen.h.
#include "cpu/varlen.h"

#include <ATen/ATen.h>

#include <numeric>
#include <queue>

namespace fastattn::cpu {

namespace {

// The offsets of cu_seqlens_*, checked: int32, contiguous (S + 1,), from 0, non-decreasing, to `total`.
const int32_t* check_offsets(const char* op, const char* name, const at::Tensor& cu, int64_t total) {
  TORCH_CHECK(cu.device().is_cpu() && cu.scalar_type() == at::kInt && cu.dim() == 1 && cu.is_contiguous() &&
                  cu.numel() >= 1,
              op, ": ", name, " must be a contiguous int32 CPU tensor of shape (S + 1,), got ", cu.sizes(), " ",
              cu.scalar_type());
  const int32_t* c = cu.data_ptr<int32_t>();
  TORCH_CHECK(c[0] == 0, op, ": ", name, " must start at 0, got ", c[0]);
  for (int64_t s = 1; s < cu.numel(); ++s)
    TORCH_CHECK(c[s] >= c[s - 1], op, ": ", name, " must be non-decreasing, got ", c[s - 1], " then ", c[s]);
  TORCH_CHECK(c[cu.numel() - 1] == total, op, ": the last offset of ", name, " must equal the packed length ",
              total, ", got ", c[cu.numel() - 1]);
  return c;
}

}  // namespace

Ragged make_ragged(const char* op, const Dims& d, const RaggedArgs& ra) {
  const auto& [key_padding_mask, cu_seqlens_q, cu_seqlens_k] = ra;
  Ragged rg;
  rg.Nk = d.Nk;
  TORCH_CHECK(cu_seqlens_q.has_value() == cu_seqlens_k.has_value(), op,
              ": cu_seqlens_q and cu_seqlens_k are given together or not at all");
  if (cu_seqlens_q.has_value()) {
    TORCH_CHECK(!key_padding_mask.has_value(), op, ": key_padding_mask and cu_seqlens cannot be combined");
    TORCH_CHECK(d.B == 1, op, ": with cu_seqlens the batch size must be 1 (sequences packed along N), got ", d.B);
    TORCH_CHECK(cu_seqlens_q->numel() == cu_seqlens_k->numel(), op,
                ": cu_seqlens_q and cu_seqlens_k must have the same length, got ", cu_seqlens_q->numel(), " and ",
                cu_seqlens_k->numel());
    const int32_t* cq = check_offsets(op, "cu_seqlens_q", *cu_seqlens_q, d.Nq);
    const int32_t* ck = check_offsets(op, "cu_seqlens_k", *cu_seqlens_k, d.Nk);
    rg.varlen = true;
    for (int64_t s = 0; s + 1 < cu_seqlens_q->numel(); ++s)
      rg.seqs.push_back({0, cq[s], cq[s + 1] - cq[s], ck[s], ck[s + 1] - ck[s]});
    return rg;
  }
  for (int64_t b = 0; b < d.B; ++b) rg.seqs.push_back({b, 0, d.Nq, 0, d.Nk});
  if (key_padding_mask.has_value()) {
    const at::Tensor& m = *key_padding_mask;
    TORCH_CHECK(m.device().is_cpu() && m.scalar_type() == at::kBool && m.dim() == 2 && m.size(0) == d.B &&
                    m.size(1) == d.Nk && m.is_contiguous(),
                op, ": key_padding_mask must be a contiguous bool CPU tensor of shape (B, Nk) = (", d.B, ", ", d.Nk,
                "), got ", m.sizes(), " ", m.scalar_type());
    rg.kpm = m.data_ptr<bool>();
    rg.kcount.assign(d.B * (d.Nk + 1), 0);
    for (int64_t b = 0; b < d.B; ++b) {
      int32_t* c = rg.kcount.data() + b * (d.Nk + 1);
      for (int64_t j = 0; j < d.Nk; ++j) c[j + 1] = c[j] + rg.kpm[b * d.Nk + j];
    }
  }
  return rg;
}

std::vector<std::vector<int64_t>> balance(const std::vector<int64_t>& cost, int64_t n) {
  n = std::max<int64_t>(n, 1);
  std::vector<int64_t> order;
  for (int64_t t = 0; t < static_cast<int64_t>(cost.size()); ++t)
    if (cost[t] > 0) order.push_back(t);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  std::vector<std::vector<int64_t>> lists(n);
  using Load = std::pair<int64_t, int64_t>;  // (load, list): the least loaded, lowest index first
  std::priority_queue<Load, std::vector<Load>, std::greater<Load>> heap;
  for (int64_t l = 0; l < n; ++l) heap.push({0, l});
  for (const int64_t t : order) {
    auto [load, l] = heap.top();
    heap.pop();
    lists[l].push_back(t);
    heap.push({load + cost[t], l});
  }
  return lists;
}

}  // namespace fastattn::cpu
