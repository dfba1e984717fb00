// Parameters from a ModelSource into a run: each rank's own ZeRO slices (--init_from, eval), or the whole model in
// one process (sample).
#include <algorithm>
#include <vector>

#include "ckpt/model_source.hpp"
#include "core/errors.hpp"
#include "core/generate.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/shard.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {
namespace detail {
std::string agree_error(MpiComm& comm, const std::string& local);
}  // namespace detail

namespace {

/// Elements staged per read where the backend's memory is not host memory (16 MiB; a multiple of the checksum chunk,
/// so a checkpoint source still verifies each chunk whole).
constexpr size_t kStageElems = size_t(4) << 20;

void check_same_model(const ModelSource& src, const ModelConfig& model) {
  const std::vector<std::string> diffs = diff_model_config(src.config(), model);
  ZT_CHECK(diffs.empty(), "{} ({}) is a different model from the one built: {}", src.path(), src.format(),
           fmt::join(diffs, "; "));
}

/// Tensor elements [a, b) from the source into backend memory at dst.
void read_into(const ModelSource& src, const TensorSpec& t, size_t a, size_t b, float* dst, Backend& be,
               std::vector<float>& staging) {
  if (be.host_memory()) {
    src.read(t, a, b, dst);
    return;
  }
  for (size_t e = a; e < b;) {
    const size_t e1 = std::min(b, (e / kStageElems + 1) * kStageElems);
    staging.resize(e1 - e);
    src.read(t, e, e1, staging.data());
    be.from_host(dst + (e - a), staging.data(), e1 - e);
    e = e1;
  }
}

}  // namespace

void init_params_from(const ModelSource& src, ZeroEngine& engine, MpiComm& comm) {
  const ParamTable& table = engine.table();
  Backend& be = engine.backend();
  std::string err;
  try {
    check_same_model(src, table.config());
    std::vector<float> staging;
    for (size_t part = 0; part < engine.n_parts(); ++part) {
      const ZeroEngine::OwnedSlice s = engine.owned_slice(part);
      // Padding (wte's rows past vocab, ZeRO's tail) stays zero; so does the fresh optimizer state (none for a
      // frozen tensor).
      be.zero(s.params, s.end - s.begin);
      for (const Piece& pc : engine.owned_pieces(part)) {
        read_into(src, table.tensors()[size_t(pc.tensor)], pc.tensor_offset, pc.tensor_offset + pc.count,
                  s.params + (pc.flat_offset - s.begin), be, staging);
        for (int k = 0; k < 2; ++k)
          if (float* moment = engine.owned_moment(part, k, pc.flat_offset)) be.zero(moment, pc.count);
      }
    }
  } catch (const Error& e) {
    err = e.what();
  }
  err = detail::agree_error(comm, err);
  if (!err.empty()) throw Error(err);
  engine.finish_load(0);
}

void read_full_params(const ModelSource& src, FullParams& params) {
  const ParamTable& table = params.table();
  check_same_model(src, table.config());
  std::vector<float> staging;
  for (const TensorSpec& t : table.tensors())
    read_into(src, t, 0, t.numel(), params.unit(t.unit) + t.unit_offset, params.backend(), staging);
}

}  // namespace zt
