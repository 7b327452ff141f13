// `Decoder`: one decode step of one sequence (a single new token) through a whole Llama-family
// model in one call: one OpenMP parallel region per step, the matrix-vector products split by
// weight rows between the threads, attention split by heads, the small ops (norms, rotary,
// SiLU-and-mul, residual adds, the KV write) in between. Eager PyTorch spends more time on
// ~1800 small-op dispatches per step than on these ops themselves (docs/engine.md).
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "decode_step.h"
#include "dot.h"

namespace bastion {

namespace {

using TensorList = std::vector<torch::Tensor>;

template <typename T>
const T* ptr(const torch::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }

// out[i] = weight[i] * x[i] / rms(x), for `n` values.
template <typename T, typename W>
void rms_norm(const float* x, const W* weight, int64_t n, float eps, T* out) {
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < n; ++i) sq += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sq / n + eps);
  for (int64_t i = 0; i < n; ++i) store(out + i, to_float(weight[i]) * (x[i] * inv));
}

template <typename T>
class DecoderImpl final : public Decoder {
 public:
  DecoderImpl(const DecoderShape& shape, torch::Tensor embed, TensorList norm1, TensorList qkv_w,
              TensorList qkv_b, TensorList q_norm, TensorList k_norm, TensorList o_w, TensorList norm2,
              TensorList gate_up_w, TensorList down_w, TensorList k_cache, TensorList v_cache,
              torch::Tensor final_norm, torch::Tensor cos, torch::Tensor sin)
      : s_(shape), embed_(embed), norm1_(norm1), qkv_w_(qkv_w), qkv_b_(qkv_b), q_norm_(q_norm),
        k_norm_(k_norm), o_w_(o_w), norm2_(norm2), gate_up_w_(gate_up_w), down_w_(down_w),
        k_cache_(k_cache), v_cache_(v_cache), final_norm_(final_norm), cos_(cos), sin_(sin) {
    q_size_ = s_.num_heads * s_.head_dim;
    kv_size_ = s_.num_kv_heads * s_.head_dim;
    const int64_t widest = std::max({s_.hidden, s_.intermediate, q_size_});
    h_.resize(s_.hidden);
    tmp_.resize(s_.hidden);
    act_.resize(widest);
    qkv_.resize(q_size_ + 2 * kv_size_);
    gate_up_.resize(2 * s_.intermediate);
  }

  torch::Tensor step(int64_t token, int64_t position, int64_t slot, const torch::Tensor& block_table,
                     int64_t context_len) override {
    TORCH_CHECK(token >= 0 && token < embed_.size(0), "decode step: token id out of range");
    TORCH_CHECK(position >= 0 && position < cos_.size(0), "decode step: position out of range");
    TORCH_CHECK(block_table.scalar_type() == torch::kLong && block_table.is_contiguous(),
                "decode step: block table is contiguous int64");
    TORCH_CHECK(context_len >= 1 && context_len <= block_table.numel() * s_.block_size,
                "decode step: context longer than its block table");
    auto out = torch::empty({1, s_.hidden}, embed_.options());
    const T* e = ptr<T>(embed_) + token * s_.hidden;
    for (int64_t i = 0; i < s_.hidden; ++i) h_[i] = to_float(e[i]);
    const int64_t nthreads = omp_get_max_threads();
    scores_.resize(nthreads * s_.num_heads * ((context_len + nthreads - 1) / nthreads));
    partial_.resize(nthreads * s_.num_heads * (s_.head_dim + 2));
    const int64_t* table = block_table.data_ptr<int64_t>();
#pragma omp parallel
    {
      const int thread = omp_get_thread_num(), nthreads = omp_get_num_threads();
      for (size_t layer = 0; layer < qkv_w_.size(); ++layer) {
        attention_half(layer, thread, nthreads, position, slot, table, context_len);
        mlp_half(layer, thread, nthreads);
      }
#pragma omp single
      rms_norm(h_.data(), ptr<T>(final_norm_), s_.hidden, s_.eps, reinterpret_cast<T*>(out.data_ptr()));
    }
    return out;
  }

 private:
  // y[n0:n1] = W[n0:n1] x for this thread's rows.
  void product(const torch::Tensor& w, const T* x, float* y, int thread, int nthreads) {
    int64_t n0, n1;
    thread_rows(w.size(0), thread, nthreads, &n0, &n1);
    if (n0 < n1) rows_product<T>(ptr<T>(w), w.size(1), x, 1, n0, n1, y + n0, 0);
  }

  void attention_half(size_t layer, int thread, int nthreads, int64_t position, int64_t slot,
                      const int64_t* table, int64_t context_len) {
    T* x = reinterpret_cast<T*>(act_.data());
#pragma omp single
    rms_norm(h_.data(), ptr<T>(norm1_[layer]), s_.hidden, s_.eps, x);
    product(qkv_w_[layer], x, qkv_.data(), thread, nthreads);
#pragma omp barrier
#pragma omp single
    prepare_qkv(layer, position, slot);
    attend(layer, table, context_len, thread, nthreads);  // ends with the barrier of its `omp for`
    product(o_w_[layer], reinterpret_cast<const T*>(act_.data()), tmp_.data(), thread, nthreads);
    add_own_rows(thread, nthreads);
  }

