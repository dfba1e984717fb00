// Shard arithmetic: padding, contiguous disjoint shards, and every tensor element in exactly one rank's pieces.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "sharding/shard.hpp"
#include "test/test_util.hpp"

namespace {

using zt::make_shard_layout;
using zt::Piece;
using zt::pieces_in_range;
using zt::ShardLayout;
using zt::TensorExtent;

// Checks the layout invariants: equal contiguous disjoint shards that tile [0, padded) and padding only at the end.
void check_layout(const ShardLayout& l, size_t numel, int world_size, size_t align) {
  INFO("numel " << numel << " world_size " << world_size << " align " << align);
  CHECK(l.numel == numel);
  CHECK(l.world_size == world_size);
  CHECK(l.padded_numel >= numel);
  CHECK(l.padded_numel % (size_t(world_size) * align) == 0);
  // Minimal padding: less than one multiple of world_size * align.
  CHECK(l.padded_numel - numel < size_t(world_size) * align);
  CHECK(l.shard_numel * size_t(world_size) == l.padded_numel);
  CHECK(l.shard_numel % align == 0);
  size_t next = 0;
  for (int r = 0; r < world_size; ++r) {
    CHECK(l.begin(r) == next);
    CHECK(l.end(r) - l.begin(r) == l.shard_numel);
    next = l.end(r);
  }
  CHECK(next == l.padded_numel);
}

// Places tensors with the given sizes and gaps in flat order; returns the unit's numel.
size_t place(const std::vector<size_t>& sizes, const std::vector<size_t>& gaps, std::vector<TensorExtent>* out) {
  size_t off = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    off += gaps[i];
    out->push_back(TensorExtent{int(i) + 100, off, sizes[i]});
    off += sizes[i];
  }
  return off;
}

