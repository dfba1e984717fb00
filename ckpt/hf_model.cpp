// Hugging Face GPT-2 models: model.safetensors (or a sharded index) with config.json, read and written the way
// transformers' GPT2LMHeadModel saves and loads them. docs/usage.md ("From and to other tools") states the mapping.
#include <sys/stat.h>

#include <array>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "ckpt/model_formats.hpp"
#include "core/errors.hpp"

namespace zt {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;  // the safetensors library's own limit

json read_json_file(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  ZT_CHECK(in.good(), "cannot open {} '{}'", what, path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    ZT_FAIL("{} '{}' is not valid JSON: {}", what, path, e.what());
  }
}

/// config.json's fields as a ModelConfig; throws naming the file and the field for anything zerotrain's GPT-2 is not.
ModelConfig config_from_hf(const std::string& path) {
  const json j = read_json_file(path, "config file");
  ZT_CHECK(j.is_object(), "'{}' must hold a JSON object", path);
  auto get_int = [&](const char* key, const char* alt) {
    const char* k = j.contains(key) ? key : alt;
    ZT_CHECK(k && j.contains(k), "'{}' lacks field '{}'", path, key);
    ZT_CHECK(j[k].is_number_integer() && j[k].get<int64_t>() > 0 && j[k].get<int64_t>() < (int64_t(1) << 31),
             "'{}': field '{}' is {}; it must be a positive integer", path, k, j[k].dump());
    return std::make_pair(std::string(k), j[k].get<int64_t>());
  };
  ModelConfig c;
  const std::pair<const char*, std::array<const char*, 2>> fields[] = {{"n_layer", {"n_layer", nullptr}},
                                                                       {"n_head", {"n_head", nullptr}},
                                                                       {"d_model", {"n_embd", nullptr}},
                                                                       {"vocab", {"vocab_size", nullptr}},
                                                                       {"seq_len", {"n_positions", "n_ctx"}}};
  for (const auto& [field, keys] : fields) {
    const auto [key, value] = get_int(keys[0], keys[1]);
    set_model_field(c, field, value, fmt::format("'{}': field '{}'", path, key));
  }
  auto refuse = [&](const char* key, bool bad, const char* why) {
    ZT_CHECK(!(j.contains(key) && bad), "'{}': field '{}' is {}; {}", path, key, j.contains(key) ? j[key].dump() : "",
             why);
  };
  auto is = [&](const char* key, const json& v) { return j.contains(key) && j[key] == v; };
  refuse("model_type", !is("model_type", "gpt2"), "zerotrain reads GPT-2 models (\"gpt2\")");
  refuse("activation_function",
         !is("activation_function", "gelu_new") && !is("activation_function", "gelu_pytorch_tanh"),
         "zerotrain's GPT-2 uses the tanh GELU (\"gelu_new\")");
  refuse("layer_norm_epsilon",
         !(j.contains("layer_norm_epsilon") && j["layer_norm_epsilon"].is_number() &&
           std::abs(j["layer_norm_epsilon"].get<double>() - 1e-5) <= 1e-12),
         "zerotrain's LayerNorm uses 1e-05");
  refuse("n_inner", !is("n_inner", nullptr) && !is("n_inner", 4 * c.d_model),
         "zerotrain's MLP is 4 x n_embd wide (null)");
  refuse("tie_word_embeddings", is("tie_word_embeddings", false), "zerotrain ties the LM head to wte (true)");
  refuse("scale_attn_weights", is("scale_attn_weights", false), "zerotrain scales attention by 1/sqrt(head dim)");
  refuse("scale_attn_by_inverse_layer_idx", is("scale_attn_by_inverse_layer_idx", true),
         "zerotrain does not scale attention by layer (false)");
  refuse("add_cross_attention", is("add_cross_attention", true), "zerotrain's GPT-2 has no cross-attention");
  ZT_CHECK(c.d_model % c.n_head == 0, "'{}': n_embd {} is not a multiple of n_head {}", path, c.d_model, c.n_head);
  c.validate();
  return c;
}

/// One tensor entry of a safetensors header.
struct Entry {
  int file = 0;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  ///< absolute byte offset in the file
};

/// h.<layer>.attn.bias or h.<layer>.attn.masked_bias: the causal-mask buffers older transformers versions saved
/// beside the parameters (they are not parameters).
bool is_attention_buffer(const std::string& name) {
  if (name.rfind("h.", 0) != 0) return false;
  size_t i = 2;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
  const std::string rest = name.substr(i);
  return i > 2 && (rest == ".attn.bias" || rest == ".attn.masked_bias");
}

bool parse_dtype(const std::string& s, DiskDtype& d) {
  if (s == "F32")
    d = DiskDtype::f32;
  else if (s == "F16")
    d = DiskDtype::f16;
  else if (s == "BF16")
    d = DiskDtype::bf16;
  else
    return false;
  return true;
}

class HfSource final : public RawModelSource {
 public:
  HfSource(const std::string& dir, const std::string& weights) {
    path_ = weights;
    config_path_ = dir + "/config.json";
    struct stat st {};
    ZT_CHECK(::stat(config_path_.c_str(), &st) == 0, "'{}' has no config.json beside it ('{}' is missing)", weights,
             config_path_);
    config_ = config_from_hf(config_path_);
    std::map<std::string, Entry> entries;
    if (weights.size() > 11 && weights.compare(weights.size() - 11, 11, ".index.json") == 0) {
      const json index = read_json_file(weights, "safetensors index");
      ZT_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
               "safetensors index '{}' lacks its 'weight_map' object", weights);
      std::set<std::string> files;
      for (const auto& f : index["weight_map"]) {
        ZT_CHECK(f.is_string(), "safetensors index '{}': a weight_map value is {}, not a file name", weights, f.dump());
        files.insert(f.get<std::string>());
      }
      for (const std::string& f : files) parse_file(dir + "/" + f, entries);
    } else {
      parse_file(weights, entries);
    }
    map_tensors(entries);
  }