  void mlp_half(size_t layer, int thread, int nthreads) {
    T* x = reinterpret_cast<T*>(act_.data());
#pragma omp barrier
#pragma omp single
    rms_norm(h_.data(), ptr<T>(norm2_[layer]), s_.hidden, s_.eps, x);
    product(gate_up_w_[layer], x, gate_up_.data(), thread, nthreads);
#pragma omp barrier
    const int64_t inter = s_.intermediate;
#pragma omp for simd schedule(static)
    for (int64_t i = 0; i < inter; ++i) {
      const float g = gate_up_[i];
      store(x + i, g / (1.f + exp_approx(-g)) * gate_up_[inter + i]);
    }
    product(down_w_[layer], x, tmp_.data(), thread, nthreads);
    add_own_rows(thread, nthreads);
#pragma omp barrier
  }

  // h[n] += tmp[n] for the rows this thread's product wrote (no other thread touches them).
  void add_own_rows(int thread, int nthreads) {
    int64_t n0, n1;
    thread_rows(s_.hidden, thread, nthreads, &n0, &n1);
    for (int64_t n = n0; n < n1; ++n) h_[n] += tmp_[n];
  }

  // Bias, q/k norms and rotary on the new token's q and k; its k and v into the caches.
  void prepare_qkv(size_t layer, int64_t position, int64_t slot) {
    const int64_t D = s_.head_dim, half = D / 2;
    float* qkv = qkv_.data();
    if (!qkv_b_.empty()) {
      const float* b = qkv_b_[layer].data_ptr<float>();
      for (int64_t i = 0; i < q_size_ + 2 * kv_size_; ++i) qkv[i] += b[i];
    }
    const int64_t heads = s_.num_heads + s_.num_kv_heads;
    const float* cos = cos_.data_ptr<float>() + position * D;
    const float* sin = sin_.data_ptr<float>() + position * D;
    std::vector<float> row(D);
    for (int64_t h = 0; h < heads; ++h) {
      float* v = qkv + h * D;
      if (!q_norm_.empty()) {
        const torch::Tensor& w = h < s_.num_heads ? q_norm_[layer] : k_norm_[layer];
        rms_norm(v, ptr<T>(w), D, s_.eps, row.data());
        std::copy(row.begin(), row.end(), v);
      }
      for (int64_t i = 0; i < D; ++i) row[i] = v[i];
      for (int64_t i = 0; i < half; ++i) {
        v[i] = row[i] * cos[i] - row[i + half] * sin[i];
        v[i + half] = row[i + half] * cos[i + half] + row[i] * sin[i + half];
      }
    }
    const int64_t pool = k_cache_[layer].size(1) * s_.block_size;
    T* kc = reinterpret_cast<T*>(k_cache_[layer].data_ptr());
    T* vc = reinterpret_cast<T*>(v_cache_[layer].data_ptr());
    for (int64_t g = 0; g < s_.num_kv_heads; ++g) {
      const float* k = qkv + q_size_ + g * D;
      const float* v = qkv + q_size_ + kv_size_ + g * D;
      T* kd = kc + (g * pool + slot) * D;
      T* vd = vc + (g * pool + slot) * D;
      for (int64_t i = 0; i < D; ++i) { store(kd + i, k[i]); store(vd + i, v[i]); }
    }
  }

  // Attention of the new token's query heads over the cached keys and values, split by
  // positions (each thread a contiguous run, all heads: balanced for any head count); the
  // threads' partial softmax sums are merged per head after a barrier. Results into act_ as T.
  void attend(size_t layer, const int64_t* table, int64_t context_len, int thread, int nthreads) {
    const int64_t D = s_.head_dim, bs = s_.block_size, H = s_.num_heads;
    const int64_t group = H / s_.num_kv_heads;
    const int64_t pool = k_cache_[layer].size(1) * bs;
    const int64_t per = (context_len + nthreads - 1) / nthreads;
    const int64_t t0 = std::min(context_len, per * thread), t1 = std::min(context_len, t0 + per);
    const T* kc = ptr<T>(k_cache_[layer]);
    const T* vc = ptr<T>(v_cache_[layer]);
    float* score = scores_.data() + thread * H * per;
    float* part = partial_.data() + thread * H * (D + 2);  // per head: max, sum, D accumulators
    float row[512];
    for (int64_t g = 0; g < s_.num_kv_heads; ++g) {
      for (int64_t t = t0; t < t1; ++t) {
        const T* k = kc + (g * pool + table[t / bs] * bs + t % bs) * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) row[i] = to_float(k[i]);
        for (int64_t j = 0; j < group; ++j) {
          const float* q = qkv_.data() + (g * group + j) * D;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t i = 0; i < D; ++i) dot += q[i] * row[i];
          score[(g * group + j) * per + (t - t0)] = dot * s_.scale;
        }
      }
    }
    const int64_t n = t1 - t0;
    for (int64_t h = 0; h < H; ++h) {
      float* sc = score + h * per;
      float top = -INFINITY;
      for (int64_t t = 0; t < n; ++t) top = std::max(top, sc[t]);
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int64_t t = 0; t < n; ++t) total += (sc[t] = exp_approx(sc[t] - top));
      part[h * (D + 2)] = top;
      part[h * (D + 2) + 1] = total;
      std::fill(part + h * (D + 2) + 2, part + (h + 1) * (D + 2), 0.f);
    }
    for (int64_t g = 0; g < s_.num_kv_heads; ++g) {
      for (int64_t t = t0; t < t1; ++t) {
        const T* v = vc + (g * pool + table[t / bs] * bs + t % bs) * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) row[i] = to_float(v[i]);
        for (int64_t j = 0; j < group; ++j) {
          const int64_t h = g * group + j;
          const float p = score[h * per + (t - t0)];
          float* acc = part + h * (D + 2) + 2;
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) acc[i] += p * row[i];
        }
      }
    }