// Every element of every tensor appears in exactly one rank's pieces, at the right flat position, inside that
// rank's shard; pieces are in flat order and never touch gaps or padding.
void check_cover(const std::vector<TensorExtent>& tensors, const ShardLayout& l) {
  std::vector<std::vector<int>> seen(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) seen[i].assign(tensors[i].numel, 0);
  for (int r = 0; r < l.world_size; ++r) {
    std::vector<Piece> pieces = pieces_in_range(tensors, l.begin(r), l.end(r));
    size_t prev_flat_end = l.begin(r);
    for (const Piece& p : pieces) {
      INFO("rank " << r << " tensor " << p.tensor << " tensor_offset " << p.tensor_offset << " flat_offset "
                   << p.flat_offset << " count " << p.count);
      REQUIRE(p.tensor >= 100);
      REQUIRE(size_t(p.tensor - 100) < tensors.size());
      const TensorExtent& t = tensors[size_t(p.tensor - 100)];
      CHECK(p.count > 0);
      CHECK(p.flat_offset >= prev_flat_end);
      CHECK(p.flat_offset == t.unit_offset + p.tensor_offset);
      CHECK(p.flat_offset + p.count <= l.end(r));
      REQUIRE(p.tensor_offset + p.count <= t.numel);
      prev_flat_end = p.flat_offset + p.count;
      for (size_t k = 0; k < p.count; ++k) seen[size_t(p.tensor - 100)][p.tensor_offset + k] += 1;
    }
  }
  size_t wrong = 0;
  for (const auto& s : seen)
    for (int c : s) wrong += (c != 1);
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("shard layout pads to world_size x align and splits evenly", "[shard]") {
  for (int world_size : {1, 2, 3, 4, 5, 7, 8, 13}) {
    for (size_t align : {size_t(1), size_t(2), size_t(16), size_t(64)}) {
      for (size_t numel : {size_t(0), size_t(1), size_t(2), size_t(3), size_t(7), size_t(16), size_t(17), size_t(97),
                           size_t(1009), size_t(4096), size_t(65537)}) {
        check_layout(make_shard_layout(numel, world_size, align), numel, world_size, align);
      }
    }
  }
}

TEST_CASE("shard layout: concrete uneven sizes", "[shard]") {
  // world_size 3, numel 1: one multiple of 3*16 = 48, every rank owns 16, rank 0 holds the element.
  ShardLayout a = make_shard_layout(1, 3);
  CHECK(a.padded_numel == 48);
  CHECK(a.shard_numel == 16);
  CHECK(a.begin(2) == 32);
  CHECK(a.end(2) == 48);
  // numel smaller than world size with align 1: one element per rank, ranks 2..4 own only padding.
  ShardLayout b = make_shard_layout(2, 5, 1);
  CHECK(b.padded_numel == 5);
  CHECK(b.shard_numel == 1);
  // Primes: 1009 over 7 ranks, align 1 -> 1015 = 7 * 145.
  ShardLayout c = make_shard_layout(1009, 7, 1);
  CHECK(c.padded_numel == 1015);
  CHECK(c.shard_numel == 145);
  // Already a multiple: no padding.
  ShardLayout d = make_shard_layout(96, 3, 16);
  CHECK(d.padded_numel == 96);
  CHECK(d.shard_numel == 32);
  ShardLayout e = make_shard_layout(0, 4, 16);
  CHECK(e.padded_numel == 0);
  CHECK(e.shard_numel == 0);
  CHECK(e.begin(3) == 0);
  CHECK(e.end(3) == 0);
}

TEST_CASE("shard layout rejects bad arguments", "[shard]") {
  CHECK_THROWS_AS(make_shard_layout(10, 0), zt::Error);
  CHECK_THROWS_AS(make_shard_layout(10, -2), zt::Error);
  CHECK_THROWS_AS(make_shard_layout(10, 3, 0), zt::Error);
  CHECK_THROWS_AS(make_shard_layout(SIZE_MAX - 3, 3, 16), zt::Error);
  ShardLayout l = make_shard_layout(10, 3);
  CHECK_THROWS_AS(l.begin(3), zt::Error);
  CHECK_THROWS_AS(l.begin(-1), zt::Error);
}

TEST_CASE("pieces_in_range: hand-checked cut across a shard boundary", "[shard]") {
  // Tensors: id 0 = [0,5), gap [5,6), id 1 = [6,10), padding up to 12 with world 3 align 2 -> shards of 4.
  std::vector<TensorExtent> tensors = {{0, 0, 5}, {1, 6, 4}};
  ShardLayout l = make_shard_layout(10, 3, 2);
  REQUIRE(l.shard_numel == 4);
  auto p0 = pieces_in_range(tensors, l.begin(0), l.end(0));
  REQUIRE(p0.size() == 1);
  CHECK((p0[0].tensor == 0 && p0[0].tensor_offset == 0 && p0[0].flat_offset == 0 && p0[0].count == 4));
  auto p1 = pieces_in_range(tensors, l.begin(1), l.end(1));
  REQUIRE(p1.size() == 2);
  CHECK((p1[0].tensor == 0 && p1[0].tensor_offset == 4 && p1[0].flat_offset == 4 && p1[0].count == 1));
  CHECK((p1[1].tensor == 1 && p1[1].tensor_offset == 0 && p1[1].flat_offset == 6 && p1[1].count == 2));
  auto p2 = pieces_in_range(tensors, l.begin(2), l.end(2));
  REQUIRE(p2.size() == 1);
  CHECK((p2[0].tensor == 1 && p2[0].tensor_offset == 2 && p2[0].flat_offset == 8 && p2[0].count == 2));
  // A range that is all gap or padding holds no pieces; an empty range neither.
  CHECK(pieces_in_range(tensors, 5, 6).empty());
  CHECK(pieces_in_range(tensors, 10, 12).empty());
  CHECK(pieces_in_range(tensors, 3, 3).empty());
}

TEST_CASE("pieces_in_range rejects unsorted or overlapping tensors", "[shard]") {
  CHECK_THROWS_AS(pieces_in_range({{0, 4, 4}, {1, 0, 4}}, 0, 8), zt::Error);
  CHECK_THROWS_AS(pieces_in_range({{0, 0, 5}, {1, 4, 4}}, 0, 8), zt::Error);
  CHECK_THROWS_AS(pieces_in_range({{0, 0, 5}}, 4, 2), zt::Error);
  CHECK_NOTHROW(pieces_in_range({{0, 0, 4}, {1, 4, 0}, {2, 4, 4}}, 0, 8));
}

TEST_CASE("every tensor element is covered exactly once: uneven fixed cases", "[shard]") {
  struct Case {
    std::vector<size_t> sizes, gaps;
  };
  std::vector<Case> cases = {
      {{1}, {0}},                           // numel 1
      {{2}, {0}},                           // numel smaller than most world sizes
      {{7, 11, 13}, {0, 0, 0}},             // primes, back to back
      {{3, 0, 5, 1}, {0, 2, 0, 3}},         // an empty tensor and gaps
      {{1009, 1, 997}, {0, 17, 5}},         // primes with gaps
      {{4096, 4096 * 3, 4096}, {0, 0, 0}},  // aligned sizes
  };
  for (const Case& c : cases) {
    std::vector<TensorExtent> tensors;
    size_t numel = place(c.sizes, c.gaps, &tensors);
    for (int world_size : {1, 2, 3, 4, 5, 7}) {
      for (size_t align : {size_t(1), size_t(16)}) {
        INFO("numel " << numel << " world_size " << world_size << " align " << align);
        ShardLayout l = make_shard_layout(numel, world_size, align);
        check_layout(l, numel, world_size, align);
        check_cover(tensors, l);
      }
    }
  }
}

TEST_CASE("every tensor element is covered exactly once: random sizes", "[shard]") {
  const uint64_t seed = zt::test::test_seed();
  std::mt19937_64 gen(seed);
  for (int iter = 0; iter < 300; ++iter) {
    INFO("seed " << seed << " iteration " << iter);
    const size_t n_tensors = std::uniform_int_distribution<size_t>(1, 12)(gen);
    std::vector<size_t> sizes(n_tensors), gaps(n_tensors);
    for (size_t i = 0; i < n_tensors; ++i) {
      // Mostly small tensors (edge cases near shard boundaries), some large.
      sizes[i] = (gen() % 4 == 0) ? std::uniform_int_distribution<size_t>(0, 50000)(gen)
                                  : std::uniform_int_distribution<size_t>(0, 40)(gen);
      gaps[i] = (gen() % 3 == 0) ? std::uniform_int_distribution<size_t>(0, 20)(gen) : 0;
    }
    std::vector<TensorExtent> tensors;
    const size_t numel = place(sizes, gaps, &tensors);
    const int world_size = std::uniform_int_distribution<int>(1, 17)(gen);
    const size_t align = size_t(1) << std::uniform_int_distribution<int>(0, 6)(gen);
    INFO("numel " << numel << " world_size " << world_size << " align " << align);
    ShardLayout l = make_shard_layout(numel, world_size, align);
    check_layout(l, numel, world_size, align);
    check_cover(tensors, l);
  }
}

TEST_CASE("cut_into_parts: greedy cuts between groups, never inside one", "[shard]") {
  using zt::cut_into_parts;
  using zt::CutTensor;
  // A GPT-2 block of width 4: ln_1 (w, b), c_attn (48, 12), attn.c_proj (16, 4), ln_2, c_fc (64, 16), c_proj (64, 4).
  std::vector<CutTensor> block;
  size_t at = 0;
  for (auto [n, joins] : std::vector<std::pair<size_t, bool>>{{4, false},
                                                              {4, true},
                                                              {48, false},
                                                              {12, true},
                                                              {16, false},
                                                              {4, true},
                                                              {4, false},
                                                              {4, true},
                                                              {64, false},
                                                              {16, true},
                                                              {64, false},
                                                              {4, true}}) {
    block.push_back({at, n, joins});
    at += n;
  }
  const size_t numel = at;  // 244
  CHECK(cut_into_parts(block, numel, numel) == std::vector<size_t>{0});
  CHECK(cut_into_parts(block, numel, 1000) == std::vector<size_t>{0});
  // 100: ln_1 + c_attn + c_proj + ln_2 = 96 fit; c_fc (80) starts a part, c_proj (68) another.
  CHECK(cut_into_parts(block, numel, 100) == (std::vector<size_t>{0, 96, 176}));
  // 60: c_attn (60) fits after ln_1 (8)? 68 > 60, so ln_1 alone; c_attn exactly 60; c_proj + ln_2 = 28; c_fc (80)
  // and c_proj (68) are larger than a part and stand alone.
  CHECK(cut_into_parts(block, numel, 60) == (std::vector<size_t>{0, 8, 68, 96, 176}));
  // 1: every group alone, and a weight never apart from its bias.
  CHECK(cut_into_parts(block, numel, 1) == (std::vector<size_t>{0, 8, 68, 88, 96, 176}));
  CHECK_THROWS_AS(cut_into_parts(block, numel, 0), zt::Error);
  CHECK_THROWS_AS(cut_into_parts(block, numel + 1, 10), zt::Error);
  std::vector<CutTensor> gap = {{0, 4, false}, {5, 4, false}};
  CHECK_THROWS_AS(cut_into_parts(gap, 9, 10), zt::Error);
}
