// The config table: the manifest's model/train objects as format version 1 has them, strict typed reading,
// per-field limits, the resume rule, test hooks, and error locations relative to the repository.
#include <catch2/catch.hpp>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <set>

#include "core/config.hpp"
#include "core/errors.hpp"
#include "core/test_hooks.hpp"

using namespace zt;
using nlohmann::json;

namespace {

void read(const json& j, ModelConfig& m, TrainConfig& t) { update_from_json(j, m, t, "config file c.json: "); }

// A manifest as a run with these fields would save it.
json manifest_of(const ModelConfig& m, const TrainConfig& t) { return {{"model", to_json(m)}, {"train", to_json(t)}}; }

}  // namespace

TEST_CASE("the manifest's model and train objects keep format version 1's keys and defaults", "[config]") {
  // Written out by hand from the manifest of a default run before the table existed: readers (docs/checkpoint-
  // format.md, older zerotrain builds, the tests) rely on these keys, types and values. New saved fields may add keys.
  const json train = json::parse(R"({"adam_eps":1e-08,"async_save":false,"beta1":0.9,"beta2":0.95,
    "comm":"auto","data":"synthetic","device":"cpu","dtype":"auto","eval_batches":4,"eval_interval":0,
    "exit_after_steps":0,"global_batch_size":0,"grad_clip":1.0,"learning_rate":0.003,"log_interval":1,
    "max_steps":50,"micro_batch_size":4,"min_lr_ratio":0.1,"output_dir":"output","profile_steps":0,
    "resume_from_checkpoint":"","save_interval":0,"save_total_limit":0,"seed":1234,"threads":0,
    "val_data":"","val_fraction":0.05,"warmup_steps":5,"weight_decay":0.1,"zero_stage":0})");
  const json now = to_json(TrainConfig());
  for (auto it = train.begin(); it != train.end(); ++it) {
    INFO(it.key());
    REQUIRE(now.contains(it.key()));
    REQUIRE(now[it.key()].dump() == it.value().dump());  // same type too: 1.0 stays a float, seed an integer
  }
  for (const auto& f : config_fields())
    if (f.manifest == InManifest::unsaved) REQUIRE_FALSE(now.contains(f.name));
  REQUIRE(to_json(ModelConfig()).dump() == R"({"d_model":64,"n_head":2,"n_layer":2,"seq_len":32,"vocab":256})");
  std::set<std::string> names;
  for (const auto& f : config_fields()) {
    INFO(f.name);
    REQUIRE(names.insert(f.name).second);
    REQUIRE(!f.help.empty());
    if (f.model) REQUIRE(f.on_resume == OnResume::must_match);  // a checkpoint's model shape never changes
  }
}

TEST_CASE("config values are read strictly: a float, bool or string where an integer goes is refused", "[config]") {
  ModelConfig m;
  TrainConfig t;
  auto refused = [&](const json& j, const std::string& want) {
    INFO(j.dump());
    REQUIRE_THROWS_WITH(read(j, m, t), Catch::Contains(want));
  };
  refused({{"max_steps", true}}, "config file c.json: key 'max_steps' must be an integer, got true");
  refused({{"max_steps", 2.7}}, "key 'max_steps' must be an integer, got 2.7");
  refused(json::parse(R"({"max_steps": 1e10})"), "key 'max_steps' must be an integer, got 10000000000.0");
  refused(json::parse(R"({"max_steps": 2.0})"), "key 'max_steps' must be an integer, got 2.0");
  refused({{"max_steps", "5"}}, "must be an integer, got \"5\"");
  refused(json::parse(R"({"max_steps": 2147483648})"), "must be a 32-bit integer, got 2147483648 (out of range)");
  refused(json::parse(R"({"n_layer": -2147483649})"), "must be a 32-bit integer, got -2147483649 (out of range)");
  refused({{"seed", -1}}, "key 'seed' must be a non-negative 64-bit integer, got -1");
  refused({{"learning_rate", "0.1"}}, "key 'learning_rate' must be a number, got \"0.1\"");
  refused({{"learning_rate", true}}, "must be a number, got true");
  refused({{"learning_rate", std::nan("")}}, "key 'learning_rate' must be a finite number, got nan");
  refused({{"learning_rate", -INFINITY}}, "must be a finite number, got -inf");
  refused({{"async_save", 1}}, "key 'async_save' must be true or false, got 1");
  refused({{"device", "gpu"}}, "key 'device' must be one of cpu, cuda, auto, got \"gpu\"");
  refused({{"zero_stage", 4}}, "key 'zero_stage' must be 0, 1, 2 or 3, got 4");
  refused({{"beta2", 1.0}}, "key 'beta2' must be in [0, 1), got 1.0");
  refused({{"adam_eps", 0}}, "key 'adam_eps' must be > 0, got 0");
  refused({{"vocab", 2147483647}}, "key 'vocab' must be in [2, 16777216], got 2147483647");
  refused({{"nlayer", 3}}, "config file c.json: unknown config key 'nlayer'");
  refused(json::array({1}), "a config must be a JSON/TOML table of keys, got array");

  read(json::parse(R"({"learning_rate": 1, "seed": 18446744073709551615, "n_layer": 3, "data": "x.txt",
                       "async_save": true, "device": "auto"})"),
       m, t);
  REQUIRE(t.learning_rate == 1.0);  // an integer is a fine real number
  REQUIRE(t.seed == UINT64_MAX);
  REQUIRE(m.n_layer == 3);
  REQUIRE(t.data == "x.txt");
  REQUIRE(t.async_save);
  REQUIRE(t.device == "auto");
}

