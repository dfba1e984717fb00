// llm.c model files (gpt2_124M.bin, gpt2_124M_bf16.bin): the reader and the writer of the layout that llm.c's
// gpt2_build_from_checkpoint reads. docs/usage.md ("From and to other tools") states the mapping.
#include <algorithm>
#include <vector>

#include "ckpt/model_formats.hpp"
#include "core/errors.hpp"

namespace zt {
namespace {

constexpr int32_t kLlmcMagic = 20240326;
constexpr size_t kHeaderInts = 256;

/// One of llm.c's parameter arrays, in file order: the zerotrain tensor it holds (per layer when `layered`),
/// its elements per layer, and whether llm.c stores it as the transpose (PyTorch Linear [out, in]).
struct Group {
  std::string suffix;
  size_t per_layer;
  bool layered, transposed;
};

/// llm.c's order: wte (Vp rows), wpe, then each per-layer array for all layers, then ln_f.
std::vector<Group> llmc_groups(const ModelConfig& c, size_t Vp) {
  const size_t C = size_t(c.d_model), T = size_t(c.seq_len);
  return {{"wte", Vp * C, false, false},
          {"wpe", T * C, false, false},
          {"ln_1.weight", C, true, false},
          {"ln_1.bias", C, true, false},
          {"attn.c_attn.weight", 3 * C * C, true, true},
          {"attn.c_attn.bias", 3 * C, true, false},
          {"attn.c_proj.weight", C * C, true, true},
          {"attn.c_proj.bias", C, true, false},
          {"ln_2.weight", C, true, false},
          {"ln_2.bias", C, true, false},
          {"mlp.c_fc.weight", 4 * C * C, true, true},
          {"mlp.c_fc.bias", 4 * C, true, false},
          {"mlp.c_proj.weight", 4 * C * C, true, true},
          {"mlp.c_proj.bias", C, true, false},
          {"ln_f.weight", C, false, false},
          {"ln_f.bias", C, false, false}};
}

std::string tensor_name(const Group& g, int layer) {
  return g.layered ? fmt::format("h.{}.{}", layer, g.suffix) : g.suffix;
}

class LlmcSource final : public RawModelSource {
 public:
  explicit LlmcSource(const std::string& path) {
    path_ = path;
    const int f = open_file(path);
    int32_t h[kHeaderInts];
    pread_exact(f, h, sizeof(h), 0, "the 1024-byte header");
    ZT_CHECK(h[0] == kLlmcMagic, "llm.c model file '{}' has magic {} (header[0]); expected {}", path, h[0], kLlmcMagic);
    version_ = h[1];
    ZT_CHECK(version_ == 3 || version_ == 5,
             "llm.c model file '{}' has version {} (header[1]); zerotrain reads 3 (fp32) and 5 (bf16)", path, version_);
    const char* names[] = {"maxT", "V", "L", "NH", "C", "Vp"};
    for (int i = 2; i < 8; ++i)
      ZT_CHECK(h[i] > 0, "llm.c model file '{}' has {} = {} (header[{}]); it must be positive", path, names[i - 2],
               h[i], i);
    const char* fields[] = {"seq_len", "vocab", "n_layer", "n_head", "d_model"};
    for (int i = 2; i < 7; ++i)
      set_model_field(config_, fields[i - 2], h[i],
                      fmt::format("llm.c model file '{}': {} (header[{}])", path, names[i - 2], i));
    const size_t Vp = size_t(h[7]);
    ZT_CHECK(Vp >= size_t(h[3]), "llm.c model file '{}' has Vp = {} (header[7]) below V = {} (header[3])", path, Vp,
             h[3]);
    ZT_CHECK(h[6] % h[5] == 0, "llm.c model file '{}': C = {} (header[6]) is not a multiple of NH = {} (header[5])",
             path, h[6], h[5]);
    config_.validate();
    const DiskDtype dtype = version_ == 5 ? DiskDtype::bf16 : DiskDtype::f32;
    const uint64_t size = file_size(f);
    // In floating point first: a damaged header must not make us build a table of a billion layers.
    double need = 0;
    for (const Group& g : llmc_groups(config_, Vp)) need += double(g.per_layer) * (g.layered ? h[4] : 1);
    need = need * double(dtype_bytes(dtype)) + double(sizeof(h));
    ZT_CHECK(need <= double(size) * 1.0001 + 1,
             "llm.c model file '{}' has {} bytes, but its header (maxT {}, V {}, L {}, NH {}, C {}, Vp {}, version "
             "{}) needs {:.0f}: truncated, or a damaged header",
             path, size, h[2], h[3], h[4], h[5], h[6], h[7], version_, need);
    uint64_t offset = sizeof(h);
    for (const Group& g : llmc_groups(config_, Vp)) {
      for (int l = 0; l < (g.layered ? config_.n_layer : 1); ++l) {
        StoredTensor s;
        s.file = f;
        s.offset = offset;
        s.dtype = dtype;
        s.transposed = g.transposed;
        s.name = fmt::format("{} (llm.c array {}{})", tensor_name(g, l), g.suffix,
                             g.layered ? fmt::format(", layer {}", l) : std::string());
        stored_[tensor_name(g, l)] = s;
        offset += g.per_layer * dtype_bytes(dtype);
      }
    }
    ZT_CHECK(size == offset,
             "llm.c model file '{}' has {} bytes, but its header (maxT {}, V {}, L {}, NH {}, C {}, Vp {}, version "
             "{}) needs {}: {}",
             path, size, h[2], h[3], h[4], h[5], h[6], h[7], version_, offset,
             size < offset ? "truncated" : "trailing bytes (not this model?)");
    // Matrices: zerotrain's [in, out] shape, which the reader transposes from llm.c's [out, in].
    const ParamTable table(config_);
    for (const TensorSpec& t : table.tensors()) {
      StoredTensor& s = stored_.at(t.name);
      s.rows = t.shape.size() == 2 ? size_t(t.shape[0]) : 1;
      s.cols = t.numel() / s.rows;
    }
  }

