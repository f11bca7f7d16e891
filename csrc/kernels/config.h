// Tile shapes of the kernels, per padded head dim. Every shape is a multiple of 16 (one
// mma k-step); each warp owns 16 query rows (forward, dQ) or 16 keys (dK/dV).
// Chosen to keep the fp32 accumulators within the register file without spills
// (`nvcc -Xptxas -v`, csrc/check_build.sh) and the shared memory within sm_80's 163 KiB;
// not tuned by measurement (no GPU was available when they were written).
#pragma once

namespace btok {

// The padded head dim (64, 128 or 256) the kernels are instantiated for; 0 if none fits.
inline int padded_head_dim(int d) {
  if (d <= 0 || d % 8 != 0) return 0;
  if (d <= 64) return 64;
  if (d <= 128) return 128;
  if (d <= 256) return 256;
  return 0;
}

// A launch grid: x = tile slots, y = heads (what the dispatchers hand to a runner).
struct Grid {
  unsigned x, y;
};

template <int DP>
struct FwdConfig;  // BM query rows per program, BN keys per block
template <> struct FwdConfig<64> { static constexpr int BM = 64, BN = 64; };
template <> struct FwdConfig<128> { static constexpr int BM = 64, BN = 64; };
template <> struct FwdConfig<256> { static constexpr int BM = 64, BN = 32; };

template <int DP>
struct DqConfig;  // BM query rows per program, BN keys per block
template <> struct DqConfig<64> { static constexpr int BM = 64, BN = 64; };
template <> struct DqConfig<128> { static constexpr int BM = 64, BN = 64; };
template <> struct DqConfig<256> { static constexpr int BM = 64, BN = 16; };

// BN keys per program, BM query rows per block; DSPLIT warps share 16 keys, each
// accumulating dK and dV for 1 / DSPLIT of the head dim (at 256, one warp's dK and dV for
// the whole head dim would not fit in registers).
template <int DP>
struct DkdvConfig;
template <> struct DkdvConfig<64> { static constexpr int BN = 64, BM = 64, DSPLIT = 1; };
template <> struct DkdvConfig<128> { static constexpr int BN = 64, BM = 32, DSPLIT = 1; };
template <> struct DkdvConfig<256> { static constexpr int BN = 64, BM = 32, DSPLIT = 2; };

}  // namespace btok
