// The ragged-batch arguments (docs/semantics.md §5) that every kernel stage takes last, after its own:
//   Tensor? key_padding_mask=None, Tensor? cu_seqlens_q=None, Tensor? cu_seqlens_k=None,
//   int max_seqlen_q=0, int max_seqlen_k=0
// (defaults, so a dense call may omit them). FASTATTN_RAGGED_SCHEMA is that schema text; with_ragged<Fn>
// adapts a kernel that does not implement them yet: it refuses masks/offsets instead of ignoring them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace fastattn {

#define FASTATTN_RAGGED_SCHEMA \
  "Tensor? key_padding_mask=None, Tensor? cu_seqlens_q=None, Tensor? cu_seqlens_k=None, int max_seqlen_q=0, " \
  "int max_seqlen_k=0"

using OptTensor = std::optional<at::Tensor>;

inline bool is_dense(const OptTensor& key_padding_mask, const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k) {
  return !key_padding_mask.has_value() && !cu_seqlens_q.has_value() && !cu_seqlens_k.has_value();
}

template <auto Fn, bool Check>
struct RaggedAdapter;

template <typename R, typename... A, R (*Fn)(A...), bool Check>
struct RaggedAdapter<Fn, Check> {
  static R call(A... a, const OptTensor& key_padding_mask, const OptTensor& cu_seqlens_q,
                const OptTensor& cu_seqlens_k, int64_t, int64_t) {
    if constexpr (Check) {
      TORCH_CHECK(is_dense(key_padding_mask, cu_seqlens_q, cu_seqlens_k),
                  "key_padding_mask / cu_seqlens are not implemented by this backend's kernel yet");
    }
    return Fn(a...);
  }
};

// A kernel taking only its own arguments, exposed with the ragged ones appended (refused when given).
template <auto Fn>
constexpr auto with_ragged = &RaggedAdapter<Fn, true>::call;
// Shape functions (Meta) ignore them.
template <auto Fn>
constexpr auto meta_with_ragged = &RaggedAdapter<Fn, false>::call;

}  // namespace fastattn
