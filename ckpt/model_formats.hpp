// The model-file formats behind ModelSource (ckpt/model_source.hpp): raw tensors at byte offsets of a few files,
// read with pread and converted per element, and each format's opener and writer.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/model_source.hpp"

namespace zt {

/// On-disk element types of model files.
enum class DiskDtype { f32, f16, bf16 };
size_t dtype_bytes(DiskDtype d);
/// Converts n elements at `src` (little-endian bytes of dtype d) to fp32.
void convert_to_float(const unsigned char* src, DiskDtype d, size_t n, float* dst);

/// Sets model field `name` (core/config.hpp) to a model file's value, through the field's limits; an error names
/// `where` (the file and its field) and the allowed range.
void set_model_field(ModelConfig& c, const char* name, int64_t value, const std::string& where);

/// Where one tensor of the parameter table lies in a model file.
struct StoredTensor {
  int file = 0;         ///< index into the source's open files
  uint64_t offset = 0;  ///< byte offset of the stored tensor's first element
  DiskDtype dtype = DiskDtype::f32;
  /// Stored as the transpose of zerotrain's [rows, cols]: PyTorch Linear's [out, in] against GPT-2's Conv1D
  /// [in, out] (llm.c's matrices).
  bool transposed = false;
  size_t rows = 1, cols = 1;  ///< zerotrain's logical shape as a matrix (a vector is 1 x n)
  std::string name;           ///< the file's name for the tensor (messages)
};

/// A model whose tensors are byte ranges of open files; each format's opener fills stored_ (every table tensor)
/// and, optionally, copies that must equal a tensor.
class RawModelSource : public ModelSource {
 public:
  ~RawModelSource() override;
  void read(const TensorSpec& t, size_t a, size_t b, float* dst) const override;

 protected:
  /// Opens a file for the tensors (index for StoredTensor::file); throws naming it.
  int open_file(const std::string& path);
  const std::string& file_path(int file) const { return files_[size_t(file)]; }
  /// Bytes of an opened file.
  uint64_t file_size(int file) const;
  /// Reads n_bytes at offset of an opened file; throws naming the file and `what` when it ends too early.
  void pread_exact(int file, void* dst, size_t n_bytes, uint64_t offset, const std::string& what) const;

  /// Every table tensor by zerotrain name.
  std::map<std::string, StoredTensor> stored_;
  /// Tensor name -> a stored copy the file also holds that must be bitwise equal (HF's lm_head.weight: zerotrain
  /// ties the LM head to wte).
  std::map<std::string, StoredTensor> must_equal_;

 private:
  void read_stored(const StoredTensor& s, size_t a, size_t b, float* dst) const;
  std::vector<int> fds_;
  std::vector<std::string> files_;
};

std::unique_ptr<ModelSource> open_llmc_model(const std::string& path);
/// `weights`: model.safetensors (or its .index.json); config.json is read from `dir`.
std::unique_ptr<ModelSource> open_hf_model(const std::string& dir, const std::string& weights);
std::unique_ptr<ModelSource> open_checkpoint_model(const std::string& dir);

void write_llmc_model(const ModelSource& src, bool bf16, const std::string& out_file);
void write_hf_model(const ModelSource& src, bool bf16, const std::string& out_dir);

/// Writes a file through `path`.tmp.<pid>, fsync and rename, so it appears complete or not at all.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();  ///< removes the temporary file unless commit() ran
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t n_bytes);
  /// fsync, rename into place.
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

/// Writes elements [0, n) of `src` tensor `t` to `out` as fp32 or bf16, `transposed` ([cols, rows] of its
/// [rows, cols]): the tensor is read whole, the only copy of the model in memory at that moment.
void write_tensor(const ModelSource& src, const TensorSpec& t, bool transposed, bool bf16, AtomicFile& out);

}  // namespace zt
