// Shard arithmetic: padding a unit's flat buffer to equal shards and cutting tensors at shard boundaries.
#include "sharding/shard.hpp"

#include <algorithm>
#include <limits>

#include "core/errors.hpp"

namespace zt {

size_t ShardLayout::begin(int rank) const {
  ZT_CHECK(rank >= 0 && rank < world_size, "rank {} is outside a shard layout over {} ranks", rank, world_size);
  return size_t(rank) * shard_numel;
}

size_t ShardLayout::end(int rank) const { return begin(rank) + shard_numel; }

ShardLayout make_shard_layout(size_t numel, int world_size, size_t align) {
  ZT_CHECK(world_size >= 1, "world_size must be at least 1, got {}", world_size);
  ZT_CHECK(align >= 1, "shard alignment must be at least 1 element, got {}", align);
  const size_t max = std::numeric_limits<size_t>::max();
  ZT_CHECK(align <= max / size_t(world_size), "shard alignment {} x world_size {} overflows", align, world_size);
  const size_t multiple = align * size_t(world_size);
  ZT_CHECK(numel <= max - (multiple - 1), "a unit of {} elements cannot be padded to a multiple of {}", numel,
           multiple);
  ShardLayout layout;
  layout.numel = numel;
  layout.padded_numel = (numel + multiple - 1) / multiple * multiple;
  layout.shard_numel = layout.padded_numel / size_t(world_size);
  layout.world_size = world_size;
  return layout;
}

std::vector<Piece> pieces_in_range(const std::vector<TensorExtent>& tensors, size_t begin, size_t end) {
  ZT_CHECK(begin <= end, "flat range [{}, {}) is reversed", begin, end);
  std::vector<Piece> pieces;
  size_t prev_end = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorExtent& t = tensors[i];
    ZT_CHECK(t.numel <= std::numeric_limits<size_t>::max() - t.unit_offset,
             "tensor {} at offset {} with {} elements overflows the flat index", t.tensor, t.unit_offset, t.numel);
    // Validating every extent (not only those near the range) keeps a bad layout from passing silently on some ranks.
    ZT_CHECK(t.unit_offset >= prev_end,
             "tensor {} starts at flat offset {} but the previous tensor ends at {} (tensors must be sorted and "
             "must not overlap)",
             t.tensor, t.unit_offset, prev_end);
    const size_t t_end = t.unit_offset + t.numel;
    prev_end = t_end;
    const size_t lo = std::max(begin, t.unit_offset);
    const size_t hi = std::min(end, t_end);
    if (lo < hi) pieces.push_back(Piece{t.tensor, lo - t.unit_offset, lo, hi - lo});
  }
  return pieces;
}

std::vector<size_t> cut_into_parts(const std::vector<CutTensor>& tensors, size_t unit_numel, size_t max_part) {
  ZT_CHECK(max_part >= 1, "a part must hold at least one element");
  size_t at = 0;
  for (const CutTensor& t : tensors) {
    ZT_CHECK(t.unit_offset == at, "tensors must tile the unit in order: one starts at {}, expected {}", t.unit_offset,
             at);
    at += t.numel;
  }
  ZT_CHECK(at == unit_numel, "tensors cover {} elements of a unit of {}", at, unit_numel);
  std::vector<size_t> begins = {0};
  size_t part_begin = 0;
  for (size_t i = 0; i < tensors.size();) {
    // The group: this tensor and those that join it.
    size_t j = i + 1;
    while (j < tensors.size() && tensors[j].joins_previous) ++j;
    const size_t group_begin = tensors[i].unit_offset;
    const size_t group_end = tensors[j - 1].unit_offset + tensors[j - 1].numel;
    if (group_begin > part_begin && group_end - part_begin > max_part) {
      begins.push_back(group_begin);
      part_begin = group_begin;
    }
    i = j;
  }
  return begins;
}

}  // namespace zt
