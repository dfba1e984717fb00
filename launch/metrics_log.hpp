// metrics.jsonl: one JSON row per optimizer step, written by rank 0, kept consistent with the checkpoint resumed.
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "core/errors.hpp"

namespace zt {

/// metrics.jsonl (or its rewrite on resume) could not be written: the run stops with exit status 74, as for a
/// checkpoint that cannot be saved, rather than train on without its log.
class MetricsWriteError : public Error {
 public:
  explicit MetricsWriteError(const std::string& what) : Error(what) {}
};

/// What a resume made of an existing metrics.jsonl (MetricsLog::cut_to_step).
struct MetricsCut {
  int kept = 0;                       ///< rows kept: one per step, increasing, up to the resumed step
  int dropped = 0;                    ///< well-formed rows after the resumed step (redone by this run)
  std::vector<std::string> rejected;  ///< "line N: why: text" for each line that cannot be kept
  std::vector<int> missing;           ///< steps up to the resumed one with no row
};

/// OUTPUT/metrics.jsonl. Only the lead rank (rank 0) opens and writes the file; on the other ranks every call is a
/// no-op, so the trainer calls it alike everywhere.
class MetricsLog {
 public:
  /// Creates output_dir and opens the file on the lead rank: truncated for a fresh run; for a resumed one, cut back
  /// to `resumed_step` (cut_to_step), with a warning per line set aside and per step left without a row. Throws
  /// MetricsWriteError when the directory or the file cannot be written.
  MetricsLog(const std::string& output_dir, bool lead, bool resumed, int resumed_step);

  /// Appends one row and flushes it, so a killed run leaves every completed step on disk. Throws MetricsWriteError
  /// when the write fails (a full disk).
  void write(const nlohmann::json& row);

  /// Keeps the rows of `path` that parse as JSON objects with an integer "step", in increasing step order, up to
  /// `step`; a crashed run may have logged steps past its last checkpoint, which are redone. Every other line (torn
  /// by a kill, damaged, a step repeated or out of order) is appended to `path`.rejected rather than lost. The file is
  /// replaced atomically (temporary file, fsync, rename), and only when something changes. Throws
  /// MetricsWriteError when it cannot be rewritten.
  static MetricsCut cut_to_step(const std::string& path, int step);

 private:
  bool lead_;
  std::string path_;
  std::ofstream out_;
};

}  // namespace zt