  std::string format() const override {
    return fmt::format("Hugging Face GPT-2 safetensors ({} with {})", path_, config_path_);
  }
  std::string field_origin(const std::string& field) const override {
    const char* key = field == "d_model"   ? "n_embd"
                      : field == "vocab"   ? "vocab_size"
                      : field == "seq_len" ? "n_positions"
                                           : field.c_str();
    return fmt::format("config.json {}", key);
  }

 private:
  void parse_file(const std::string& path, std::map<std::string, Entry>& out) {
    const int f = open_file(path);
    const uint64_t size = file_size(f);
    ZT_CHECK(size >= 8, "safetensors file '{}' has {} bytes: too short for its 8-byte header length", path, size);
    uint64_t n = 0;
    pread_exact(f, &n, 8, 0, "the header length");
    ZT_CHECK(n >= 2 && n <= kMaxHeaderBytes && n <= size - 8,
             "safetensors file '{}' is truncated or damaged: its header length (the first 8 bytes) says {} bytes, "
             "but {} follow",
             path, n, size - 8);
    std::string text(n, '\0');
    pread_exact(f, text.data(), n, 8, "the header");
    json h;
    try {
      h = json::parse(text);
    } catch (const json::exception& e) {
      ZT_FAIL("safetensors file '{}': its {}-byte header is not valid JSON (truncated?): {}", path, n, e.what());
    }
    ZT_CHECK(h.is_object(), "safetensors file '{}': its header is not a JSON object", path);
    const uint64_t data_len = size - 8 - n;
    for (auto it = h.begin(); it != h.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      out[it.key()] = parse_entry(path, f, it.key(), it.value(), 8 + n, data_len);
      ZT_CHECK(out.count(it.key()) == 1, "tensor '{}' appears twice", it.key());
    }
  }

