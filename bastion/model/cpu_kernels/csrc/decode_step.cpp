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
#include <tuple>
#include <type_traits>
#include <vector>

#include "blocked.h"
#include "decode_step.h"
#include "dot.h"
#include "paged_attention_bf16.h"

namespace bastion {

namespace {

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

// One linear layer's weight of `rows` outputs and `cols` inputs: bfloat16 in the blocked layout
// (blocked.h), float32 rows, or int8 rows with a float32 scale per row.
struct Matrix {
  torch::Tensor w, scale;
  int64_t rows = 0, cols = 0;
  bool int8() const { return scale.defined(); }
};

std::vector<Matrix> matrices(const TensorList& w, const TensorList& scale, int64_t rows, int64_t cols) {
  std::vector<Matrix> out;
  for (size_t i = 0; i < w.size(); ++i)
    out.push_back({w[i], scale.empty() ? torch::Tensor() : scale[i], rows, cols});
  return out;
}

template <typename T>
class DecoderImpl final : public Decoder {
  static constexpr bool kInt16 = BASTION_VNNI && std::is_same<T, bf16_t>::value;

 public:
  DecoderImpl(const DecoderShape& shape, const DecoderWeights& w)
      : s_(shape),
        w_(w),
        q_size_(shape.num_heads * shape.head_dim),
        kv_size_(shape.num_kv_heads * shape.head_dim),
        qkv_(matrices(w.qkv, w.qkv_scale, q_size_ + 2 * kv_size_, shape.hidden)),
        o_(matrices(w.o, w.o_scale, shape.hidden, q_size_)),
        gate_up_(matrices(w.gate_up, w.gate_up_scale, 2 * shape.intermediate, shape.hidden)),
        down_(matrices(w.down, w.down_scale, shape.hidden, shape.intermediate)) {
    const int64_t widest = std::max({s_.hidden, s_.intermediate, q_size_});
    h_.resize(s_.hidden);
    tmp_.resize(s_.hidden);
    act_.resize(widest);
    qkv_out_.resize(q_size_ + 2 * kv_size_);
    gate_up_out_.resize(2 * s_.intermediate);
  }

  torch::Tensor step(int64_t token, int64_t position, int64_t slot, const torch::Tensor& block_table,
                     int64_t context_len) override {
    TORCH_CHECK(token >= 0 && token < w_.embed.size(0), "decode step: token id out of range");
    TORCH_CHECK(position >= 0 && position < w_.cos.size(0), "decode step: position out of range");
    TORCH_CHECK(block_table.scalar_type() == torch::kLong && block_table.is_contiguous(),
                "decode step: block table is contiguous int64");
    TORCH_CHECK(context_len >= 1 && context_len <= block_table.numel() * s_.block_size,
                "decode step: context longer than its block table");
    auto out = torch::empty({1, s_.hidden}, w_.embed.options());
    const T* e = ptr<T>(w_.embed) + token * s_.hidden;
    for (int64_t i = 0; i < s_.hidden; ++i) h_[i] = to_float(e[i]);
    const int64_t* table = block_table.data_ptr<int64_t>();
#pragma omp parallel
    {
      const int thread = omp_get_thread_num(), nthreads = omp_get_num_threads();
      // NOTE: sized for the team this region really has (OMP_THREAD_LIMIT or OMP_DYNAMIC may
      // give fewer threads than omp_get_max_threads(), and each then takes a longer run of
      // positions); the barrier that ends `single` publishes the buffers to every thread
#pragma omp single
      size_scratch(nthreads, context_len);
      for (size_t layer = 0; layer < qkv_.size(); ++layer) {
        attention_half(layer, thread, nthreads, position, slot, table, context_len);
        mlp_half(layer, thread, nthreads);
      }
#pragma omp single
      rms_norm(h_.data(), ptr<T>(w_.final_norm), s_.hidden, s_.eps, reinterpret_cast<T*>(out.data_ptr()));
    }
    return out;
  }

