// metrics.jsonl: one JSON row per optimizer step, written by rank 0, kept consistent with the checkpoint resumed.
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace zt {

/// OUTPUT/metrics.jsonl. Only the lead rank (rank 0) opens and writes the file; on the other ranks every call is a
/// no-op, so the trainer calls it alike everywhere.
class MetricsLog {
 public:
  /// Creates output_dir and opens the file on the lead rank: truncated for a fresh run; for a resumed one, the rows up
  /// to `resumed_step` are kept and the rest dropped (a crashed run may have logged steps past its last checkpoint;
  /// they are redone). Throws zt::Error when the directory or the file cannot be opened.
  MetricsLog(const std::string& output_dir, bool lead, bool resumed, int resumed_step);

  /// Appends one row and flushes it, so a killed run leaves every completed step on disk.
  void write(const nlohmann::json& row);

 private:
  bool lead_;
  std::ofstream out_;
};

}  // namespace zt
