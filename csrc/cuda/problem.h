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

// What every forward launcher takes first (its op's params struct derives from it).
struct FwdArgs {
  const void* q;  // (B, Hq, Nq, D)
  const void* k;  // (B, Hk, Nk, D)
  const void* v;  // (B, Hk, Nk, Dv)
  void* out;      // (B, Hq, Nq, Dv), q's dtype
  Shape d;
  Ragged r;
  bool causal;
  float scale;
};

// What every backward launcher takes first: dout and the inputs, the gradients (dq like q, dk like k,
// dv like v; dk and dv summed over each GQA group, every key written), and the problem.
struct BwdArgs {
  const void* dout;  // (B, Hq, Nq, Dv)
  const void* q;
  const void* k;
  const void* v;
  void* dq;
  void* dk;
  void* dv;
  Shape d;
  Ragged r;
  bool causal;
  float scale;
};

}  // namespace fastattn::cuda