 private:
  // The per-thread scratch of one step for a team of `nthreads` (attend's scores and partial
  // sums, the int8 products' widened and quantized activations).
  void size_scratch(int64_t nthreads, int64_t context_len) {
    scores_.resize(nthreads * s_.num_heads * ((context_len + nthreads - 1) / nthreads));
    partial_.resize(nthreads * s_.num_heads * (s_.head_dim + 2));
    widened_.resize(nthreads * act_.size());
    quantized_.resize(nthreads * (act_.size() + kQBlock));
    block_scales_.resize(nthreads * ((act_.size() + kQBlock) / kQBlock + 1));
  }

  // y[n0:n1] = W[n0:n1] x for this thread's rows (int8 rows: x widened to float32 first).
  // This thread's share of y = W x (`add`: y += W x). bfloat16 weights are blocked and split by
  // column blocks, float32 and int8 ones by rows; either way no two threads touch one output.
  void product(const Matrix& m, const T* x, float* y, bool add, int thread, int nthreads) {
    if constexpr (std::is_same<T, bf16_t>::value) {
      if (!m.int8()) {
        int64_t b0, b1;
        thread_blocks(m.w.size(0), thread, nthreads, &b0, &b1);
        blocked_product(ptr<bf16_t>(m.w), m.rows, m.cols, x, 1, b0, b1,
                        [&](int64_t, int, int64_t col0, int64_t cols, const float* tile, int64_t) {
                          for (int64_t c = 0; c < cols; ++c) y[col0 + c] = (add ? y[col0 + c] : 0.f) + tile[c];
                        });
        return;
      }
    }
    int64_t n0, n1;
    thread_rows(m.rows, thread, nthreads, &n0, &n1);
    if (n0 >= n1) return;
    float* out = add ? tmp_.data() : y;
    if (m.int8()) {
      int8_rows(m, x, n0, n1, out + n0, thread);
    } else if constexpr (std::is_same<T, float>::value) {
      rows_product<float>(ptr<float>(m.w), m.cols, x, 1, n0, n1, out + n0, 0);
    }
    if (add)
      for (int64_t n = n0; n < n1; ++n) y[n] += out[n];
  }

  // Rows [n0, n1) of int8 W times x, scaled: x widened to float32 (then held as int16 rows for
  // bfloat16 models: vpdpwssd, dot.h; float32 activations stay float32, int16 is finer than
  // bfloat16 but not than float32).
  void int8_rows(const Matrix& m, const T* x, int64_t n0, int64_t n1, float* y, int thread) {
    const int64_t K = m.cols;
    float* xf = widened_.data() + thread * act_.size();
    for (int64_t k = 0; k < K; ++k) xf[k] = to_float(x[k]);
    const int8_t* w = m.w.data_ptr<int8_t>();
    if constexpr (kInt16) {
      const int64_t padded = act_.size() + kQBlock;
      int16_t* xq = quantized_.data() + thread * padded;
      float* xs = block_scales_.data() + thread * (padded / kQBlock + 1);
      quantize_row(xf, K, xq, xs);
      rows_product_int16(w, K, Int16Row{xq, xs}, n0, n1, y);
    } else {
      rows_product<int8_t, float>(w, K, xf, 1, n0, n1, y, 0);
    }
    const float* scale = m.scale.data_ptr<float>();
    for (int64_t n = n0; n < n1; ++n) y[n - n0] *= scale[n];
  }

  void attention_half(size_t layer, int thread, int nthreads, int64_t position, int64_t slot,
                      const int64_t* table, int64_t context_len) {
    T* x = reinterpret_cast<T*>(act_.data());
#pragma omp single
    rms_norm(h_.data(), ptr<T>(w_.norm1[layer]), s_.hidden, s_.eps, x);
    product(qkv_[layer], x, qkv_out_.data(), false, thread, nthreads);
#pragma omp barrier
#pragma omp single
    prepare_qkv(layer, position, slot);
    attend(layer, table, context_len, thread, nthreads);  // ends with the barrier of its `omp for`
    product(o_[layer], reinterpret_cast<const T*>(act_.data()), h_.data(), true, thread, nthreads);
  }