  static Entry parse_entry(const std::string& path, int f, const std::string& name, const json& e, uint64_t base,
                           uint64_t data_len) {
    const char* where = "safetensors file";
    ZT_CHECK(e.is_object() && e.contains("dtype") && e["dtype"].is_string() && e.contains("shape") &&
                 e["shape"].is_array() && e.contains("data_offsets") && e["data_offsets"].is_array() &&
                 e["data_offsets"].size() == 2,
             "{} '{}': tensor '{}' needs a dtype string, a shape array and two data_offsets; it has {}", where, path,
             name, e.dump());
    Entry out;
    out.file = f;
    out.dtype = e["dtype"].get<std::string>();
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      ZT_CHECK(d.is_number_unsigned() && d.get<uint64_t>() < (uint64_t(1) << 40) &&
                   (d.get<uint64_t>() == 0 || numel <= (uint64_t(1) << 40) / d.get<uint64_t>()),
               "{} '{}': tensor '{}' has shape {}", where, path, name, e["shape"].dump());
      out.shape.push_back(d.get<int64_t>());
      numel *= d.get<uint64_t>();
    }
    for (const auto& o : e["data_offsets"])
      ZT_CHECK(o.is_number_unsigned(), "{} '{}': tensor '{}' has data_offsets {}", where, path, name,
               e["data_offsets"].dump());
    const uint64_t begin = e["data_offsets"][0].get<uint64_t>(), end = e["data_offsets"][1].get<uint64_t>();
    ZT_CHECK(begin <= end && end <= data_len,
             "{} '{}': tensor '{}' has data_offsets [{}, {}] outside the {} data bytes after the header (truncated?)",
             where, path, name, begin, end, data_len);
    DiskDtype d;
    if (parse_dtype(out.dtype, d))
      ZT_CHECK(end - begin == numel * dtype_bytes(d),
               "{} '{}': tensor '{}' has data_offsets [{}, {}] ({} bytes), but dtype {} and shape {} need {}", where,
               path, name, begin, end, end - begin, out.dtype, e["shape"].dump(), numel * dtype_bytes(d));
    out.offset = base + begin;
    return out;
  }

  std::string implied_by_config() const {
    return fmt::format("config.json ('{}': n_layer {}, n_embd {}, vocab_size {}, n_positions {})", config_path_,
                       config_.n_layer, config_.d_model, config_.vocab, config_.seq_len);
  }

  StoredTensor stored(const std::string& hf_name, const Entry& e, const std::vector<int64_t>& want) const {
    StoredTensor s;
    ZT_CHECK(parse_dtype(e.dtype, s.dtype), "'{}': tensor '{}' has dtype {}; zerotrain reads F32, F16 and BF16",
             file_path(e.file), hf_name, e.dtype);
    ZT_CHECK(e.shape == want,
             "'{}': tensor '{}' has shape [{}], but {} implies [{}]: config.json disagrees with the "
             "tensors",
             file_path(e.file), hf_name, fmt::join(e.shape, ", "), implied_by_config(), fmt::join(want, ", "));
    s.file = e.file;
    s.offset = e.offset;
    s.rows = want.size() == 2 ? size_t(want[0]) : 1;
    s.cols = want.size() == 2 ? size_t(want[1]) : size_t(want[0]);
    s.name = hf_name;
    return s;  // GPT-2's Conv1D stores [in, out], zerotrain's layout: never transposed
  }

  void map_tensors(std::map<std::string, Entry>& entries) {
    // transformers saves GPT2LMHeadModel with a "transformer." prefix, the original GPT-2 files without one.
    std::map<std::string, std::pair<std::string, Entry>> by_name;
    for (auto& [name, e] : entries) {
      const std::string bare = name.rfind("transformer.", 0) == 0 ? name.substr(12) : name;
      ZT_CHECK(by_name.count(bare) == 0, "'{}' holds both '{}' and '{}'", path_, bare, "transformer." + bare);
      by_name[bare] = {name, e};
    }
    const ParamTable table(config_);
    for (const TensorSpec& t : table.tensors()) {
      const std::string hf = t.name == "wte" || t.name == "wpe" ? t.name + ".weight" : t.name;
      auto it = by_name.find(hf);
      ZT_CHECK(it != by_name.end(),
               "'{}' has no tensor '{}' (nor 'transformer.{}'), which a GPT-2 of {} needs: config.json disagrees with "
               "the tensors, or this is not a GPT-2 language model",
               path_, hf, hf, implied_by_config());
      stored_[t.name] = stored(it->second.first, it->second.second, t.shape);
      by_name.erase(it);
    }
    if (auto it = by_name.find("lm_head.weight"); it != by_name.end()) {
      must_equal_["wte"] = stored(it->second.first, it->second.second, table.tensors()[0].shape);
      by_name.erase(it);
    }
    std::vector<std::string> extra;
    for (const auto& [bare, named] : by_name)
      if (!is_attention_buffer(bare)) extra.push_back(named.first);
    ZT_CHECK(extra.empty(),
             "'{}' holds {} tensor(s) that a GPT-2 of {} has no place for: {}{}: config.json disagrees with the "
             "tensors, or this is not a GPT-2 language model",
             path_, extra.size(), implied_by_config(),
             fmt::join(extra.begin(), extra.begin() + long(std::min<size_t>(extra.size(), 6)), ", "),
             extra.size() > 6 ? ", ..." : "");
  }

  std::string config_path_;
};

