// bfloat16 matrix products on weights in a blocked layout: [ceil(N / 16)][K / 2][16][2], i.e.
// for each run of 16 output columns, the K inputs in pairs, the 16 columns' pair side by side
// (the operand layout of `vdpbf16ps`; N is padded with zero rows, K must be even). One layout
// serves every batch size: a tile of MR activation rows times NB blocks of 16 columns keeps
// MR * NB accumulators in registers and needs no horizontal sums, so one row streams the weight
// at memory speed and many rows run at the dot-product units' speed.
#pragma once

#include <cstdint>
#include <cstring>

#include "dot.h"

namespace bastion {

constexpr int64_t kBlockCols = 16;
constexpr int kTileRows = 6;    // activation rows per tile
constexpr int kTileBlocks = 4;  // column blocks per tile: 64 columns

// out[m * ldo + b * 16 + c] = sum_k x[m, k] * W[col0 + b * 16 + c, k] for m < MR, b < NB.
// `w` points at the first of the NB blocks; `x` rows are `ldx` apart.
#if BASTION_DPBF16
template <int MR, int NB>
inline void blocked_tile(const bf16_t* w, int64_t K, const bf16_t* x, int64_t ldx, float* out, int64_t ldo) {
  const int64_t pairs = K / 2;
  __m512 acc[MR][NB];
  for (int m = 0; m < MR; ++m)
    for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = (__m512bh)_mm512_loadu_si512(w + (b * pairs + p) * 2 * kBlockCols);
    for (int m = 0; m < MR; ++m) {
      int32_t pair;
      std::memcpy(&pair, x + m * ldx + 2 * p, 4);
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
      for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_dpbf16_ps(acc[m][b], wv[b], xv);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(out + m * ldo + b * kBlockCols, acc[m][b]);
}
#else
template <int MR, int NB>
inline void blocked_tile(const bf16_t* w, int64_t K, const bf16_t* x, int64_t ldx, float* out, int64_t ldo) {
  const int64_t pairs = K / 2;
  for (int m = 0; m < MR; ++m) {
    for (int b = 0; b < NB; ++b) {
      float acc[kBlockCols] = {};
      for (int64_t p = 0; p < pairs; ++p) {
        const bf16_t* wp = w + (b * pairs + p) * 2 * kBlockCols;
        const float x0 = bf16_to_float(x[m * ldx + 2 * p]), x1 = bf16_to_float(x[m * ldx + 2 * p + 1]);
        for (int c = 0; c < kBlockCols; ++c)
          acc[c] += bf16_to_float(wp[2 * c]) * x0 + bf16_to_float(wp[2 * c + 1]) * x1;
      }
      for (int c = 0; c < kBlockCols; ++c) out[m * ldo + b * kBlockCols + c] = acc[c];
    }
  }
}
#endif

template <int MR>
inline void blocked_tile_rows(int nb, const bf16_t* w, int64_t K, const bf16_t* x, int64_t ldx, float* out,
                              int64_t ldo) {
  switch (nb) {
    case 4: blocked_tile<MR, 4>(w, K, x, ldx, out, ldo); break;
    case 3: blocked_tile<MR, 3>(w, K, x, ldx, out, ldo); break;
    case 2: blocked_tile<MR, 2>(w, K, x, ldx, out, ldo); break;
    default: blocked_tile<MR, 1>(w, K, x, ldx, out, ldo); break;
  }
}

// One tile of `mr` (<= 6) rows and `nb` (<= 4) blocks into out [mr][ldo] floats.
inline void blocked_tile_any(int mr, int nb, const bf16_t* w, int64_t K, const bf16_t* x, int64_t ldx,
                             float* out, int64_t ldo) {
  switch (mr) {
    case 6: blocked_tile_rows<6>(nb, w, K, x, ldx, out, ldo); break;
    case 5: blocked_tile_rows<5>(nb, w, K, x, ldx, out, ldo); break;
    case 4: blocked_tile_rows<4>(nb, w, K, x, ldx, out, ldo); break;
    case 3: blocked_tile_rows<3>(nb, w, K, x, ldx, out, ldo); break;
    case 2: blocked_tile_rows<2>(nb, w, K, x, ldx, out, ldo); break;
    default: blocked_tile_rows<1>(nb, w, K, x, ldx, out, ldo); break;
  }
}

// This thread's run of column blocks [b0, b1) when `nthreads` split `blocks` in runs of four.
inline void thread_blocks(int64_t blocks, int thread, int nthreads, int64_t* b0, int64_t* b1) {
  thread_rows(blocks, thread, nthreads, b0, b1);
}

// For every tile of this thread's blocks [b0, b1) and all M rows of x, call
// `finish(m0, rows, col0, cols, tile)` with the tile's float sums (rows x 64, `cols` valid).
template <typename Finish>
inline void blocked_product(const bf16_t* w, int64_t N, int64_t K, const bf16_t* x, int64_t M, int64_t b0,
                            int64_t b1, Finish&& finish) {
  float tile[kTileRows * kTileBlocks * kBlockCols];
  const int64_t ldo = kTileBlocks * kBlockCols;
  for (int64_t b = b0; b < b1; b += kTileBlocks) {
    const int nb = static_cast<int>(b1 - b < kTileBlocks ? b1 - b : kTileBlocks);
    const bf16_t* wb = w + b * K * kBlockCols;
    const int64_t col0 = b * kBlockCols;
    const int64_t cols = (N - col0 < nb * kBlockCols) ? N - col0 : nb * kBlockCols;
    for (int64_t m0 = 0; m0 < M; m0 += kTileRows) {
      const int mr = static_cast<int>(M - m0 < kTileRows ? M - m0 : kTileRows);
      blocked_tile_any(mr, nb, wb, K, x + m0 * K, K, tile, ldo);
      finish(m0, mr, col0, cols, tile, ldo);
    }
  }
}

}  // namespace bastion
