// Model files in and out: dtype conversions, llm.c and Hugging Face round trips (whole tensors and any slice),
// files written by the test itself (no prefix, fp16, a tied lm_head), and every malformed input named by file and
// field.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "ckpt/model_source.hpp"
#include "core/errors.hpp"

namespace fs = std::filesystem;
using zt::ModelConfig;
using zt::TensorSpec;

namespace {

/// Parameters held in memory: random values plus a few special ones (-0, a subnormal, a NaN payload) that an fp32
/// round trip must keep bit for bit.
class MemorySource final : public zt::ModelSource {
 public:
  MemorySource(const ModelConfig& c, uint64_t seed) {
    config_ = c;
    path_ = "memory";
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> dist(0.0f, 0.5f);
    const zt::ParamTable table(c);
    for (const TensorSpec& t : table.tensors()) {
      std::vector<float>& v = values[t.name];
      v.resize(t.numel());
      for (auto& x : v) x = dist(rng);
    }
    values["wpe"][0] = -0.0f;
    values["wpe"][1] = 1e-40f;
    uint32_t nan_bits = 0x7fc01234u;
    std::memcpy(&values["wpe"][2], &nan_bits, 4);
  }
  std::string format() const override { return "memory"; }
  std::string field_origin(const std::string& field) const override { return field; }
  void read(const TensorSpec& t, size_t a, size_t b, float* dst) const override {
    std::copy(values.at(t.name).begin() + long(a), values.at(t.name).begin() + long(b), dst);
  }
  std::map<std::string, std::vector<float>> values;
};

ModelConfig io_config() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.d_model = 16;
  c.vocab = 70;  // padded to 128 in llm.c files
  c.seq_len = 8;
  return c;
}

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/zt_model_io_XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

std::vector<float> read_all(const zt::ModelSource& src, const TensorSpec& t) {
  std::vector<float> v(t.numel());
  src.read(t, 0, t.numel(), v.data());
  return v;
}

/// Every tensor read back equals the source's, whole and in three random slices (transposed matrices included).
void check_round_trip(const MemorySource& mem, const zt::ModelSource& back, bool bf16) {
  std::mt19937_64 rng(3);
  const zt::ParamTable table(mem.config());
  for (const TensorSpec& t : table.tensors()) {
    std::vector<float> want = mem.values.at(t.name);
    if (bf16)
      for (auto& x : want) x = zt::bf16_to_float(zt::float_to_bf16(x));
    INFO(t.name);
    CHECK(bits_equal(read_all(back, t), want));
    for (int k = 0; k < 3; ++k) {
      const size_t a = rng() % t.numel(), b = a + 1 + rng() % (t.numel() - a);
      std::vector<float> part(b - a);
      back.read(t, a, b, part.data());
      CHECK(bits_equal(part, std::vector<float>(want.begin() + long(a), want.begin() + long(b))));
    }
  }
}

void write_file(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// The test's own safetensors writer: `tensors` as (name, dtype, shape, raw bytes) after an unpadded header.
std::string safetensors_bytes(
    const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, std::string>>& tensors) {
  nlohmann::json h = nlohmann::json::object();
  std::string data;
  for (const auto& [name, dtype, shape, bytes] : tensors) {
    h[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + bytes.size()}}};
    data += bytes;
  }
  const std::string header = h.dump();
  const uint64_t n = header.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + header + data;
}

std::string f16_bytes(const std::vector<float>& v) {
  // Values exactly representable in fp16 (multiples of 1/64 below 2): the conversion below is exact.
  std::string out;
  for (float x : v) {
    const uint16_t sign = x < 0 ? 0x8000 : 0;
    const float a = std::abs(x);
    uint16_t h = 0;
    if (a != 0) {
      int e;
      const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
      h = uint16_t(((e - 1 + 15) << 10) | (uint16_t(std::lround((m * 2 - 1) * 1024)) & 0x3ff));
    }
    h |= sign;
    out.append(reinterpret_cast<const char*>(&h), 2);
  }
  return out;
}