  void mlp_half(size_t layer, int thread, int nthreads) {
    T* x = reinterpret_cast<T*>(act_.data());
#pragma omp barrier
#pragma omp single
    rms_norm(h_.data(), ptr<T>(w_.norm2[layer]), s_.hidden, s_.eps, x);
    product(gate_up_[layer], x, gate_up_out_.data(), false, thread, nthreads);
#pragma omp barrier
    const int64_t inter = s_.intermediate;
#pragma omp for simd schedule(static)
    for (int64_t i = 0; i < inter; ++i) {
      const float g = gate_up_out_[i];
      store(x + i, g / (1.f + exp_approx(-g)) * gate_up_out_[inter + i]);
    }
    product(down_[layer], x, h_.data(), true, thread, nthreads);
#pragma omp barrier
  }

  // Bias, q/k norms and rotary on the new token's q and k; its k and v into the caches.
  void prepare_qkv(size_t layer, int64_t position, int64_t slot) {
    const int64_t D = s_.head_dim, half = D / 2;
    float* qkv = qkv_out_.data();
    if (!w_.qkv_bias.empty()) {
      const float* b = w_.qkv_bias[layer].data_ptr<float>();
      for (int64_t i = 0; i < q_size_ + 2 * kv_size_; ++i) qkv[i] += b[i];
    }
    const int64_t heads = s_.num_heads + s_.num_kv_heads;
    const float* cos = w_.cos.data_ptr<float>() + position * D;
    const float* sin = w_.sin.data_ptr<float>() + position * D;
    std::vector<float> row(D);
    for (int64_t h = 0; h < heads; ++h) {
      float* v = qkv + h * D;
      if (!w_.q_norm.empty()) {
        const torch::Tensor& w = h < s_.num_heads ? w_.q_norm[layer] : w_.k_norm[layer];
        rms_norm(v, ptr<T>(w), D, s_.eps, row.data());
        std::copy(row.begin(), row.end(), v);
      }
      for (int64_t i = 0; i < D; ++i) row[i] = v[i];
      for (int64_t i = 0; i < half; ++i) {
        v[i] = row[i] * cos[i] - row[i + half] * sin[i];
        v[i + half] = row[i + half] * cos[i + half] + row[i] * sin[i + half];
      }
    }
    const int64_t pool = w_.k_cache[layer].size(1) * s_.block_size;
    T* kc = reinterpret_cast<T*>(w_.k_cache[layer].data_ptr());
    T* vc = reinterpret_cast<T*>(w_.v_cache[layer].data_ptr());
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
#if BASTION_DPBF16
    if constexpr (std::is_same<T, bf16_t>::value) {
      if (s_.head_dim % 32 == 0 && s_.head_dim <= 2 * kMaxPairs && s_.num_heads / s_.num_kv_heads <= 8) {
        attend_bf16(layer, table, context_len, thread, nthreads);
        merge_heads(nthreads);
        return;
      }
    }
#endif
    const int64_t D = s_.head_dim, bs = s_.block_size, H = s_.num_heads;
    const int64_t group = H / s_.num_kv_heads;
    const int64_t pool = w_.k_cache[layer].size(1) * bs;  // positions per KV head in the cache
    const auto [per, t0, t1] = positions_of(context_len, thread, nthreads);
    const T* kc = ptr<T>(w_.k_cache[layer]);
    const T* vc = ptr<T>(w_.v_cache[layer]);
    float* score = scores_.data() + thread * H * per;
    float* part = partial_.data() + thread * H * (D + 2);  // per head: max, sum, D accumulators
    float row[512];
    // position t of KV head g, widened to float32 into `row`
    auto cached = [&](const T* cache, int64_t g, int64_t t) {
      const T* src = cache + (g * pool + table[t / bs] * bs + t % bs) * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) row[i] = to_float(src[i]);
    };
    for (int64_t g = 0; g < s_.num_kv_heads; ++g) {
      for (int64_t t = t0; t < t1; ++t) {
        cached(kc, g, t);
        for (int64_t j = 0; j < group; ++j) {
          const float* q = qkv_out_.data() + (g * group + j) * D;
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
        cached(vc, g, t);
        for (int64_t j = 0; j < group; ++j) {
          const int64_t h = g * group + j;
          const float p = score[h * per + (t - t0)];
          float* acc = part + h * (D + 2) + 2;
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) acc[i] += p * row[i];
        }
      }
    }
    merge_heads(nthreads);
  }

#if BASTION_DPBF16
  // `attend` on vdpbf16ps (paged_attention_bf16.h): this thread's run of positions, one KV head
  // at a time, in tiles of up to 16 keys within a cache block; its partial softmax state per
  // head into partial_ (dimensions back in order) for `merge_heads`.
  void attend_bf16(size_t layer, const int64_t* table, int64_t context_len, int thread, int nthreads) {
    const int64_t D = s_.head_dim, bs = s_.block_size, H = s_.num_heads;
    const int64_t group = H / s_.num_kv_heads;
    const int64_t pool = w_.k_cache[layer].size(1) * bs;  // positions per KV head in the cache
    const auto [per, t0, t1] = positions_of(context_len, thread, nthreads);
    const bf16_t* kc = ptr<bf16_t>(w_.k_cache[layer]);
    const bf16_t* vc = ptr<bf16_t>(w_.v_cache[layer]);
    float* part = partial_.data() + thread * H * (D + 2);  // per head: max, sum, D accumulators
    alignas(64) bf16_t q[8 * 2 * kMaxPairs];
    alignas(64) float out[8 * 2 * kMaxPairs];
    float top[8], total[8];
    int64_t last[8];
    for (int64_t g = 0; g < s_.num_kv_heads; ++g) {
      for (int64_t j = 0; j < group; ++j) {
        const float* src = qkv_out_.data() + (g * group + j) * D;
        for (int64_t i = 0; i < D; ++i) q[j * D + i] = float_to_bf16(src[i]);
        top[j] = -INFINITY, total[j] = 0.f, last[j] = context_len - 1;
      }
      std::fill(out, out + group * D, 0.f);
      for (int64_t t = t0, count = 0; t < t1; t += count) {
        count = std::min<int64_t>({kKeys, t1 - t, bs - t % bs});  // within one cache block
        const int64_t at = (g * pool + table[t / bs] * bs + t % bs) * D;
        tile_block_bf16(q, static_cast<int>(group), D, kc + at, vc + at, t, static_cast<int>(count), last,
                        s_.scale, TileState{out, top, total});
      }
      for (int64_t j = 0; j < group; ++j) {
        float* p = part + (g * group + j) * (D + 2);
        p[0] = top[j], p[1] = total[j];
        for (int64_t c = 0; c < D; c += 32)
          for (int d = 0; d < 32; ++d) p[2 + c + d] = out[j * D + c + packed_dim(d)];
      }
    }
  }
#endif

