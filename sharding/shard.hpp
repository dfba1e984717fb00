// Shard arithmetic: how a unit's flat buffer is padded and split over ranks, and which tensor pieces a range holds.
#pragma once

#include <cstddef>
#include <vector>

namespace zt {

/// How one unit's flat buffer of numel elements is split over world_size ranks.
struct ShardLayout {
  size_t numel = 0;         ///< logical elements (tensors plus the gaps between them)
  size_t padded_numel = 0;  ///< numel rounded up to a multiple of world_size * align; padding only at the end
  size_t shard_numel = 0;   ///< padded_numel / world_size: every rank owns the same count
  int world_size = 1;       ///< ranks the buffer is split over

  /// First flat element owned by rank: rank * shard_numel.
  size_t begin(int rank) const;
  /// One past the last flat element owned by rank (may lie in the padding past numel).
  size_t end(int rank) const;
};

/// padded_numel = numel rounded up to a multiple of world_size*align (align in elements, default 16);
/// shard_numel = padded/world_size. numel = 0 gives an empty layout (every shard empty).
ShardLayout make_shard_layout(size_t numel, int world_size, size_t align = 16);

/// A tensor inside a unit's flat buffer: its logical elements are [unit_offset, unit_offset+numel).
struct TensorExtent {
  int tensor = 0;          ///< caller's tensor id, copied into the pieces
  size_t unit_offset = 0;  ///< first flat element of the tensor
  size_t numel = 0;        ///< elements of the tensor
};

/// Part of one tensor that falls inside a flat range: tensor elements [tensor_offset, +count) live at flat
/// [flat_offset, +count).
struct Piece {
  int tensor = 0;            ///< TensorExtent::tensor
  size_t tensor_offset = 0;  ///< first element inside the tensor
  size_t flat_offset = 0;    ///< the same element's position in the unit's flat buffer
  size_t count = 0;          ///< elements in the piece (never 0)
};

/// A part of a unit: flat range [begin, end) of the unit's buffer, sharded over the ranks on its own. Rank r owns
/// [begin + r·S, begin + (r+1)·S) (S = layout.shard_numel; shards may reach into the padding past end).
struct PartLayout {
  int unit = 0;
  size_t begin = 0, end = 0;
  ShardLayout layout;
};

/// A tensor's place for cutting a unit into parts: its extent, and whether an op reads it together with the tensor
/// before it (a bias with its weight), so that no cut may fall between them.
struct CutTensor {
  size_t unit_offset = 0;  ///< first flat element
  size_t numel = 0;        ///< flat elements (storage)
  bool joins_previous = false;
};

/// Cuts a unit of unit_numel flat elements into parts of at most max_part elements where it can: flat ranges
/// [begin, end) that tile the unit, cut only between tensors (never between a tensor and one that joins it), filled
/// greedily in flat order. A group of tensors larger than max_part is a part of its own. Returns the parts' begins
/// (the first is 0; each part ends where the next begins, the last at unit_numel). A unit of at most max_part
/// elements is one part. Throws zt::Error when max_part is 0 or the tensors do not tile [0, unit_numel) in order.
std::vector<size_t> cut_into_parts(const std::vector<CutTensor>& tensors, size_t unit_numel, size_t max_part);

/// Pieces of the tensors (sorted by unit_offset, non-overlapping; gaps = padding) that intersect [begin,end), in
/// flat order. Throws zt::Error when the tensors are unsorted or overlap, or when begin > end.
std::vector<Piece> pieces_in_range(const std::vector<TensorExtent>& tensors, size_t begin, size_t end);

}  // namespace zt
