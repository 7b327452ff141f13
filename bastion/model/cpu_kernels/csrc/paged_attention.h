// Decode attention over the paged KV cache, read in place (paged_attention.cpp).
#pragma once

#include <torch/extension.h>

namespace bastion {

// out [B, H, D] = attention of each sequence's one query token q [B, H, D] over the first
// context_lens[b] positions of its blocks block_tables[b] in caches [Hkv, blocks, block_size, D].
torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                     const torch::Tensor& v_cache, const torch::Tensor& block_tables,
                                     const torch::Tensor& context_lens, double scale);

}  // namespace bastion