  // This thread's contiguous run [t0, t1) of the context's positions, and the run length `per`
  // every thread is given (the last runs may be shorter or empty).
  static std::tuple<int64_t, int64_t, int64_t> positions_of(int64_t context_len, int thread, int nthreads) {
    const int64_t per = (context_len + nthreads - 1) / nthreads;
    const int64_t t0 = std::min(context_len, per * thread);
    return {per, t0, std::min(context_len, t0 + per)};
  }

  // The threads' partial softmax sums per head (partial_), merged after a barrier into act_ as T.
  void merge_heads(int nthreads) {
    const int64_t D = s_.head_dim, H = s_.num_heads;
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
  DecoderWeights w_;
  int64_t q_size_ = 0, kv_size_ = 0;
  std::vector<Matrix> qkv_, o_, gate_up_, down_;
  std::vector<float> h_, tmp_, act_, qkv_out_, gate_up_out_, scores_, partial_, widened_, block_scales_;
  std::vector<int16_t> quantized_;
};

void check_all(const TensorList& list, torch::ScalarType dtype, const char* what) {
  for (const auto& t : list) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "decoder: ", what, " must be contiguous CPU tensors");
    TORCH_CHECK(t.scalar_type() == dtype, "decoder: ", what, " has the wrong dtype");
  }
}

