// `zerotrain train`'s configuration: one flag per field of the config table (core/config.hpp), TOML/JSON config
// files, their precedence, and the resume rule applied before anything is built.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/resume.hpp"
#include "core/config.hpp"

namespace zt {

/// A run's configuration and which fields were given explicitly.
struct TrainSettings {
  ModelConfig model;
  TrainConfig train;
  std::set<std::string> explicit_keys;  ///< fields set by a flag or a config-file key (by a preset: every model field)
  std::map<std::string, std::string>
      sources;  ///< who set each explicit key: "--n_layer", "config file F", "--preset P"
};

/// The flags of `zerotrain train` that make its configuration: --preset, --config and one per config field.
class TrainFlags {
 public:
  /// Registers the flags on `train` (kept by reference; it must outlive this object).
  explicit TrainFlags(CLI::App& train);
  /// After parsing: flags > config file > preset > defaults. Throws zt::Error naming a bad file, key or value.
  TrainSettings settings() const;

 private:
  CLI::App& app_;
  std::string preset_ = "tiny";
  std::string config_file_;
  std::vector<std::pair<const FieldSpec*, CLI::Option*>> options_;
};

/// Flags for some fields of the config table on another subcommand (`eval`, `sample`): train's names, help, types
/// and limits, so `eval --zero_stage 3` means what `train --zero_stage 3` does.
class FieldFlags {
 public:
  /// Registers --name on `app` for each of `names` (fields of core/config.hpp; an unknown name aborts).
  /// `shown_defaults` replaces the default --help shows where the subcommand starts from another value.
  FieldFlags(CLI::App& app, const std::vector<std::string>& names,
             const std::vector<std::pair<std::string, std::string>>& shown_defaults = {});
  /// The flag of field `name` (to mark it required, say).
  CLI::Option* option(const std::string& name) const;
  /// Sets the value of every flag given into `m` / `t` through the field's checks (zt::Error naming the flag); the
  /// other fields keep their values.
  void apply(ModelConfig& m, TrainConfig& t) const;

 private:
  std::vector<std::pair<const FieldSpec*, CLI::Option*>> options_;
};

/// A config file's keys: TOML, or JSON when the name ends in .json. Throws zt::Error naming the file (missing, a
/// directory, not parseable, a value that is not a string, number, boolean or array of strings).
nlohmann::json read_config_file(const std::string& path);

/// Makes the checkpoint a resume loads (`src`: its path and manifest, as zt::read_resume_source gives them) the
/// default for every field not given explicitly (zt::resume_config), and prints "changed on resume: ..." when `lead`
/// and a listed field changes. An unreadable manifest (src.problem) changes nothing: the load reports it. Throws
/// zt::Error for a format version this build does not read, or a must_match field given a different value.
void apply_resume_config(TrainSettings& s, const ResumeSource& src, bool lead);

}  // namespace zt