std::string hf_config_text(const ModelConfig& c) {
  return nlohmann::json{{"model_type", "gpt2"},
                        {"n_layer", c.n_layer},
                        {"n_head", c.n_head},
                        {"n_embd", c.d_model},
                        {"vocab_size", c.vocab},
                        {"n_positions", c.seq_len},
                        {"activation_function", "gelu_new"},
                        {"layer_norm_epsilon", 1e-5}}
      .dump();
}

}  // namespace

TEST_CASE("dtype conversions: bf16 rounds to nearest even, fp16 reads exactly", "[model_io]") {
  CHECK(zt::bf16_to_float(0x3f80) == 1.0f);
  CHECK(zt::float_to_bf16(1.0f) == 0x3f80);
  CHECK(zt::float_to_bf16(std::ldexp(1.0f, 0) + std::ldexp(1.0f, -8)) == 0x3f80);           // tie: to even (down)
  CHECK(zt::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);                      // tie: to even (up)
  CHECK(zt::float_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3f81);  // above the tie
  CHECK(std::isnan(zt::bf16_to_float(zt::float_to_bf16(NAN))));
  CHECK(zt::float_to_bf16(-INFINITY) == 0xff80);
  CHECK(zt::f16_to_float(0x3c00) == 1.0f);
  CHECK(zt::f16_to_float(0xc100) == -2.5f);
  CHECK(zt::f16_to_float(0x0001) == std::ldexp(1.0f, -24));  // the smallest subnormal
  CHECK(zt::f16_to_float(0x7bff) == 65504.0f);
  CHECK(std::isinf(zt::f16_to_float(0x7c00)));
  CHECK(std::isnan(zt::f16_to_float(0x7e00)));
  CHECK(std::signbit(zt::f16_to_float(0x8000)));
}

TEST_CASE("llm.c and Hugging Face exports read back bit for bit, any slice", "[model_io]") {
  const MemorySource mem(io_config(), 11);
  TempDir dir;
  for (bool bf16 : {false, true}) {
    INFO((bf16 ? "bf16" : "fp32"));
    const std::string llmc = dir / (bf16 ? "m_bf16.bin" : "m.bin"), hf = dir / (bf16 ? "hf_bf16" : "hf");
    zt::export_model(mem, "llmc", bf16 ? "bf16" : "fp32", llmc);
    zt::export_model(mem, "safetensors", bf16 ? "bf16" : "fp32", hf);
    const auto back_llmc = zt::open_model_source(llmc);
    const auto back_hf = zt::open_model_source(hf);
    CHECK(back_llmc->config() == mem.config());
    CHECK(back_hf->config() == mem.config());
    CHECK_THAT(back_llmc->format(), Catch::Contains(bf16 ? "version 5, bf16" : "version 3, fp32"));
    check_round_trip(mem, *back_llmc, bf16);
    check_round_trip(mem, *back_hf, bf16);
    // llm.c's header and its padded vocabulary: 256 int32, then wte of Vp = 128 rows of which 58 are zero.
    const std::string bytes = read_file(llmc);
    int32_t h[8];
    std::memcpy(h, bytes.data(), sizeof(h));
    CHECK(std::vector<int32_t>(h, h + 8) == std::vector<int32_t>{20240326, bf16 ? 5 : 3, 8, 70, 2, 2, 16, 128});
    for (const auto& e : fs::directory_iterator(dir.path)) CHECK(e.path().string().find(".tmp") == std::string::npos);
  }
}