// A layer's weights: int8 [rows, cols] with scales, or in the model's dtype: float32 [rows, cols],
// bfloat16 blocked [ceil(rows / 16), cols / 2, 16, 2].
void check_matrices(const TensorList& w, const TensorList& scale, torch::ScalarType dtype, int64_t rows,
                    int64_t cols, const char* what) {
  for (const auto& t : w) {
    const bool blocked = dtype == torch::kBFloat16 && scale.empty();
    const bool fits = blocked ? (t.dim() == 4 && t.size(0) == (rows + kBlockCols - 1) / kBlockCols &&
                                 t.size(1) * 2 == cols && t.size(2) == kBlockCols && t.size(3) == 2)
                              : (t.dim() == 2 && t.size(0) == rows && t.size(1) == cols);
    TORCH_CHECK(fits, "decoder: ", what, " weight has the wrong shape", blocked ? " (bfloat16 is blocked)" : "");
  }
  if (scale.empty()) return check_all(w, dtype, what);
  TORCH_CHECK(scale.size() == w.size(), "decoder: ", what, ": one scale per layer");
  check_all(w, torch::kChar, what);
  check_all(scale, torch::kFloat, "int8 scales");
  for (size_t i = 0; i < w.size(); ++i)
    TORCH_CHECK(scale[i].numel() == w[i].size(0), "decoder: ", what, ": one scale per row");
}

}  // namespace

std::shared_ptr<Decoder> make_decoder(const DecoderShape& shape, const DecoderWeights& w) {
  const auto dtype = w.embed.scalar_type();
  TORCH_CHECK(dtype == torch::kBFloat16 || dtype == torch::kFloat, "decoder: bfloat16 or float32 weights");
  TORCH_CHECK(shape.head_dim <= 512 && shape.head_dim % 2 == 0, "decoder: head_dim must be even, at most 512");
  TORCH_CHECK(shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0, "decoder: heads per KV head");
  const size_t layers = w.qkv.size();
  for (const TensorList* l : {&w.norm1, &w.o, &w.norm2, &w.gate_up, &w.down, &w.k_cache, &w.v_cache})
    TORCH_CHECK(l->size() == layers, "decoder: one tensor per layer in every list");
  TORCH_CHECK(w.qkv_bias.empty() || w.qkv_bias.size() == layers, "decoder: qkv biases for every layer or none");
  TORCH_CHECK(w.q_norm.size() == w.k_norm.size() && (w.q_norm.empty() || w.q_norm.size() == layers),
              "decoder: q/k norms for every layer or none");
  for (const TensorList* l : {&w.norm1, &w.norm2, &w.q_norm, &w.k_norm, &w.k_cache, &w.v_cache})
    check_all(*l, dtype, "norms and caches");
  const int64_t q = shape.num_heads * shape.head_dim, kv = shape.num_kv_heads * shape.head_dim;
  check_matrices(w.qkv, w.qkv_scale, dtype, q + 2 * kv, shape.hidden, "qkv");
  check_matrices(w.o, w.o_scale, dtype, shape.hidden, q, "o");
  check_matrices(w.gate_up, w.gate_up_scale, dtype, 2 * shape.intermediate, shape.hidden, "gate_up");
  check_matrices(w.down, w.down_scale, dtype, shape.hidden, shape.intermediate, "down");
  check_all({w.embed, w.final_norm}, dtype, "embedding and final norm");
  check_all(w.qkv_bias, torch::kFloat, "qkv biases");
  check_all({w.cos, w.sin}, torch::kFloat, "rotary tables");
  if (dtype == torch::kBFloat16) return std::make_shared<DecoderImpl<bf16_t>>(shape, w);
  return std::make_shared<DecoderImpl<float>>(shape, w);
}

}  // namespace bastion
