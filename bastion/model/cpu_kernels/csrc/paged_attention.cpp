// Attention of one step's new tokens over the paged KV cache, read in place: every sequence's
// queries (one for a decode, a run for a prefill chunk) attend causally over the keys and
// values of the blocks its block table names, exactly its own context (no gather into a padded
// copy, no mask). The work is one item per (sequence, KV head, tile of up to 16 of its
// queries): the tile's rows (queries x the KV head's query heads: GQA) meet one block of keys at
// a time with an online softmax in float32 (flash attention); items go to threads dynamically.
// bfloat16 runs on `vdpbf16ps` where the CPU has it (paged_attention_bf16.h), float32 and other
// CPUs on plain loops the compiler vectorizes.
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "dot.h"
#include "paged_attention.h"
#include "paged_attention_bf16.h"

namespace bastion {

namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kTileQueries = 16;

struct Item {
  int64_t seq, head, first;  // sequence, KV head, first query of the tile (within the sequence)
};

struct Step {
  int64_t H, Hkv, G, D, bs, pool, width;
  const int64_t* tables;
  const int64_t* lens;
  const int64_t* starts;
  float scale;
};

// One tile on plain loops the compiler vectorizes: rows [rows][D] of float queries. Each block
// of up to 16 keys is widened and transposed ([D][16]) so that 16 keys' scores of a row grow
// together (one vector of 16 lanes, no horizontal sums), four rows at a time.
template <typename T>
void tile_loops(const Step& s, const float* q, int rows, const int64_t* last, const T* kc, const T* vc,
                const int64_t* table, int64_t g, int64_t end, float* out, float* top, float* total, float* kt,
                float* vf, T* dst, int64_t first_row) {
  constexpr int kKeysAtOnce = 16, kRows = 4;
  const int64_t D = s.D;
  std::fill(out, out + rows * D, 0.f);
  std::fill(top, top + rows, -INFINITY);
  std::fill(total, total + rows, 0.f);
  int64_t count = 0;
  for (int64_t t0 = 0; t0 < end; t0 += count) {
    count = std::min<int64_t>({kKeysAtOnce, end - t0, s.bs - t0 % s.bs});  // within one block
    const int64_t at = (g * s.pool + table[t0 / s.bs] * s.bs + t0 % s.bs) * D;
    for (int64_t t = 0; t < kKeysAtOnce; ++t)
      for (int64_t i = 0; i < D; ++i) {
        kt[i * kKeysAtOnce + t] = t < count ? to_float(kc[at + t * D + i]) : 0.f;
        vf[t * D + i] = t < count ? to_float(vc[at + t * D + i]) : 0.f;
      }
    for (int r0 = 0; r0 < rows; r0 += kRows) {
      const int nr = std::min(kRows, rows - r0);
      float sc[kRows][kKeysAtOnce] = {};
      for (int64_t i = 0; i < D; ++i)
        for (int r = 0; r < kRows; ++r) {
          const float qv = r < nr ? q[(r0 + r) * D + i] : 0.f;
#pragma omp simd
          for (int t = 0; t < kKeysAtOnce; ++t) sc[r][t] += qv * kt[i * kKeysAtOnce + t];
        }
      for (int r = 0; r < nr; ++r) {
        const int64_t seen = std::min(count, last[r0 + r] - t0 + 1);
        if (seen <= 0) continue;
        float block_top = -INFINITY;
        for (int64_t t = 0; t < seen; ++t) block_top = std::max(block_top, sc[r][t] *= s.scale);
        float* tp = top + r0 + r;
        const float new_top = std::max(*tp, block_top);
        const float shrink = std::isinf(*tp) ? 0.f : exp_approx(*tp - new_top);
        float sum = 0.f;
        for (int64_t t = 0; t < kKeysAtOnce; ++t)
          sum += (sc[r][t] = t < seen ? exp_approx(sc[r][t] - new_top) : 0.f);
        *tp = new_top;
        total[r0 + r] = total[r0 + r] * shrink + sum;
        float* o = out + (r0 + r) * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) o[i] *= shrink;
        for (int64_t t = 0; t < seen; ++t) {
          const float p = sc[r][t];
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) o[i] += p * vf[t * D + i];
        }
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    const float inv = total[r] > 0.f ? 1.f / total[r] : 0.f;
    const int64_t query = r / s.G, head = r % s.G;
    T* o = dst + ((first_row + query) * s.H + g * s.G + head) * D;
    for (int64_t i = 0; i < D; ++i) store(o + i, out[r * D + i] * inv);
  }
}

template <typename T>
void run_items(const Step& s, const std::vector<Item>& items, const T* qp, const T* kc, const T* vc, T* op,
               bool use_dpbf16) {
  const int64_t D = s.D, max_rows = kTileQueries * s.G;
#pragma omp parallel
  {
    std::vector<float> qf(max_rows * D), out(max_rows * D), top(max_rows), total(max_rows);
    std::vector<float> kt(16 * D), vf(16 * D);
    std::vector<int64_t> last(max_rows);
    std::vector<bf16_t> qb(max_rows * D);
#pragma omp for schedule(dynamic, 1)
    for (size_t n = 0; n < items.size(); ++n) {
      const Item it = items[n];
      const int64_t start = s.starts[it.seq], queries = s.starts[it.seq + 1] - start;
      const int64_t context = s.lens[it.seq], count = std::min(kTileQueries, queries - it.first);
      const int rows = static_cast<int>(count * s.G);
      for (int r = 0; r < rows; ++r) {
        const int64_t query = it.first + r / s.G;
        last[r] = context - queries + query;
        const T* src = qp + ((start + query) * s.H + it.head * s.G + r % s.G) * D;
        for (int64_t i = 0; i < D; ++i) qf[r * D + i] = to_float(src[i]);
        if constexpr (std::is_same<T, bf16_t>::value) std::copy(src, src + D, qb.data() + r * D);
      }
      const int64_t end = last[rows - 1] + 1;  // the tile's last query sees the most keys
      const int64_t* table = s.tables + it.seq * s.width;
#if BASTION_DPBF16
      if constexpr (std::is_same<T, bf16_t>::value) {
        if (use_dpbf16) {
          TileState st{out.data(), top.data(), total.data()};
          std::fill(out.begin(), out.begin() + rows * D, 0.f);
          std::fill(top.begin(), top.begin() + rows, -INFINITY);
          std::fill(total.begin(), total.begin() + rows, 0.f);
          for (int64_t t0 = 0; t0 < end; t0 += s.bs) {
            const int64_t block = table[t0 / s.bs];
            for (int64_t sub = 0; sub < s.bs && t0 + sub < end; sub += kKeys) {
              const int count_keys = static_cast<int>(std::min<int64_t>({kKeys, s.bs - sub, end - t0 - sub}));
              const int64_t at = (it.head * s.pool + block * s.bs + sub) * D;
              tile_block_bf16(qb.data(), rows, D, kc + at, vc + at, t0 + sub, count_keys, last.data(), s.scale, st);
            }
          }
          for (int r = 0; r < rows; ++r) {
            const int64_t query = it.first + r / s.G;
            tile_store_bf16(1, D, TileState{out.data() + r * D, top.data() + r, total.data() + r},
                            op + ((start + query) * s.H + it.head * s.G + r % s.G) * D, D);
          }
          continue;
        }
      }
#endif
      tile_loops<T>(s, qf.data(), rows, last.data(), kc, vc, table, it.head, end, out.data(), top.data(),
                    total.data(), kt.data(), vf.data(), op, start + it.first);
    }
  }
}

}  // namespace