TEST_CASE("a safetensors file without the transformer. prefix, in fp16, with a tied lm_head", "[model_io]") {
  const ModelConfig c = io_config();
  const zt::ParamTable table(c);
  std::mt19937_64 rng(4);
  std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, std::string>> tensors;
  std::map<std::string, std::vector<float>> want;
  for (const TensorSpec& t : table.tensors()) {
    std::vector<float>& v = want[t.name];
    for (size_t i = 0; i < t.numel(); ++i) v.push_back(float(int(rng() % 200) - 100) / 64.0f);
    tensors.emplace_back(t.name == "wte" || t.name == "wpe" ? t.name + ".weight" : t.name, "F16", t.shape,
                         f16_bytes(v));
  }
  tensors.emplace_back("lm_head.weight", "F16", table.tensors()[0].shape, f16_bytes(want["wte"]));
  tensors.emplace_back("h.0.attn.bias", "F32", std::vector<int64_t>{1, 1, 8, 8}, std::string(256, '\0'));
  TempDir dir;
  write_file(dir / "model.safetensors", safetensors_bytes(tensors));
  write_file(dir / "config.json", hf_config_text(c));
  const auto src = zt::open_model_source(dir / "model.safetensors");
  for (const TensorSpec& t : table.tensors()) {
    INFO(t.name);
    CHECK(read_all(*src, t) == want[t.name]);
  }
  // An untied lm_head is refused when wte is read.
  std::get<3>(tensors[tensors.size() - 2])[0] ^= 1;
  write_file(dir / "model.safetensors", safetensors_bytes(tensors));
  const auto untied = zt::open_model_source(dir.path.string());
  CHECK_THROWS_WITH(read_all(*untied, table.tensors()[0]),
                    Catch::Contains("lm_head.weight differs from wte") && Catch::Contains("model.safetensors"));
}

