// ModelSource: format detection, raw tensors read by byte range with dtype and orientation converted on the fly,
// dtype conversions, atomic output files and the export dispatch.
#include "ckpt/model_source.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include "ckpt/model_formats.hpp"
#include "core/errors.hpp"

namespace zt {

float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return uint16_t((bits >> 16) | 0x40);  // keep the sign, force a quiet NaN
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);    // to nearest, ties to even
  return uint16_t((bits + rounding) >> 16);
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float mag;
  if (exp == 0)
    mag = std::ldexp(float(mant), -24);  // zero and subnormals: mant * 2^-24, exact in fp32
  else if (exp == 31)
    mag = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else
    mag = std::ldexp(float(mant | 0x400), int(exp) - 25);
  uint32_t bits;
  std::memcpy(&bits, &mag, 4);
  bits |= sign;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

size_t dtype_bytes(DiskDtype d) { return d == DiskDtype::f32 ? 4 : 2; }

void set_model_field(ModelConfig& c, const char* name, int64_t value, const std::string& where) {
  const FieldSpec* f = find_field(name);
  ZT_ASSERT(f != nullptr && f->model);
  TrainConfig unused;
  set_field(*f, value, c, unused, where);
}

void convert_to_float(const unsigned char* src, DiskDtype d, size_t n, float* dst) {
  if (d == DiskDtype::f32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = d == DiskDtype::bf16 ? bf16_to_float(h) : f16_to_float(h);
  }
}

RawModelSource::~RawModelSource() {
  for (int fd : fds_) ::close(fd);
}

int RawModelSource::open_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ZT_CHECK(fd >= 0, "cannot open model file '{}': {}", path, std::strerror(errno));
  fds_.push_back(fd);
  files_.push_back(path);
  return int(fds_.size()) - 1;
}

uint64_t RawModelSource::file_size(int file) const {
  struct stat st {};
  ZT_CHECK(::fstat(fds_[size_t(file)], &st) == 0, "cannot stat model file '{}': {}", files_[size_t(file)],
           std::strerror(errno));
  return uint64_t(st.st_size);
}

void RawModelSource::pread_exact(int file, void* dst, size_t n_bytes, uint64_t offset, const std::string& what) const {
  char* p = static_cast<char*>(dst);
  while (n_bytes > 0) {
    const ssize_t got = ::pread(fds_[size_t(file)], p, n_bytes, off_t(offset));
    if (got < 0 && errno == EINTR) continue;
    ZT_CHECK(got >= 0, "reading {} from '{}' failed: {}", what, files_[size_t(file)], std::strerror(errno));
    ZT_CHECK(got > 0, "model file '{}' ends before byte {} while reading {} (truncated?)", files_[size_t(file)],
             offset + n_bytes, what);
    p += got;
    n_bytes -= size_t(got);
    offset += uint64_t(got);
  }
}

namespace {
constexpr size_t kReadBlockElems = size_t(1) << 20;  // bytes staged per pread: 2-4 MiB
}  // namespace

void RawModelSource::read_stored(const StoredTensor& s, size_t a, size_t b, float* dst) const {
  const size_t esz = dtype_bytes(s.dtype);
  std::vector<unsigned char> buf;
  if (!s.transposed) {
    // Zerotrain's row-major order is the file's: one run of bytes, staged in blocks.
    for (size_t e = a; e < b; e += kReadBlockElems) {
      const size_t n = std::min(kReadBlockElems, b - e);
      buf.resize(n * esz);
      pread_exact(s.file, buf.data(), n * esz, s.offset + e * esz, "tensor " + s.name);
      convert_to_float(buf.data(), s.dtype, n, dst + (e - a));
    }
    return;
  }
  // Logical (i, o) of [rows = in, cols = out] is stored at o * rows + i. The range covers rows i0 .. i1, which each
  // stored column o holds as one run. When those are most of a column, runs of several columns are read at once
  // (the rows between them too: at most as much again); otherwise one read per column, so a rank that owns a few
  // rows reads those and nothing else.
  const size_t R = s.rows, O = s.cols, i0 = a / O, i1 = (b - 1) / O, n_i = i1 - i0 + 1;
  const size_t cols_per_read = 2 * n_i >= R ? std::max<size_t>(1, kReadBlockElems / R) : 1;
  std::vector<float> cols;
  for (size_t o0 = 0; o0 < O; o0 += cols_per_read) {
    const size_t o1 = std::min(O, o0 + cols_per_read), span = (o1 - o0 - 1) * R + n_i;
    buf.resize(span * esz);
    cols.resize(span);
    pread_exact(s.file, buf.data(), span * esz, s.offset + (o0 * R + i0) * esz, "tensor " + s.name);
    convert_to_float(buf.data(), s.dtype, span, cols.data());
    for (size_t o = o0; o < o1; ++o)
      for (size_t i = i0; i <= i1; ++i) {
        const size_t e = i * O + o;
        if (e >= a && e < b) dst[e - a] = cols[(o - o0) * R + (i - i0)];
      }
  }
}

void RawModelSource::read(const TensorSpec& t, size_t a, size_t b, float* dst) const {
  ZT_ASSERT(a <= b && b <= t.numel());
  if (a == b) return;
  const auto it = stored_.find(t.name);
  ZT_ASSERT(it != stored_.end());
  read_stored(it->second, a, b, dst);
  const auto tied = must_equal_.find(t.name);
  if (tied == must_equal_.end()) return;
  // Each reader checks its own slice, so together the ranks compare the whole copy once.
  std::vector<float> copy(b - a);
  read_stored(tied->second, a, b, copy.data());
  for (size_t e = 0; e < b - a; ++e)
    ZT_CHECK(std::memcmp(&copy[e], &dst[e], 4) == 0,
             "'{}': {} differs from {} at element {} ({} vs {}); zerotrain ties the LM head to the token embedding, "
             "so a model with its own LM head cannot be loaded",
             path_, tied->second.name, it->second.name, a + e, copy[e], dst[e]);
}