json hf_config(const ModelConfig& c, bool bf16) {
  json j = {{"architectures", {"GPT2LMHeadModel"}},
            {"model_type", "gpt2"},
            {"vocab_size", c.vocab},
            {"n_positions", c.seq_len},
            {"n_ctx", c.seq_len},
            {"n_embd", c.d_model},
            {"n_layer", c.n_layer},
            {"n_head", c.n_head},
            {"n_inner", nullptr},
            {"activation_function", "gelu_new"},
            {"layer_norm_epsilon", 1e-5},
            {"initializer_range", 0.02},
            // zerotrain trains without dropout; a model fine-tuned further in transformers behaves the same
            {"resid_pdrop", 0.0},
            {"embd_pdrop", 0.0},
            {"attn_pdrop", 0.0},
            {"scale_attn_weights", true},
            {"scale_attn_by_inverse_layer_idx", false},
            {"reorder_and_upcast_attn", false},
            {"tie_word_embeddings", true},
            {"use_cache", true},
            {"torch_dtype", bf16 ? "bfloat16" : "float32"}};
  if (c.vocab == 50257) j["bos_token_id"] = j["eos_token_id"] = 50256;  // GPT-2's <|endoftext|>
  return j;
}

}  // namespace

std::unique_ptr<ModelSource> open_hf_model(const std::string& dir, const std::string& weights) {
  return std::make_unique<HfSource>(dir, weights);
}

void write_hf_model(const ModelSource& src, bool bf16, const std::string& out_dir) {
  struct stat st {};
  if (::stat(out_dir.c_str(), &st) == 0)
    ZT_CHECK(S_ISDIR(st.st_mode), "export -o '{}': exists and is not a directory", out_dir);
  else
    ZT_CHECK(::mkdir(out_dir.c_str(), 0755) == 0, "cannot create export directory '{}': {}", out_dir,
             std::strerror(errno));
  const ParamTable table(src.config());
  json header = {{"__metadata__", {{"format", "pt"}}}};
  uint64_t offset = 0;
  const size_t esz = bf16 ? 2 : 4;
  for (const TensorSpec& t : table.tensors()) {
    const std::string name = "transformer." + (t.name == "wte" || t.name == "wpe" ? t.name + ".weight" : t.name);
    header[name] = {
        {"dtype", bf16 ? "BF16" : "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.numel() * esz}}};
    offset += t.numel() * esz;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the tensors start 8-byte aligned, as the safetensors library writes
  AtomicFile weights(out_dir + "/model.safetensors");
  const uint64_t n = text.size();
  weights.write(&n, 8);
  weights.write(text.data(), text.size());
  for (const TensorSpec& t : table.tensors()) write_tensor(src, t, false, bf16, weights);
  const std::string config = hf_config(src.config(), bf16).dump(2) + "\n";
  AtomicFile config_file(out_dir + "/config.json");
  config_file.write(config.data(), config.size());
  weights.commit();
  config_file.commit();
}

}  // namespace zt
