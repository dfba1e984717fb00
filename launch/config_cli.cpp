// `zerotrain train`'s flags generated from the config table, the config-file reader, precedence and resume rule.
#include "launch/config_cli.hpp"

#include <cpptoml.h>

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ckpt/checkpoint.hpp"
#include "core/errors.hpp"

namespace zt {
namespace {

std::string type_name(const FieldSpec& f) {
  if (!f.check.choices.empty()) return fmt::format("{{{}}}", fmt::join(f.check.choices, ","));
  switch (f.kind) {
    case FieldKind::int32:
    case FieldKind::int64:
      return "INT";
    case FieldKind::uint64:
      return "UINT";
    case FieldKind::real:
      return "FLOAT";
    case FieldKind::boolean:
      return "";
    case FieldKind::text:
      return "TEXT";
    case FieldKind::text_list:
      return "LIST";
  }
  return "";
}

template <typename N>
bool parse_whole(const std::string& s, N& out) {
  const char* end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, out);
  return r.ec == std::errc() && r.ptr == end;
}

// A flag's text as the JSON value a config file would hold, so both go through set_field's checks; text that is
// not a number where one goes stays a string, which set_field refuses naming the flag and the text.
nlohmann::json flag_value(const FieldSpec& f, const std::string& s) {
  switch (f.kind) {
    case FieldKind::int32:
    case FieldKind::int64: {
      int64_t v = 0;
      if (parse_whole(s, v)) return v;
      uint64_t u = 0;
      if (parse_whole(s, u)) return u;  // beyond int64: refused as out of range
      return s;
    }
    case FieldKind::uint64: {
      uint64_t u = 0;
      return parse_whole(s, u) ? nlohmann::json(u) : nlohmann::json(s);
    }
    case FieldKind::real: {
      char* end = nullptr;
      const double v = std::strtod(s.c_str(), &end);
      return !s.empty() && *end == '\0' ? nlohmann::json(v) : nlohmann::json(s);
    }
    case FieldKind::boolean:
      if (s == "true" || s == "1" || s == "on" || s == "yes") return true;
      if (s == "false" || s == "0" || s == "off" || s == "no") return false;
      return s;
    case FieldKind::text:
      return s;
    case FieldKind::text_list: {
      nlohmann::json list = nlohmann::json::array();
      std::stringstream in(s);
      for (std::string item; std::getline(in, item, ',');)
        if (!item.empty()) list.push_back(item);
      return list;
    }
  }
  return s;
}

nlohmann::json toml_value(const cpptoml::base& v, const std::string& path, const std::string& key) {
  auto& b = const_cast<cpptoml::base&>(v);  // cpptoml's as<T>() is not const
  if (auto s = b.as<std::string>()) return s->get();
  if (auto i = b.as<int64_t>()) return i->get();
  if (auto d = b.as<double>()) return d->get();
  if (auto x = b.as<bool>()) return x->get();
  if (b.is_array()) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& e : b.as_array()->get()) list.push_back(toml_value(*e, path, key));
    return list;
  }
  ZT_FAIL(
      "config file {}: key '{}' must be a string, number, boolean or array; tables and dates are not config "
      "values",
      path, key);
}

// The flag of one config field; the last of a repeated flag wins (as in argparse): launch scripts append flags to a
// user's.
CLI::Option* add_field_flag(CLI::App& app, const FieldSpec& f, const std::string& shown_default) {
  const std::string flag = "--" + f.name;
  CLI::Option* o = f.kind == FieldKind::boolean ? app.add_flag(flag) : app.add_option(flag);
  o->description(f.help)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  if (f.kind != FieldKind::boolean) o->type_name(type_name(f))->default_str(shown_default);
  return o;
}

void set_from_flag(const FieldSpec& f, const CLI::Option& o, ModelConfig& m, TrainConfig& t) {
  set_field(f, flag_value(f, o.results().back()), m, t, "--" + f.name);
}

}  // namespace

FieldFlags::FieldFlags(CLI::App& app, const std::vector<std::string>& names,
                       const std::vector<std::pair<std::string, std::string>>& shown_defaults) {
  for (const std::string& name : names) {
    const FieldSpec* f = find_field(name);
    ZT_ASSERT(f != nullptr);
    std::string shown = f->model ? "the model's" : f->default_text;
    for (const auto& [field, text] : shown_defaults)
      if (field == name) shown = text;
    options_.emplace_back(f, add_field_flag(app, *f, shown));
  }
}