TEST_CASE("malformed model files are refused, naming the file and the field", "[model_io]") {
  const MemorySource mem(io_config(), 12);
  TempDir dir;
  const std::string hf = dir / "hf", st = hf + "/model.safetensors", cfg = hf + "/config.json";
  zt::export_model(mem, "safetensors", "fp32", hf);
  const std::string good = read_file(st), good_cfg = read_file(cfg);
  uint64_t n;
  std::memcpy(&n, good.data(), 8);
  auto refused = [&](const std::string& bytes, const std::string& config, const std::string& what) {
    write_file(st, bytes);
    write_file(cfg, config);
    try {
      const auto src = zt::open_model_source(hf);
    } catch (const zt::Error& e) {
      return std::string(e.what());
    }
    return "accepted: " + what;
  };
  using Catch::Contains;
  CHECK_THAT(refused(good.substr(0, 8 + n / 2), good_cfg, "truncated header"),
             Contains(st) && Contains("header length"));
  std::string bad = good;
  bad[8 + n - 3] = '#';
  CHECK_THAT(refused(bad, good_cfg, "header JSON"), Contains(st) && Contains("not valid JSON"));
  CHECK_THAT(refused(good.substr(0, good.size() - 4), good_cfg, "truncated data"),
             Contains(st) && Contains("data_offsets") && Contains("ln_f.bias"));
  nlohmann::json c = nlohmann::json::parse(good_cfg);
  c["n_embd"] = 32;
  c["n_head"] = 2;
  CHECK_THAT(refused(good, c.dump(), "n_embd"), Contains("config.json") && Contains("n_embd 32") &&
                                                    Contains("transformer.wte.weight") && Contains("[70, 16]"));
  c = nlohmann::json::parse(good_cfg);
  c["n_layer"] = 1;
  CHECK_THAT(refused(good, c.dump(), "fewer layers"), Contains("no place for") && Contains("transformer.h.1."));
  c["n_layer"] = 3;
  CHECK_THAT(refused(good, c.dump(), "more layers"), Contains("has no tensor 'h.2.ln_1.weight'"));
  c = nlohmann::json::parse(good_cfg);
  c["activation_function"] = "relu";
  CHECK_THAT(refused(good, c.dump(), "activation"), Contains(cfg) && Contains("activation_function"));
  c = nlohmann::json::parse(good_cfg);
  c["n_inner"] = 100;
  CHECK_THAT(refused(good, c.dump(), "n_inner"), Contains(cfg) && Contains("'n_inner' is 100"));
  c = nlohmann::json::parse(good_cfg);
  c.erase("n_positions");
  c.erase("n_ctx");
  CHECK_THAT(refused(good, c.dump(), "no n_positions"), Contains(cfg) && Contains("n_positions"));
  std::string f64 = good;
  const size_t at = f64.find("\"F32\"");
  f64.replace(at, 5, "\"F64\"");
  CHECK_THAT(refused(f64, good_cfg, "F64"), Contains(st) && Contains("dtype F64"));
  write_file(st, good);
  fs::remove(cfg);
  CHECK_THROWS_WITH(zt::open_model_source(hf), Contains("config.json") && Contains("missing"));

  const std::string llmc = dir / "m.bin";
  zt::export_model(mem, "llmc", "fp32", llmc);
  const std::string model = read_file(llmc);
  auto llmc_refused = [&](std::string bytes, int field, int32_t value) {
    if (field >= 0) std::memcpy(&bytes[size_t(field) * 4], &value, 4);
    write_file(llmc, bytes);
    try {
      zt::open_model_source(llmc);
    } catch (const zt::Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK_THAT(llmc_refused(model, 0, 20240327), Contains(llmc) && Contains("magic 20240326 (this one has 20240327)"));
  CHECK_THAT(llmc_refused(model, 1, 4), Contains(llmc) && Contains("version 4 (header[1])"));
  CHECK_THAT(llmc_refused(model, 7, 64), Contains(llmc) && Contains("Vp = 64 (header[7])"));
  CHECK_THAT(llmc_refused(model.substr(0, model.size() - 2), -1, 0), Contains(llmc) && Contains("truncated"));
  CHECK_THAT(llmc_refused(model, 4, 1 << 30),
             Contains(llmc) && Contains("L (header[4]) must be in [1, 4096], got 1073741824"));
  CHECK_THAT(llmc_refused(model + "xx", -1, 0), Contains(llmc) && Contains("trailing bytes"));
  CHECK_THROWS_WITH(zt::open_model_source(dir / "nothing"), Contains("does not exist"));
  write_file(dir / "text.txt", "hello world, not a model");
  CHECK_THROWS_WITH(zt::open_model_source(dir / "text.txt"), Contains("text.txt") && Contains("20240326"));
}

TEST_CASE("a sharded safetensors model (model.safetensors.index.json) reads across its files", "[model_io]") {
  const MemorySource mem(io_config(), 13);
  TempDir dir;
  zt::export_model(mem, "safetensors", "fp32", dir / "one");
  const auto whole = zt::open_model_source(dir / "one");
  // Layer 0 and the embeddings in one file, the rest in another, as transformers shards large models.
  const zt::ParamTable table(mem.config());
  std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, std::string>> parts[2];
  nlohmann::json map = nlohmann::json::object();
  for (const TensorSpec& t : table.tensors()) {
    const std::vector<float> v = read_all(*whole, t);
    const int part = t.name.rfind("h.0.", 0) == 0 || t.name == "wte" || t.name == "wpe" ? 0 : 1;
    const std::string name = t.name == "wte" || t.name == "wpe" ? t.name + ".weight" : t.name;
    parts[part].emplace_back(name, "F32", t.shape, std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
    map[name] = fmt::format("model-0000{}-of-00002.safetensors", part + 1);
  }
  fs::create_directory(dir / "sharded");
  for (int p = 0; p < 2; ++p)
    write_file(dir / fmt::format("sharded/model-0000{}-of-00002.safetensors", p + 1), safetensors_bytes(parts[p]));
  write_file(dir / "sharded/model.safetensors.index.json", nlohmann::json{{"weight_map", map}}.dump());
  write_file(dir / "sharded/config.json", hf_config_text(mem.config()));
  check_round_trip(mem, *zt::open_model_source(dir / "sharded"), false);
}
