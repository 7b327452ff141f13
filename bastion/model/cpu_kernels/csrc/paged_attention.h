// Attention of one step's new tokens over the paged KV cache, read in place (paged_attention.cpp).
#pragma once

#include <torch/extension.h>

namespace bastion {

// out [T, H, D]: sequence s has query rows [query_starts[s], query_starts[s + 1]) of q [T, H, D],
// the last tokens of its context of context_lens[s] positions, held in the blocks
// block_tables[s] of the caches [Hkv, blocks, block_size, D] (their keys and values already
// written); each query attends causally over its context.
torch::Tensor paged_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              const torch::Tensor& block_tables, const torch::Tensor& context_lens,
                              const torch::Tensor& query_starts, double scale);

}  // namespace bastion
