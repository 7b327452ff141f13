// The bfloat16 tile of paged attention on `vdpbf16ps` (AVX512-BF16): `rows` query rows (queries
// x the query heads of one KV head) meet one cache block of keys at a time, flash-style (an
// online softmax in float32, the output rescaled as the maximum grows).
//
// Scores: the block's keys are transposed into pairs, [D/2][16 keys] of (d, d+1) bf16 pairs, so
// one `vdpbf16ps` adds one pair of dimensions of a query row to 16 keys' scores: no horizontal
// sums. Values: two keys' rows are interleaved per dimension, [8 key pairs][D] of (t, t+1)
// pairs, and the row's probabilities of those two keys, rounded to bfloat16, are broadcast: one
// `vdpbf16ps` adds two keys to 16 dimensions. `unpack` interleaves within 128-bit lanes, so each
// 32 dimensions' accumulators hold them in the order `kDimOrder` says; the store undoes it.
#pragma once

#include "dot.h"

#if BASTION_DPBF16
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace bastion {

constexpr int kKeys = 16;        // keys per step of the tile: one lane each
constexpr int kMaxPairs = 128;   // D / 2 for D up to 256

// Where dimension d of a 32-dimension chunk sits among its two accumulators (after unpack).
inline int packed_dim(int d) {
  const int lane = d / 8, within = d % 8;  // 128-bit lane of the source row, position in it
  return (within < 4 ? 0 : 16) + lane * 4 + within % 4;
}

// One tile's running state and scratch: per row the output accumulators (D floats, packed
// order), the running maximum and sum.
struct TileState {
  float* out;    // [rows][D]
  float* top;    // [rows]
  float* total;  // [rows]
};

// dst[p * 16 + t] = rows[t][p] for 16 rows of 16 32-bit values (rows `ld` apart; rows past
// `count` read as zeros): one 16 x 16 transpose in registers.
inline void transpose16(const int32_t* rows, int64_t ld, int count, int32_t* dst) {
  __m512i r[16];
  for (int t = 0; t < 16; ++t) r[t] = t < count ? _mm512_loadu_si512(rows + t * ld) : _mm512_setzero_si512();
  __m512i a[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  // r[4i + j] holds, per 128-bit lane L, the values of rows 4i..4i+3 at column 4L + j
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      a[8 * i + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      a[8 * i + 4 + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  }
  // a[8i + j]: lanes (rows 8i..8i+3, 8i+4..8i+7) at columns (j, 8+j) / a[8i+4+j]: at (4+j, 12+j)
  for (int j = 0; j < 4; ++j) {
    const __m512i c0 = _mm512_shuffle_i32x4(a[j], a[8 + j], 0x88);       // column j, then 8 + j
    const __m512i c1 = _mm512_shuffle_i32x4(a[j], a[8 + j], 0xdd);
    const __m512i c2 = _mm512_shuffle_i32x4(a[4 + j], a[12 + j], 0x88);  // column 4 + j, then 12 + j
    const __m512i c3 = _mm512_shuffle_i32x4(a[4 + j], a[12 + j], 0xdd);
    _mm512_store_si512(dst + j * 16, c0);
    _mm512_store_si512(dst + (8 + j) * 16, c1);
    _mm512_store_si512(dst + (4 + j) * 16, c2);
    _mm512_store_si512(dst + (12 + j) * 16, c3);
  }
}

// Keys [t0, t0 + count) of one block (count <= 16) at `k`, `v` (rows of D bf16, contiguous)
// against the tile's rows: q [rows][D] bf16, row r's last visible key `last[r]` (causal; keys
// past it are masked).
inline void tile_block_bf16(const bf16_t* q, int rows, int64_t D, const bf16_t* k, const bf16_t* v, int64_t t0,
                            int count, const int64_t* last, float scale, TileState st) {
  const int64_t pairs = D / 2;
  alignas(64) int32_t kt[kMaxPairs * kKeys];  // [pairs][16 keys]
  for (int64_t p0 = 0; p0 < pairs; p0 += 16)
    transpose16(reinterpret_cast<const int32_t*>(k) + p0, pairs, count, kt + p0 * kKeys);
  alignas(64) int32_t vt[kKeys / 2 * kMaxPairs * 2];  // [8 key pairs][D] of (t, t+1), packed order
  for (int kp = 0; kp < kKeys / 2; ++kp) {
    for (int64_t c = 0; c < D; c += 32) {
      const int t = 2 * kp;
      const __m512i a = t < count ? _mm512_loadu_si512(v + t * D + c) : _mm512_setzero_si512();
      const __m512i b = t + 1 < count ? _mm512_loadu_si512(v + (t + 1) * D + c) : _mm512_setzero_si512();
      _mm512_store_si512(vt + kp * D + c, _mm512_unpacklo_epi16(a, b));
      _mm512_store_si512(vt + kp * D + c + 16, _mm512_unpackhi_epi16(a, b));
    }
  }
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i keys = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(t0)));
  const __mmask16 present = static_cast<__mmask16>((1u << count) - 1);
  constexpr int kRowsAtOnce = 4;  // independent dpbf16 chains: one instruction's latency hidden
  for (int r0 = 0; r0 < rows; r0 += kRowsAtOnce) {
    const int nr = std::min(kRowsAtOnce, rows - r0);
    __m512 scores[kRowsAtOnce] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const int32_t* qr = reinterpret_cast<const int32_t*>(q + r0 * D);
    for (int64_t p = 0; p < pairs; ++p) {
      const __m512bh kv = (__m512bh)_mm512_load_si512(kt + p * kKeys);
      for (int i = 0; i < kRowsAtOnce; ++i)
        if (i < nr) scores[i] = _mm512_dpbf16_ps(scores[i], kv, (__m512bh)_mm512_set1_epi32(qr[i * pairs + p]));
    }
    for (int i = 0; i < nr; ++i) {
      const int r = r0 + i;
      const __mmask16 seen = _mm512_cmple_epi32_mask(keys, _mm512_set1_epi32(static_cast<int32_t>(last[r]))) & present;
      if (!seen) continue;
      const __m512 s = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), seen, _mm512_mul_ps(scores[i], _mm512_set1_ps(scale)));
      const float top = std::max(st.top[r], _mm512_reduce_max_ps(s));
      const float shrink = std::isinf(st.top[r]) ? 0.f : exp_approx(st.top[r] - top);
      const __m512 prob = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(s, _mm512_set1_ps(top))));
      st.top[r] = top;
      st.total[r] = st.total[r] * shrink + _mm512_reduce_add_ps(prob);
      alignas(64) bf16_t pb[kKeys];
      _mm256_store_si256(reinterpret_cast<__m256i*>(pb), (__m256i)_mm512_cvtneps_pbh(prob));
      const int32_t* pairs_of_p = reinterpret_cast<const int32_t*>(pb);
      float* o = st.out + r * D;
      const __m512 shrink_v = _mm512_set1_ps(shrink);
      const int used_pairs = (count + 1) / 2;
      for (int64_t c0 = 0; c0 < D; c0 += 64) {  // 4 accumulators at a time: independent chains
        const int chunks = static_cast<int>(std::min<int64_t>(4, (D - c0) / 16));
        __m512 acc[4];
        for (int j = 0; j < chunks; ++j) acc[j] = _mm512_mul_ps(_mm512_loadu_ps(o + c0 + 16 * j), shrink_v);
        for (int kp = 0; kp < used_pairs; ++kp) {
          const __m512bh pv = (__m512bh)_mm512_set1_epi32(pairs_of_p[kp]);
          for (int j = 0; j < chunks; ++j)
            acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)_mm512_load_si512(vt + kp * D + c0 + 16 * j), pv);
        }
        for (int j = 0; j < chunks; ++j) _mm512_storeu_ps(o + c0 + 16 * j, acc[j]);
      }
    }
  }
}

// out[r][d] = the tile's row r, normalized, dimensions back in order.
inline void tile_store_bf16(int rows, int64_t D, TileState st, bf16_t* out, int64_t ld_out) {
  for (int r = 0; r < rows; ++r) {
    const float inv = st.total[r] > 0.f ? 1.f / st.total[r] : 0.f;
    const float* o = st.out + r * D;
    for (int64_t c = 0; c < D; c += 32)
      for (int d = 0; d < 32; ++d) out[r * ld_out + c + d] = float_to_bf16(o[c + packed_dim(d)] * inv);
  }
}

}  // namespace bastion
#endif