torch::Tensor paged_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              const torch::Tensor& block_tables, const torch::Tensor& context_lens,
                              const torch::Tensor& query_starts, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous(), "paged attention: q is contiguous [T, H, D]");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes(),
              "paged attention: caches are contiguous [Hkv, blocks, block_size, D], alike");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type() &&
                  (q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kFloat),
              "paged attention: q and caches in one dtype, bfloat16 or float32");
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), Hkv = k_cache.size(0);
  TORCH_CHECK(k_cache.size(3) == D && D <= kMaxHeadDim && H % Hkv == 0 && H / Hkv <= 8,
              "paged attention: head size (at most 256) and heads per KV head (at most 8) fit the caches");
  const int64_t S = context_lens.numel();
  TORCH_CHECK(block_tables.scalar_type() == torch::kLong && block_tables.dim() == 2 &&
                  block_tables.size(0) == S && block_tables.is_contiguous(),
              "paged attention: block tables are contiguous int64 [sequences, width]");
  TORCH_CHECK(context_lens.scalar_type() == torch::kLong && context_lens.is_contiguous() &&
                  query_starts.scalar_type() == torch::kLong && query_starts.is_contiguous() &&
                  query_starts.numel() == S + 1,
              "paged attention: context lengths int64 [sequences], query starts int64 [sequences + 1]");
  auto out = torch::empty_like(q);
  const int64_t bs = k_cache.size(2), blocks = k_cache.size(1), width = block_tables.size(1);
  const int64_t* tp = block_tables.data_ptr<int64_t>();
  const int64_t* lp = context_lens.data_ptr<int64_t>();
  const int64_t* sp = query_starts.data_ptr<int64_t>();
  TORCH_CHECK(S == 0 || (sp[0] == 0 && sp[S] == T), "paged attention: query starts cover q's rows in order");
  std::vector<Item> items;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t queries = sp[s + 1] - sp[s];
    TORCH_CHECK(queries >= 1 && queries <= lp[s], "paged attention: a sequence has no query, or more than its context");
    TORCH_CHECK(lp[s] <= width * bs, "paged attention: a context is longer than its block table");
    for (int64_t i = 0; i < (lp[s] + bs - 1) / bs; ++i)
      TORCH_CHECK(tp[s * width + i] >= 0 && tp[s * width + i] < blocks, "paged attention: a block id is out of range");
    for (int64_t g = 0; g < Hkv; ++g)
      for (int64_t first = 0; first < queries; first += kTileQueries) items.push_back({s, g, first});
  }
  // NOTE: the longest items first, so the dynamic schedule ends with short ones
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    return lp[a.seq] - (sp[a.seq + 1] - sp[a.seq]) + a.first > lp[b.seq] - (sp[b.seq + 1] - sp[b.seq]) + b.first;
  });
  const Step step{H, Hkv, H / Hkv, D, bs, blocks * bs, width, tp, lp, sp, static_cast<float>(scale)};
  const bool dpbf16 = BASTION_DPBF16 && D % 32 == 0;
  if (q.scalar_type() == torch::kBFloat16)
    run_items<bf16_t>(step, items, reinterpret_cast<const bf16_t*>(q.data_ptr()),
                      reinterpret_cast<const bf16_t*>(k_cache.data_ptr()),
                      reinterpret_cast<const bf16_t*>(v_cache.data_ptr()), reinterpret_cast<bf16_t*>(out.data_ptr()),
                      dpbf16);
  else
    run_items<float>(step, items, q.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
                     out.data_ptr<float>(), false);
  return out;
}

}  // namespace bastion
