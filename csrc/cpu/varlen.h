// Ragged batches for the CPU kernels (docs/semantics.md §5, CONTRACTS §1): padding masks and packed variable-length
// sequences as a list of independent problems, and a balanced schedule of their tiles over the threads.
//
// A `Seq` is one attention problem: query rows [q0, q0 + nq) and key rows [k0, k0 + nk) of batch
// element b, with its own bottom-right alignment (i' = i + nk - nq, i and j local). A dense or padded
// batch is one Seq per batch element; cu_seqlens (B = 1) give one per sequence. A key padding mask
// removes keys from every row of its batch element without re-indexing them.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "cpu/attention_common.h"

namespace fastattn::cpu {

struct Seq {
  int64_t b, q0, nq, k0, nk;
  int64_t offset() const { return nk - nq; }  // i' = i + offset
  // Keys query row i (local) may see before padding and top-K: j < limit.
  int64_t limit(bool causal, int64_t i) const { return causal ? std::clamp<int64_t>(i + offset() + 1, 0, nk) : nk; }
};

struct Ragged {
  std::vector<Seq> seqs;
  bool varlen = false;           // cu_seqlens given (then B == 1)
  const bool* kpm = nullptr;     // (B, Nk) key_padding_mask, True = the key exists; null: none
  std::vector<int32_t> kcount;   // with kpm: (B, Nk + 1) running count of allowed keys per batch element
  int64_t Nk = 0;

  // Allowed keys of batch element b among [j, j + n) (global key indices): n without a mask.
  int64_t allowed(int64_t b, int64_t j, int64_t n) const {
    if (!kpm) return n;
    const int32_t* c = kcount.data() + b * (Nk + 1);
    return c[j + n] - c[j];
  }
  // The padding mask of keys [j, j + n) of batch element b, or null when all of them exist.
  const bool* keep(int64_t b, int64_t j, int64_t n) const {
    return kpm && allowed(b, j, n) < n ? kpm + b * Nk + j : nullptr;
  }
  // First row index (in (B, H, Nq) row order) of head h of sequence s.
  int64_t row0(const Dims& d, const Seq& s, int64_t h) const { return (s.b * d.Hq + h) * d.Nq + s.q0; }
};

// The ragged arguments of a kernel call (CONTRACTS §1; the max_seqlen hints are not needed here).
struct RaggedArgs {
  std::optional<at::Tensor> key_padding_mask, cu_seqlens_q, cu_seqlens_k;
  bool dense() const { return !key_padding_mask && !cu_seqlens_q && !cu_seqlens_k; }
};

// The sequences of a call, after checking the ragged arguments (TORCH_CHECK naming them; the op layer
// refuses bad ones first). Dense: one Seq per batch element.
Ragged make_ragged(const char* op, const Dims& d, const RaggedArgs& ra);

// Static balanced schedule: task t (cost[t] > 0) goes to the least loaded of `n` lists, heaviest
// first (LPT). Depends only on the costs and n, so per-thread accumulation orders repeat exactly.
std::vector<std::vector<int64_t>> balance(const std::vector<int64_t>& cost, int64_t n);

// Runs f(l, lists[l]) for every list, each on one thread (at::parallel_for over the lists; with as
// many lists as threads, one each). `l` indexes per-thread accumulators; f allocates its scratch once.
template <typename F>
void run_balanced(const std::vector<std::vector<int64_t>>& lists, F&& f) {
  at::parallel_for(0, static_cast<int64_t>(lists.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) f(l, lists[l]);
  });
}

}  // namespace fastattn::cpu
