// Host unit test of csrc/tile_plan.h (run by csrc/check_build.sh and tests/ops/test_cuda_plan.py).
//
// For many (len, b, t) layouts, tile shapes, and both mask kinds, every tile's plan is
// walked block by block and checked pair by pair against the mask:
//  - a visited block holds at least one allowed pair (masked tiles are skipped),
//  - an unmasked block holds only allowed pairs, and reads nothing past the sequence end on
//    the axis it does not own (the kernels zero-fill, but a zero key would still score 0),
//  - the visited blocks cover every allowed pair exactly once;
// and for several packs, every (sequence, tile) gets exactly one program slot, with at most
// one empty slot per sequence. Exit status 0 and one summary line when everything holds.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../tile_plan.h"

namespace {

int g_failures = 0;

void fail(const std::string& what) {
  if (g_failures < 20) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  ++g_failures;
}

std::string where(int len, int b, int t, bool causal, int bm, int bn, int r0, int r1, int c0, int c1) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "len %d b %d t %d %s BM %d BN %d: rows [%d, %d) keys [%d, %d)", len, b, t,
                causal ? "causal" : "bidirectional", bm, bn, r0, r1, c0, c1);
  return buf;
}

// Walks the plan of every query tile (rows_as_tile) or every key tile of one sequence.
long check_sequence(int len, int b, int t, bool causal, int bm, int bn, bool rows_as_tile) {
  std::vector<int> cover(static_cast<size_t>(len) * len, 0);
  long blocks = 0;
  const int tile = rows_as_tile ? bm : bn, step = rows_as_tile ? bn : bm;
  for (int start = 0; start < len; start += tile) {
    const int end = btok::imin(start + tile, len);
    const btok::BlockRange r = rows_as_tile ? btok::key_blocks(start, end, len, b, t, bn, causal)
                                            : btok::row_blocks(start, end, len, b, t, bm, bn, causal);
    if (!(0 <= r.first_full && r.first_full <= r.end_full && r.end_full <= btok::imax(r.num, r.end_full)))
      fail(where(len, b, t, causal, bm, bn, start, end, -1, -1) + ": block counts out of order");
    for (int i = 0; i < r.num; ++i, ++blocks) {
      const int o0 = r.lo + i * step, o1 = o0 + step;
      const int r0 = rows_as_tile ? start : o0, r1 = rows_as_tile ? start + tile : o1;
      const int c0 = rows_as_tile ? o0 : start, c1 = rows_as_tile ? o1 : start + tile;
      const bool masked = r.masked(i);
      int n_ok = 0, n_bad_in_range = 0, n_other_oob = 0;
      for (int row = r0; row < r1; ++row) {
        for (int key = c0; key < c1; ++key) {
          const bool own_in = rows_as_tile ? row < len : key < len;
          const bool other_in = rows_as_tile ? key < len : row < len;
          const bool ok = btok::pair_allowed(row, key, len, b, t, causal);
          if (ok) {
            ++n_ok;
            ++cover[static_cast<size_t>(row) * len + key];
          }
          if (own_in && !other_in) ++n_other_oob;
          if (own_in && other_in && !ok) ++n_bad_in_range;
        }
      }
      const std::string w = where(len, b, t, causal, bm, bn, r0, r1, c0, c1);
      if (o0 < 0) fail(w + ": block starts before the sequence");
      if (n_ok == 0) fail(w + ": visited block with no allowed pair");
      if (!masked && n_other_oob) fail(w + ": unmasked block reads past the sequence end");
      if (!masked && n_bad_in_range) fail(w + ": unmasked block holds a masked pair");
      if (masked && !n_bad_in_range && !n_other_oob) fail(w + ": masked block that needs no mask");
    }
  }
  for (int row = 0; row < len; ++row)
    for (int key = 0; key < len; ++key) {
      const int want = btok::pair_allowed(row, key, len, b, t, causal) ? 1 : 0;
      if (cover[static_cast<size_t>(row) * len + key] != want) {
        char buf[64];
        std::snprintf(buf, sizeof buf, ": pair (%d, %d) covered %d times, want %d", row, key,
                      cover[static_cast<size_t>(row) * len + key], want);
        fail(where(len, b, t, causal, bm, bn, -1, -1, -1, -1) + buf);
        return blocks;
      }
    }
  return blocks;
}

