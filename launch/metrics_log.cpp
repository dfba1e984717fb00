// MetricsLog: opening (fresh or truncated to the resumed step) and appending rows of OUTPUT/metrics.jsonl.
#include "launch/metrics_log.hpp"

#include <filesystem>

#include "core/errors.hpp"

namespace zt {
namespace {

// Rewrites `path` with its rows up to `step`; a torn last line (a run killed mid-write) ends the kept part.
void keep_rows_up_to(const std::string& path, int step) {
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", 0) <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      break;
    }
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

}  // namespace

MetricsLog::MetricsLog(const std::string& output_dir, bool lead, bool resumed, int resumed_step) : lead_(lead) {
  if (!lead_) return;
  std::error_code ec;
  std::filesystem::create_directories(output_dir, ec);
  ZT_CHECK(!ec, "cannot create output directory '{}': {}", output_dir, ec.message());
  const std::string path = output_dir + "/metrics.jsonl";
  if (resumed) {
    keep_rows_up_to(path, resumed_step);
    out_.open(path, std::ios::app);
  } else {
    out_.open(path, std::ios::trunc);
  }
  ZT_CHECK(out_.good(), "cannot open {} for writing", path);
}

void MetricsLog::write(const nlohmann::json& row) {
  if (!lead_) return;
  out_ << row.dump() << '\n';
  out_.flush();
}

}  // namespace zt
