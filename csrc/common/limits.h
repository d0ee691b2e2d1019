// Limits the kernels share, in one place: the CPU and CUDA kernels check against them, fastattn._C
// exports them (fastattn._ext.build_info), and fastattn.dispatch reads them from there.
#pragma once

namespace fastattn {

constexpr int kMaxHeadDim = 256;   // D and Dv, every backend
constexpr int kMaxTopkCpu = 4096;  // the CPU top-K select keeps up to this many candidates per row
// Fused top-K lowers tau by kTieMargin * max(1, |tau|) so that the key defining it survives the
// attention kernel's recomputation of its score in another summation order (docs/semantics.md §3's near-ties).
constexpr float kTieMargin = 2e-5f;

}  // namespace fastattn