TEST_CASE("a string-list field takes an array of strings only", "[config]") {
  // No table field is a list yet; this row is built the way the table builds its own.
  static StringList stored;
  const FieldSpec f{"freeze",
                    FieldKind::text_list,
                    false,
                    InManifest::unsaved,
                    OnResume::this_run,
                    any(),
                    "help",
                    "",
                    [](const ModelConfig&, const TrainConfig&) { return json(stored); },
                    [](ModelConfig&, TrainConfig&, const json& v) { stored = v.get<StringList>(); }};
  ModelConfig m;
  TrainConfig t;
  set_field(f, json::array({"wte", "h.0.*"}), m, t, "--freeze");
  REQUIRE(stored == StringList{"wte", "h.0.*"});
  REQUIRE_THROWS_WITH(set_field(f, json::array({"wte", 3}), m, t, "--freeze"),
                      Catch::Contains("--freeze must be an array of strings, got [\"wte\",3]"));
  REQUIRE_THROWS_WITH(set_field(f, "wte", m, t, "--freeze"), Catch::Contains("must be an array of strings"));
}

TEST_CASE("validate() applies every field's limits and the rules across fields", "[config]") {
  TrainConfig t;
  t.global_batch_size = 10;
  REQUIRE_THROWS_WITH(t.validate(1), Catch::Contains("global_batch_size 10 is not a multiple of micro_batch_size 4"));
  t.global_batch_size = 8;
  t.zero_stage = 4;
  REQUIRE_THROWS_WITH(t.validate(2), Catch::Contains("--zero_stage must be 0, 1, 2 or 3, got 4"));
  t.zero_stage = 0;
  t.learning_rate = INFINITY;
  REQUIRE_THROWS_WITH(t.validate(1), Catch::Contains("--learning_rate must be a finite number, got inf"));
  t.learning_rate = 1e-3;
  t.micro_batch_size = 1;
  REQUIRE_THROWS_WITH(t.validate(16), Catch::Contains("smaller than the world size 16"));
  t.validate(8);
  ModelConfig m;
  m.vocab = INT_MAX;  // padded_vocab() would overflow: refused before anything is sized from it
  REQUIRE_THROWS_WITH(m.validate(), Catch::Contains("--vocab must be in [2, 16777216], got 2147483647"));
  m.vocab = 1 << 24;
  REQUIRE(m.padded_vocab() == 1 << 24);
  m.d_model = 30;
  m.n_head = 4;
  REQUIRE_THROWS_WITH(m.validate(), Catch::Contains("d_model (30) must be a positive multiple of n_head (4)"));
}

TEST_CASE("a resume takes the checkpoint's configuration unless a field is given explicitly", "[config][resume]") {
  ModelConfig saved_m = model_preset("small");
  TrainConfig saved_t;
  saved_t.warmup_steps = 20;
  saved_t.seed = 7;
  saved_t.zero_stage = 2;
  saved_t.save_interval = 10;
  saved_t.device = "cuda";
  saved_t.recompute = "block";  // memory settings: a bare restart must fit where the saving run did
  saved_t.zero_bucket_mb = 8;
  saved_t.threads = 8;
  saved_t.exit_after_steps = 3;
  saved_t.output_dir = "/old";
  const json manifest = manifest_of(saved_m, saved_t);
  TrainConfig now;  // `--resume_from_checkpoint latest --output_dir /new` and nothing else
  now.output_dir = "/new";
  now.resume_from_checkpoint = "latest";
  const std::set<std::string> given = {"output_dir", "resume_from_checkpoint"};

  ResumedConfig r = resume_config(manifest, ModelConfig(), now, given, "out/checkpoint-4");
  REQUIRE(r.model == saved_m);
  REQUIRE(r.train.warmup_steps == 20);    // listed: the checkpoint's
  REQUIRE(r.train.seed == 7);             // listed
  REQUIRE(r.train.zero_stage == 2);       // restored
  REQUIRE(r.train.save_interval == 10);   // restored
  REQUIRE(r.train.device == "cuda");      // restored
  REQUIRE(r.train.recompute == "block");  // restored
  REQUIRE(r.train.zero_bucket_mb == 8);   // restored
  REQUIRE(r.train.threads == 0);          // this_run: this machine's
  REQUIRE(r.train.exit_after_steps == 0);
  REQUIRE(r.train.output_dir == "/new");
  REQUIRE(r.train.resume_from_checkpoint == "latest");
  REQUIRE(r.changed.empty());

  now.warmup_steps = 30;  // a listed field given with a new value: used and listed
  now.max_steps = 100;
  now.seed = 7;        // given, but equal to the checkpoint's: not listed
  now.zero_stage = 3;  // restored field given: used, not listed
  now.recompute = "none";
  r = resume_config(
      manifest, ModelConfig(), now,
      {"output_dir", "warmup_steps", "max_steps", "seed", "zero_stage", "recompute", "resume_from_checkpoint"},
      "out/checkpoint-4");
  REQUIRE(r.train.recompute == "none");
  REQUIRE(r.train.warmup_steps == 30);
  REQUIRE(r.train.max_steps == 100);
  REQUIRE(r.train.zero_stage == 3);
  REQUIRE(r.changed == std::vector<std::string>{"max_steps 50 -> 100", "warmup_steps 20 -> 30"});
}

