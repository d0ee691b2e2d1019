// The problem every torch-free CUDA launcher takes besides its own pointers: tensor sizes and the
// ragged-batch arguments of CONTRACTS §1. Host-compilable (the torch glue fills it).
// Layout convention of every kernel: q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv), out
// (B, Hq, Nq, Dv), row statistics (B, Hq, Nq), all contiguous; packed sequences (cu_seqlens) have
// B = 1 and Nq / Nk the total lengths.
#pragma once

#include <cstdint>

namespace fastattn::cuda {

// Tensor sizes as the kernels see them (packed: B = 1, Nq / Nk = total lengths).
struct Shape {
  int64_t B, Hq, Hk, Nq, Nk, D, Dv;
};

// The five trailing kernel arguments, as raw pointers. Dense calls: all null, num_seqs = B.
struct Ragged {
  const bool* key_padding_mask;  // (B, Nk): true = the key exists; or null
  const int32_t* cu_seqlens_q;   // (num_seqs + 1) offsets into Nq; null when dense
  const int32_t* cu_seqlens_k;   // (num_seqs + 1) offsets into Nk
  int64_t num_seqs;              // sequences (packed) or batch elements (dense)
  int64_t max_seqlen_q;          // bounds of the per-sequence lengths: grid sizing only
  int64_t max_seqlen_k;
};

}  // namespace fastattn::cuda
