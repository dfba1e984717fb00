// A zerotrain checkpoint as a ModelSource: its parameters only (never optimizer state or progress), read by
// hyperslab from model.h5 with every checksum chunk that starts in a read verified against the manifest.
#include <algorithm>

#include "ckpt/checkpoint.hpp"
#include "ckpt/direct_read.hpp"
#include "ckpt/h5.hpp"
#include "ckpt/model_formats.hpp"

namespace zt {
namespace detail {
void select_range(hid_t space, const std::vector<int64_t>& shape, size_t a, size_t b);
}  // namespace detail

namespace {

class CheckpointSource final : public ModelSource {
 public:
  explicit CheckpointSource(const std::string& dir) : dir_(dir) {
    path_ = dir + "/" + kCheckpointFile;
    manifest_ = read_manifest(dir);
    check_format_version(manifest_, path_);
    TrainConfig unused;
    configs_from_manifest(manifest_, config_, unused);
    config_.validate();
    h5_quiet();
    // One process reading its own slices: the default (POSIX) driver, no MPI-IO.
    file_ = H5Id(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    ZT_CHECK(file_.get() >= 0, "cannot open checkpoint file {} (truncated or not HDF5?): {}", path_, h5_error_stack());
  }

  std::string format() const override { return fmt::format("zerotrain checkpoint ({})", dir_); }
  std::string field_origin(const std::string& field) const override { return fmt::format("manifest model.{}", field); }

  void read(const TensorSpec& t, size_t a, size_t b, float* dst) const override {
    if (a == b) return;
    const std::string name = "params/" + t.name;
    const size_t K = kChecksumChunkElems;
    // Read on to the end of the last checksum chunk that starts in [a, b), so that chunk is verified whole; the
    // chunks that start before a are verified by whoever reads them from their start.
    const size_t ext_b = std::min(t.numel(), ((b - 1) / K + 1) * K);
    const bool extend = (b - 1) / K * K >= a && ext_b > b;
    std::vector<float> ext(extend ? ext_b - a : 0);
    float* buf = extend ? ext.data() : dst;
    const size_t buf_b = extend ? ext_b : b;
    ZT_CHECK(H5Lexists(file_, name.c_str(), H5P_DEFAULT) > 0, "checkpoint {}: dataset {} is missing", path_, name);
    H5Id dset(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
    ZT_CHECK(dset.get() >= 0, "checkpoint {}: cannot open dataset {}: {}", path_, name, h5_error_stack());
    H5Id fspace(H5Dget_space(dset), H5Sclose);
    std::vector<hsize_t> dims(t.shape.size());
    ZT_CHECK(H5Sget_simple_extent_ndims(fspace) == int(dims.size()) &&
                 H5Sget_simple_extent_dims(fspace, dims.data(), nullptr) >= 0 &&
                 std::vector<int64_t>(dims.begin(), dims.end()) == t.shape,
             "checkpoint {}: dataset {} does not have shape [{}]", path_, name, fmt::join(t.shape, ", "));
    detail::select_range(fspace, t.shape, a, buf_b);
    const hsize_t count = buf_b - a;
    H5Id mspace(H5Screate_simple(1, &count, nullptr), H5Sclose);
    ZT_CHECK(H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, buf) >= 0,
             "checkpoint {}: reading {} failed: {}", path_, name, h5_error_stack());
    const auto& entry = manifest_["datasets"][name];
    ZT_CHECK(
        entry.contains("chunks") && entry["chunks"].is_array() && entry["chunks"].size() == (t.numel() + K - 1) / K,
        "checkpoint {}: the manifest entry of {} lacks its chunk digests", path_, name);
    for (size_t c = (a + K - 1) / K; c * K < b; ++c) {
      const size_t c0 = c * K, c1 = std::min(t.numel(), c0 + K);
      const uint64_t want = std::stoull(entry["chunks"][c].get<std::string>(), nullptr, 16);
      const uint64_t got = chunk_digest(buf + (c0 - a), c1 - c0);
      if (got != want) throw CheckpointError(checksum_mismatch(path_, name, c, c0, c1, got, want));
    }
    if (extend) std::copy(ext.begin(), ext.begin() + long(b - a), dst);
  }

 private:
  std::string dir_;
  nlohmann::json manifest_;
  H5Id file_;
};

}  // namespace

std::unique_ptr<ModelSource> open_checkpoint_model(const std::string& dir) {
  return std::make_unique<CheckpointSource>(dir);
}

}  // namespace zt