TEST_CASE("a resume refuses a different model or global batch given explicitly, naming each field",
          "[config][resume]") {
  TrainConfig saved_t;
  saved_t.global_batch_size = 8;  // written explicitly (the default 0 means micro-batch x ranks)
  const json manifest = manifest_of(ModelConfig(), saved_t);
  ModelConfig m;
  m.n_layer = 3;
  m.d_model = 128;
  m.n_head = 2;  // given, equal: not named
  REQUIRE_THROWS_WITH(resume_config(manifest, m, TrainConfig(), {"n_layer", "d_model", "n_head"}, "out/checkpoint-4"),
                      Catch::Contains("checkpoint out/checkpoint-4 was written for a different model: n_layer: 2 -> "
                                      "3; d_model: 64 -> 128; a resume takes the model") &&
                          !Catch::Contains("n_head:"));
  // Not given: the checkpoint's model, whatever this run's preset says.
  REQUIRE(resume_config(manifest, m, TrainConfig(), {}, "c").model == ModelConfig());
  TrainConfig t;
  t.global_batch_size = 16;
  REQUIRE_THROWS_WITH(resume_config(manifest, ModelConfig(), t, {"global_batch_size"}, "out/checkpoint-4"),
                      Catch::Contains("cannot be resumed with a different global_batch_size: 8 -> 16"));
  REQUIRE(resume_config(manifest, ModelConfig(), t, {}, "c").train.global_batch_size == 8);
}

TEST_CASE("init_from (--init_from) goes with no resume or with 'latest', never with a named checkpoint",
          "[config][resume]") {
  TrainConfig t;
  t.init_from = "gpt2_124M.bin";
  t.validate(1);
  t.resume_from_checkpoint = "latest";  // a requeued fine-tuning job: resumes once a checkpoint is committed
  t.validate(1);
  t.resume_from_checkpoint = "out/checkpoint-20";
  REQUIRE_THROWS_WITH(t.validate(1), Catch::Contains("--init_from gpt2_124M.bin and --resume_from_checkpoint "
                                                     "out/checkpoint-20 cannot be combined"));
  // A resume never takes --init_from from the checkpoint: which parameters to start from is this run's choice.
  REQUIRE(find_field("init_from")->on_resume == OnResume::this_run);
}

TEST_CASE(
    "a resume ignores keys it does not know, keeps this run's value for keys the checkpoint lacks, and "
    "refuses a saved value of the wrong type",
    "[config][resume]") {
  json manifest = manifest_of(ModelConfig(), TrainConfig());
  manifest["train"]["new_knob"] = 1;      // a newer writer's field, same format version
  manifest["train"].erase("async_save");  // an older writer's manifest
  TrainConfig now;
  now.async_save = true;
  REQUIRE(resume_config(manifest, ModelConfig(), now, {}, "c").train.async_save);
  manifest["train"]["warmup_steps"] = 2.5;
  REQUIRE_THROWS_WITH(resume_config(manifest, ModelConfig(), now, {}, "out/checkpoint-4"),
                      Catch::Contains("checkpoint out/checkpoint-4: train.warmup_steps must be an integer, got 2.5"));
}

TEST_CASE("error messages name the source file inside the repository, not the build machine's path", "[config]") {
  try {
    ZT_FAIL("boom");
  } catch (const Error& e) {
    const std::string what = e.what();
    INFO(what);
    REQUIRE(what.find(" at test/unit/test_config.cpp:") != std::string::npos);
  }
  REQUIRE(source_path("/somewhere/else/x.cpp") == "/somewhere/else/x.cpp");
}

TEST_CASE("test hooks refuse a malformed value, naming the variable", "[config]") {
  setenv("ZT_TEST_FAIL_RANK", "two", 1);
  REQUIRE_THROWS_WITH(test_hooks::fail_rank(), Catch::Contains("test hook ZT_TEST_FAIL_RANK=two: expected an integer"));
  setenv("ZT_TEST_FAIL_RANK", "2", 1);
  REQUIRE(test_hooks::fail_rank() == 2);
  unsetenv("ZT_TEST_FAIL_RANK");
  REQUIRE(test_hooks::fail_rank() == -1);
}