  std::string format() const override {
    return fmt::format("llm.c model file (version {}, {})", version_, version_ == 5 ? "bf16" : "fp32");
  }
  std::string field_origin(const std::string& field) const override {
    if (field == "n_layer") return "header[4] L";
    if (field == "n_head") return "header[5] NH";
    if (field == "d_model") return "header[6] C";
    if (field == "vocab") return "header[3] V";
    return "header[2] maxT";
  }

 private:
  int version_ = 0;
};

}  // namespace

std::unique_ptr<ModelSource> open_llmc_model(const std::string& path) { return std::make_unique<LlmcSource>(path); }

void write_llmc_model(const ModelSource& src, bool bf16, const std::string& out_file) {
  const ModelConfig& c = src.config();
  const ParamTable table(c);
  const size_t Vp = size_t(c.padded_vocab());  // llm.c pads to a multiple of 128 too
  int32_t header[kHeaderInts] = {};
  const int32_t fields[] = {kLlmcMagic, bf16 ? 5 : 3, c.seq_len, c.vocab, c.n_layer, c.n_head, c.d_model, int32_t(Vp)};
  std::copy(std::begin(fields), std::end(fields), header);
  AtomicFile out(out_file);
  out.write(header, sizeof(header));
  for (const Group& g : llmc_groups(c, Vp)) {
    for (int l = 0; l < (g.layered ? c.n_layer : 1); ++l) {
      const TensorSpec& t = table.tensors()[size_t(table.find(tensor_name(g, l)))];
      write_tensor(src, t, g.transposed, bf16, out);
    }
    if (g.suffix == "wte") {  // the padded rows: zeros, as llm.c's own export writes them
      const std::vector<char> zeros((Vp - size_t(c.vocab)) * size_t(c.d_model) * (bf16 ? 2 : 4), 0);
      out.write(zeros.data(), zeros.size());
    }
  }
  out.commit();
}

}  // namespace zt
