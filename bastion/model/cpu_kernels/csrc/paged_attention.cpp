// Decode attention over the paged KV cache, read in place: one new query token per sequence,
// attending over the keys and values of the blocks its block table names, exactly its own
// context (no gather into a padded copy, no mask). The work is one item per (sequence, KV head):
// the KV head's group of query heads meets each cached key once (GQA), softmax in float32,
// items handed to threads dynamically (contexts differ in length).
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "dot.h"
#include "paged_attention.h"

namespace bastion {

namespace {

constexpr int64_t kMaxHeadDim = 512;

template <typename T>
void attend_one(const T* q, const T* kc, const T* vc, const int64_t* table, int64_t context, int64_t g,
                int64_t group, int64_t D, int64_t bs, int64_t pool, float scale, float* scores, float* row,
                float* acc, T* out) {
  // q rows of this KV head's query heads, widened once
  float qf[8 * kMaxHeadDim];
  for (int64_t j = 0; j < group; ++j)
    for (int64_t i = 0; i < D; ++i) qf[j * D + i] = to_float(q[j * D + i]);
  auto cached = [&](const T* cache, int64_t t) {
    const T* src = cache + (g * pool + table[t / bs] * bs + t % bs) * D;
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) row[i] = to_float(src[i]);
  };
  for (int64_t t = 0; t < context; ++t) {
    cached(kc, t);
    for (int64_t j = 0; j < group; ++j) {
      const float* qj = qf + j * D;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < D; ++i) dot += qj[i] * row[i];
      scores[j * context + t] = dot * scale;
    }
  }
  for (int64_t j = 0; j < group; ++j) {
    float* sc = scores + j * context;
    float top = -INFINITY;
    for (int64_t t = 0; t < context; ++t) top = std::max(top, sc[t]);
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < context; ++t) total += (sc[t] = exp_approx(sc[t] - top));
    const float inv = 1.f / total;
#pragma omp simd
    for (int64_t t = 0; t < context; ++t) sc[t] *= inv;
  }
  std::fill(acc, acc + group * D, 0.f);
  for (int64_t t = 0; t < context; ++t) {
    cached(vc, t);
    for (int64_t j = 0; j < group; ++j) {
      const float p = scores[j * context + t];
      float* a = acc + j * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) a[i] += p * row[i];
    }
  }
  for (int64_t j = 0; j < group * D; ++j) store(out + j, acc[j]);
}

template <typename T>
void paged_impl(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                const torch::Tensor& tables, const torch::Tensor& lens, float scale, torch::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t Hkv = k_cache.size(0), bs = k_cache.size(2), pool = k_cache.size(1) * bs;
  const int64_t group = H / Hkv, width = tables.size(1);
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  const T* qp = reinterpret_cast<const T*>(q.data_ptr());
  const T* kc = reinterpret_cast<const T*>(k_cache.data_ptr());
  const T* vc = reinterpret_cast<const T*>(v_cache.data_ptr());
  T* op = reinterpret_cast<T*>(out.data_ptr());
  const int64_t longest = *std::max_element(lp, lp + B);
#pragma omp parallel
  {
    std::vector<float> scores(group * longest), row(D), acc(group * D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < B * Hkv; ++item) {
      const int64_t b = item / Hkv, g = item % Hkv;
      attend_one<T>(qp + (b * H + g * group) * D, kc, vc, tp + b * width, lp[b], g, group, D, bs, pool, scale,
                    scores.data(), row.data(), acc.data(), op + (b * H + g * group) * D);
    }
  }
}

}  // namespace

torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                     const torch::Tensor& v_cache, const torch::Tensor& block_tables,
                                     const torch::Tensor& context_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous(), "paged attention: q is contiguous [B, H, D]");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes(),
              "paged attention: caches are contiguous [Hkv, blocks, block_size, D], alike");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type() &&
                  (q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kFloat),
              "paged attention: q and caches in one dtype, bfloat16 or float32");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k_cache.size(0);
  TORCH_CHECK(k_cache.size(3) == D && D <= kMaxHeadDim && H % Hkv == 0 && H / Hkv <= 8,
              "paged attention: head size (at most 512) and heads per KV head (at most 8) fit the caches");
  TORCH_CHECK(block_tables.scalar_type() == torch::kLong && block_tables.dim() == 2 &&
                  block_tables.size(0) == B && block_tables.is_contiguous(),
              "paged attention: block tables are contiguous int64 [B, width]");
  TORCH_CHECK(context_lens.scalar_type() == torch::kLong && context_lens.numel() == B &&
                  context_lens.is_contiguous(),
              "paged attention: context lengths are contiguous int64 [B]");
  auto out = torch::empty_like(q);
  if (B == 0) return out;
  const int64_t bs = k_cache.size(2), blocks = k_cache.size(1), width = block_tables.size(1);
  const int64_t* tp = block_tables.data_ptr<int64_t>();
  const int64_t* lp = context_lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= width * bs, "paged attention: a context is longer than its block table");
    for (int64_t i = 0; i < (lp[b] + bs - 1) / bs; ++i)
      TORCH_CHECK(tp[b * width + i] >= 0 && tp[b * width + i] < blocks, "paged attention: a block id is out of range");
  }
  if (q.scalar_type() == torch::kBFloat16)
    paged_impl<bf16_t>(q, k_cache, v_cache, block_tables, context_lens, static_cast<float>(scale), out);
  else
    paged_impl<float>(q, k_cache, v_cache, block_tables, context_lens, static_cast<float>(scale), out);
  return out;
}

}  // namespace bastion
