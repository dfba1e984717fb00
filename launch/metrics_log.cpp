// MetricsLog: opening (fresh, or cut back to the resumed step without losing a line) and appending rows of
// OUTPUT/metrics.jsonl; every write failure stops the run.
#include "launch/metrics_log.hpp"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <sstream>

#include "ckpt/commit.hpp"

namespace zt {
namespace {

/// The step of a metrics row, or 0 when the line is not a JSON object with a positive integer "step".
int row_step(const std::string& line) {
  try {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.is_object()) return 0;
    const auto it = j.find("step");
    if (it == j.end() || !it->is_number_integer()) return 0;
    const int64_t s = it->get<int64_t>();
    return s > 0 && s <= std::numeric_limits<int>::max() ? int(s) : 0;
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
}

/// The start of a line, printable (a damaged line may hold any byte).
std::string excerpt(const std::string& line) {
  std::string out;
  for (size_t i = 0; i < line.size() && i < 100; ++i)
    out += std::isprint(static_cast<unsigned char>(line[i])) ? line[i] : '?';
  return line.size() > 100 ? out + "..." : out;
}

void append_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::app);
  out << text;
  out.flush();
  if (!out) throw MetricsWriteError(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
}

}  // namespace

MetricsCut MetricsLog::cut_to_step(const std::string& path, int step) {
  MetricsCut cut;
  std::string original;
  {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    original = ss.str();
  }
  std::string kept, rejected;
  std::istringstream lines(original);
  std::string line;
  int last = 0;
  for (int n = 1; std::getline(lines, line); ++n) {
    if (line.empty()) continue;
    const int s = row_step(line);
    std::string why;
    if (s == 0)
      why = "not a JSON row with a step (torn by a kill, or damaged)";
    else if (s <= last)
      why = fmt::format("step {} after step {} (repeated or out of order)", s, last);
    else if (s > step) {
      ++cut.dropped;  // logged after the checkpoint: this run trains that step again
      continue;
    }
    if (!why.empty()) {
      cut.rejected.push_back(fmt::format("line {}: {}: {}", n, why, excerpt(line)));
      rejected += line + "\n";
      continue;
    }
    for (int m = last + 1; m < s; ++m) cut.missing.push_back(m);
    kept += line + "\n";
    last = s;
    ++cut.kept;
  }
  for (int m = last + 1; m <= step; ++m) cut.missing.push_back(m);
  if (kept == original) return cut;
  // The lines set aside first: a kill between the two leaves them in both files, never in neither.
  if (!rejected.empty()) append_text(path + ".rejected", rejected);
  const std::filesystem::path p(path);
  const std::string tmp = (p.parent_path() / ("." + p.filename().string() + ".tmp")).string();
  std::string err = write_file_synced(tmp, kept);
  if (err.empty()) {
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    err = ec ? fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()) : fsync_path(p.parent_path(), true);
  }
  if (!err.empty()) throw MetricsWriteError(fmt::format("cannot cut {} back to step {}: {}", path, step, err));
  return cut;
}

MetricsLog::MetricsLog(const std::string& output_dir, bool lead, bool resumed, int resumed_step)
    : lead_(lead), path_(output_dir + "/metrics.jsonl") {
  if (!lead_) return;
  std::error_code ec;
  std::filesystem::create_directories(output_dir, ec);
  if (ec) throw MetricsWriteError(fmt::format("cannot create output directory '{}': {}", output_dir, ec.message()));
  if (resumed) {
    const MetricsCut cut = cut_to_step(path_, resumed_step);
    for (const auto& r : cut.rejected)
      fmt::print(stderr, "zerotrain: warning: {} {} (set aside in {}.rejected)\n", path_, r, path_);
    if (!cut.missing.empty())
      fmt::print(stderr, "zerotrain: warning: {} has no row for step(s) {} of the {} resumed\n", path_,
                 fmt::join(cut.missing, ", "), resumed_step);
    out_.open(path_, std::ios::app);
  } else {
    out_.open(path_, std::ios::trunc);
  }
  if (!out_.good()) throw MetricsWriteError(fmt::format("cannot open {} for writing: {}", path_, std::strerror(errno)));
}

void MetricsLog::write(const nlohmann::json& row) {
  if (!lead_) return;
  out_ << row.dump() << '\n';
  out_.flush();
  if (!out_)
    throw MetricsWriteError(fmt::format(
        "writing step {} to {} failed: {} (disk full?); the run stops rather than train on without its log: free "
        "space, then resume with --resume_from_checkpoint latest",
        row.value("step", 0), path_, std::strerror(errno)));
}

}  // namespace zt
