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

std::shared_ptr<Decoder> make_decoder(const DecoderShape& shape, torch::Tensor embed, std::vector<torch::Tensor> norm1,
                                      std::vector<torch::Tensor> qkv_w, std::vector<torch::Tensor> qkv_b,
                                      std::vector<torch::Tensor> q_norm, std::vector<torch::Tensor> k_norm,
                                      std::vector<torch::Tensor> o_w, std::vector<torch::Tensor> norm2,
                                      std::vector<torch::Tensor> gate_up_w, std::vector<torch::Tensor> down_w,
                                      std::vector<torch::Tensor> k_cache, std::vector<torch::Tensor> v_cache,
                                      torch::Tensor final_norm, torch::Tensor cos, torch::Tensor sin);

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias);

}  // namespace bastion