// The temporary name carries the process id: two exports to one place at once each write their own file, and the
// last rename wins with a whole one.
AtomicFile::AtomicFile(const std::string& path) : path_(path), tmp_(fmt::format("{}.tmp.{}", path, ::getpid())) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ZT_CHECK(fd_ >= 0, "cannot create '{}': {}", tmp_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n_bytes) {
  const char* p = static_cast<const char*>(data);
  while (n_bytes > 0) {
    const ssize_t put = ::write(fd_, p, n_bytes);
    if (put < 0 && errno == EINTR) continue;
    ZT_CHECK(put > 0, "writing '{}' failed: {}", tmp_, std::strerror(errno));
    p += put;
    n_bytes -= size_t(put);
  }
}

void AtomicFile::commit() {
  ZT_CHECK(::fsync(fd_) == 0, "fsync of '{}' failed: {}", tmp_, std::strerror(errno));
  ZT_CHECK(::close(fd_) == 0, "closing '{}' failed: {}", tmp_, std::strerror(errno));
  fd_ = -1;
  ZT_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp_, path_,
           std::strerror(errno));
}

void write_tensor(const ModelSource& src, const TensorSpec& t, bool transposed, bool bf16, AtomicFile& out) {
  const size_t n = t.numel();
  std::vector<float> values(n), staged;
  src.read(t, 0, n, values.data());
  if (transposed) {
    const size_t R = t.shape.size() == 2 ? size_t(t.shape[0]) : 1, O = n / R;
    staged.resize(n);
    for (size_t i = 0; i < R; ++i)
      for (size_t o = 0; o < O; ++o) staged[o * R + i] = values[i * O + o];
    values.swap(staged);
  }
  if (!bf16) {
    out.write(values.data(), n * 4);
    return;
  }
  std::vector<uint16_t> half(n);
  for (size_t i = 0; i < n; ++i) half[i] = float_to_bf16(values[i]);
  out.write(half.data(), n * 2);
}

namespace {

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string directory_of(const std::string& file) {
  const size_t slash = file.rfind('/');
  return slash == std::string::npos ? "." : file.substr(0, slash == 0 ? 1 : slash);
}

std::unique_ptr<ModelSource> open_directory(const std::string& dir) {
  if (exists(dir + "/model.h5")) {
    std::string name = dir.substr(0, dir.find_last_not_of('/') + 1);
    name = name.substr(name.rfind('/') + 1);  // npos + 1 = 0: no slash
    ZT_CHECK(name.rfind(".checkpoint-", 0) != 0,
             "'{}' is not a committed checkpoint (a save in progress, or one that died before its commit): pass a "
             "checkpoint-<step> directory",
             dir);
    return open_checkpoint_model(dir);
  }
  if (exists(dir + "/model.safetensors")) return open_hf_model(dir, dir + "/model.safetensors");
  if (exists(dir + "/model.safetensors.index.json")) return open_hf_model(dir, dir + "/model.safetensors.index.json");
  if (exists(dir + "/latest")) {
    std::ifstream in(dir + "/latest");
    std::string name;
    std::getline(in, name);
    ZT_FAIL("'{}' is a training output directory: pass one of its checkpoints, e.g. {}/{} (the one `latest` names)",
            dir, dir, name);
  }
  ZT_FAIL(
      "directory '{}' holds no model: expected a zerotrain checkpoint (model.h5) or a Hugging Face model "
      "(model.safetensors or model.safetensors.index.json, with config.json)",
      dir);
}

}  // namespace

std::unique_ptr<ModelSource> open_model_source(const std::string& path) {
  struct stat st {};
  ZT_CHECK(::stat(path.c_str(), &st) == 0, "model '{}' does not exist", path);
  if (S_ISDIR(st.st_mode)) return open_directory(path);
  unsigned char head[9] = {};
  {
    std::ifstream in(path, std::ios::binary);
    ZT_CHECK(in.good(), "cannot open model file '{}'", path);
    in.read(reinterpret_cast<char*>(head), sizeof(head));
  }
  int32_t magic;
  std::memcpy(&magic, head, 4);
  if (magic == 20240326) return open_llmc_model(path);
  const bool named_safetensors = path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0;
  if (head[8] == '{' || named_safetensors) return open_hf_model(directory_of(path), path);
  ZT_CHECK(std::memcmp(head, "\x89HDF", 4) != 0, "'{}' is an HDF5 file: pass the checkpoint directory that holds it",
           path);
  ZT_FAIL(
      "'{}' is not a model file zerotrain reads: an llm.c model file starts with the int32 magic 20240326 (this "
      "one has {}), a safetensors file with an 8-byte header length and '{{' (name it *.safetensors, with config.json "
      "beside it)",
      path, magic);
}

void export_model(const ModelSource& src, const std::string& format, const std::string& dtype, const std::string& out) {
  ZT_CHECK(dtype == "fp32" || dtype == "bf16", "export --dtype must be fp32 or bf16, got '{}'", dtype);
  ZT_CHECK(!out.empty(), "export needs an output path (-o)");
  if (format == "safetensors")
    write_hf_model(src, dtype == "bf16", out);
  else if (format == "llmc")
    write_llmc_model(src, dtype == "bf16", out);
  else
    ZT_FAIL("export --format must be safetensors or llmc, got '{}'", format);
}

}  // namespace zt