long check_slots(const std::vector<int>& lens, int block) {
  std::vector<int32_t> cu(1, 0);
  for (int l : lens) cu.push_back(cu.back() + l);
  const int n = static_cast<int>(lens.size());
  const int grid = cu.back() / block + n;  // what the launchers launch
  std::vector<int> seen(n, 0), empty(n, 0);
  for (int slot = 0; slot < grid; ++slot) {
    const btok::TileSlot s = btok::find_tile(cu.data(), n, slot, block);
    if (s.seq < 0 || s.seq >= n || s.len != lens[s.seq] || s.bos != cu[s.seq] ||
        s.num_tiles != btok::cdiv(lens[s.seq], block) || s.tile < 0) {
      fail("find_tile: slot " + std::to_string(slot) + " maps to a wrong sequence");
      continue;
    }
    if (s.tile >= s.num_tiles) ++empty[s.seq];
    else if (s.tile != seen[s.seq]) fail("find_tile: tiles of sequence " + std::to_string(s.seq) + " out of order");
    else ++seen[s.seq];
  }
  for (int s = 0; s < n; ++s) {
    if (seen[s] != btok::cdiv(lens[s], block)) fail("find_tile: sequence " + std::to_string(s) + " misses tiles");
    if (empty[s] > 1) fail("find_tile: sequence " + std::to_string(s) + " has several empty slots");
  }
  return grid;
}

}  // namespace

int main() {
  std::vector<std::tuple<int, int, int>> layouts = {
      {1, 0, 1},    {1, 0, 0},   {1, 1, 1},    {7, 3, 5},   {16, 8, 16},  {17, 4, 10},
      {40, 0, 40},  {40, 40, 40}, {50, 13, 29}, {64, 32, 48}, {65, 33, 49}, {97, 70, 74},
      {97, 5, 6},   {100, 0, 0}, {100, 99, 99}, {33, 16, 16}, {48, 31, 33}, {129, 64, 128},
      {200, 63, 65}, {257, 128, 129}};
  std::mt19937 rng(0);
  for (int i = 0; i < 40; ++i) {
    const int len = 1 + static_cast<int>(rng() % 320);
    int b = static_cast<int>(rng() % (len + 1)), t = static_cast<int>(rng() % (len + 1));
    if (b > t) std::swap(b, t);
    layouts.emplace_back(len, b, t);
  }
  // every tile shape the kernels use (csrc/kernels/config.h) and a few odd ones
  const int tiles[][2] = {{16, 16}, {16, 32}, {32, 16}, {32, 64}, {64, 16}, {64, 32},
                          {64, 64}, {16, 128}, {128, 32}, {128, 64}};
  long blocks = 0;
  for (const auto& [len, b, t] : layouts)
    for (const auto& tile : tiles)
      for (bool causal : {true, false})
        for (bool rows_as_tile : {true, false})
          blocks += check_sequence(len, b, t, causal, tile[0], tile[1], rows_as_tile);
  long slots = 0;
  const std::vector<std::vector<int>> packs = {
      {1}, {1000}, {16, 16, 16}, {0, 5, 0, 0, 17}, std::vector<int>(50, 1), {3, 200, 1, 64, 65, 15, 0, 31}};
  for (const auto& pack : packs)
    for (int block : {16, 32, 64, 128}) slots += check_slots(pack, block);
  if (g_failures) {
    std::fprintf(stderr, "tile_plan_test: %d failures\n", g_failures);
    return 1;
  }
  std::printf("tile_plan_test: OK (%zu layouts x %zu tiles x causal/bidirectional: %ld blocks; %ld slots)\n",
              layouts.size(), sizeof tiles / sizeof tiles[0], blocks, slots);
  return 0;
}