CLI::Option* FieldFlags::option(const std::string& name) const {
  for (const auto& [f, o] : options_)
    if (f->name == name) return o;
  ZT_ASSERT(false);
  return nullptr;
}

void FieldFlags::apply(ModelConfig& m, TrainConfig& t) const {
  for (const auto& [f, o] : options_)
    if (o->count() > 0) set_from_flag(*f, *o, m, t);
}

TrainFlags::TrainFlags(CLI::App& train) : app_(train) {
  train.add_option("--preset", preset_, fmt::format("Model preset: {}", fmt::join(preset_names(), ", ")))
      ->default_str("tiny")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  train
      .add_option("--config", config_file_,
                  "TOML file, or JSON when named *.json, with any of these flags' names as keys (flags win)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  train.footer(
      "Precedence: flags > --config file > on a resume, the checkpoint's configuration > --preset and defaults. A "
      "resume keeps the checkpoint's value of every field not given explicitly (docs/usage.md).");
  for (const FieldSpec& f : config_fields())
    options_.emplace_back(&f, add_field_flag(train, f, f.model ? "preset" : f.default_text));
}

TrainSettings TrainFlags::settings() const {
  TrainSettings s;
  nlohmann::json file = config_file_.empty() ? nlohmann::json::object() : read_config_file(config_file_);
  std::string preset = preset_;
  bool preset_given = app_.get_option("--preset")->count() > 0;
  std::string preset_source = "--preset " + preset;
  if (!preset_given && file.contains("preset")) {
    ZT_CHECK(file["preset"].is_string(), "config file {}: key 'preset' must be a string, got {}", config_file_,
             file["preset"].dump());
    preset = file["preset"].get<std::string>();
    preset_given = true;
    preset_source = fmt::format("preset {} in config file {}", preset, config_file_);
  }
  file.erase("preset");
  s.model = model_preset(preset);
  auto given = [&s](const std::string& key, const std::string& source) {
    s.explicit_keys.insert(key);
    s.sources[key] = source;
  };
  for (const FieldSpec& f : config_fields())
    if (f.model && preset_given) given(f.name, preset_source);
  update_from_json(file, s.model, s.train, fmt::format("config file {}: ", config_file_));
  for (auto it = file.begin(); it != file.end(); ++it) given(it.key(), "config file " + config_file_);
  for (const auto& [f, o] : options_) {
    if (o->count() == 0) continue;
    set_from_flag(*f, *o, s.model, s.train);
    given(f->name, "--" + f->name);
  }
  return s;
}

nlohmann::json read_config_file(const std::string& path) {
  std::error_code ec;
  ZT_CHECK(!std::filesystem::is_directory(path, ec),
           "config file {} is a directory; --config takes a .toml or .json file", path);
  std::ifstream in(path);
  ZT_CHECK(in.good(), "cannot open config file '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const bool is_json = path.size() >= 5 && path.substr(path.size() - 5) == ".json";
  nlohmann::json j;
  if (is_json) {
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      ZT_FAIL("config file {} is not valid JSON: {}", path, e.what());
    }
    ZT_CHECK(j.is_object(), "config file {} must hold a JSON object of keys, got {}", path, j.type_name());
    return j;
  }
  std::shared_ptr<cpptoml::table> table;
  try {
    std::istringstream is(text);
    table = cpptoml::parser(is).parse();
  } catch (const cpptoml::parse_exception& e) {
    ZT_FAIL("config file {} is not valid TOML (files not named *.json are read as TOML): {}", path, e.what());
  }
  j = nlohmann::json::object();
  for (const auto& [key, value] : *table) j[key] = toml_value(*value, path, key);
  return j;
}

void apply_resume_config(TrainSettings& s, const ResumeSource& src, bool lead) {
  if (src.path.empty() || !src.manifest.is_object()) return;
  check_format_version(src.manifest, src.path + "/" + kCheckpointFile);
  ResumedConfig r = resume_config(src.manifest, s.model, s.train, s.explicit_keys, src.path);
  s.model = r.model;
  s.train = r.train;
  if (lead && !r.changed.empty())
    fmt::print("changed on resume from {} (checkpoint -> this run): {}\n", src.path, fmt::join(r.changed, ", "));
}

}  // namespace zt
