// The whole-model decode step of one sequence (see decode_step.cpp).
#pragma once

#include <torch/extension.h>

#include <memory>
#include <vector>

namespace bastion {

struct DecoderShape {
  int64_t hidden = 0, intermediate = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, block_size = 0;
  float eps = 1e-6f, scale = 1.f;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // The final-normed hidden state [1, hidden] after feeding `token` at `position`; its K and V
  // go to cache slot `slot`; attention covers the first `context_len` slots of `block_table`.
  virtual torch::Tensor step(int64_t token, int64_t position, int64_t slot, const torch::Tensor& block_table,
                             int64_t context_len) = 0;
};

using TensorList = std::vector<torch::Tensor>;

// Per-layer weights. A linear layer's weights are in the model's dtype (float32 [out, in];
// bfloat16 in blocked.h's layout [ceil(out / 16), in / 2, 16, 2]), or int8 [out, in] with a
// float32 scale per output row (its `*_scale` list then has one tensor per layer, else none).
struct DecoderWeights {
  torch::Tensor embed, final_norm, cos, sin;  // rotary tables: float32 [positions, head_dim]
  TensorList norm1, norm2, q_norm, k_norm, qkv_bias;  // q/k norms, biases: per layer or empty
  TensorList qkv, o, gate_up, down;
  TensorList qkv_scale, o_scale, gate_up_scale, down_scale;
  TensorList k_cache, v_cache;  // [kv heads, blocks, block size, head_dim] in the model's dtype
};

std::shared_ptr<Decoder> make_decoder(const DecoderShape& shape, const DecoderWeights& weights);


}  // namespace bastion