#pragma omp barrier
    T* out = reinterpret_cast<T*>(act_.data());
#pragma omp for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      float top = -INFINITY;
      for (int other = 0; other < nthreads; ++other) top = std::max(top, partial_[(other * H + h) * (D + 2)]);
      float total = 0.f;
      float acc[512];
      std::fill(acc, acc + D, 0.f);
      for (int other = 0; other < nthreads; ++other) {
        const float* pt = partial_.data() + (other * H + h) * (D + 2);
        if (pt[1] == 0.f) continue;  // a thread with no positions
        const float w = exp_approx(pt[0] - top);
        total += w * pt[1];
        for (int64_t i = 0; i < D; ++i) acc[i] += w * pt[2 + i];
      }
      for (int64_t i = 0; i < D; ++i) store(out + h * D + i, acc[i] / total);
    }
  }

  DecoderShape s_;
  torch::Tensor embed_;
  TensorList norm1_, qkv_w_, qkv_b_, q_norm_, k_norm_, o_w_, norm2_, gate_up_w_, down_w_, k_cache_, v_cache_;
  torch::Tensor final_norm_, cos_, sin_;
  int64_t q_size_ = 0, kv_size_ = 0;
  std::vector<float> h_, tmp_, act_, qkv_, gate_up_, scores_, partial_;
};

void check_all(const TensorList& list, torch::ScalarType dtype, const char* what) {
  for (const auto& t : list) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "decoder: ", what, " must be contiguous CPU tensors");
    TORCH_CHECK(t.scalar_type() == dtype, "decoder: ", what, " has the wrong dtype");
  }
}

}  // namespace

std::shared_ptr<Decoder> make_decoder(const DecoderShape& shape, torch::Tensor embed, TensorList norm1,
                                      TensorList qkv_w, TensorList qkv_b, TensorList q_norm,
                                      TensorList k_norm, TensorList o_w, TensorList norm2,
                                      TensorList gate_up_w, TensorList down_w, TensorList k_cache,
                                      TensorList v_cache, torch::Tensor final_norm, torch::Tensor cos,
                                      torch::Tensor sin) {
  const auto dtype = embed.scalar_type();
  TORCH_CHECK(dtype == torch::kBFloat16 || dtype == torch::kFloat, "decoder: bfloat16 or float32 weights");
  TORCH_CHECK(shape.head_dim <= 512 && shape.head_dim % 2 == 0, "decoder: head_dim must be even, at most 512");
  TORCH_CHECK(shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0, "decoder: heads per KV head");
  const size_t layers = qkv_w.size();
  for (const TensorList* l : {&norm1, &o_w, &norm2, &gate_up_w, &down_w, &k_cache, &v_cache})
    TORCH_CHECK(l->size() == layers, "decoder: one tensor per layer in every list");
  TORCH_CHECK(qkv_b.empty() || qkv_b.size() == layers, "decoder: qkv biases for every layer or none");
  TORCH_CHECK(q_norm.size() == k_norm.size() && (q_norm.empty() || q_norm.size() == layers),
              "decoder: q/k norms for every layer or none");
  for (const TensorList* l : {&norm1, &qkv_w, &q_norm, &k_norm, &o_w, &norm2, &gate_up_w, &down_w, &k_cache, &v_cache})
    check_all(*l, dtype, "weights and caches");
  check_all({embed, final_norm}, dtype, "embedding and final norm");
  check_all(qkv_b, torch::kFloat, "qkv biases");
  check_all({cos, sin}, torch::kFloat, "rotary tables");
  if (dtype == torch::kBFloat16)
    return std::make_shared<DecoderImpl<bf16_t>>(shape, embed, norm1, qkv_w, qkv_b, q_norm, k_norm, o_w, norm2,
                                                 gate_up_w, down_w, k_cache, v_cache, final_norm, cos, sin);
  return std::make_shared<DecoderImpl<float>>(shape, embed, norm1, qkv_w, qkv_b, q_norm, k_norm, o_w, norm2,
                                              gate_up_w, down_w, k_cache, v_cache, final_norm, cos, sin);
}

}  // namespace bastion
