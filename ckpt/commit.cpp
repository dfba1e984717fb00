// Commit protocol and manifest: a checkpoint exists only once its directory has been renamed into place.
#include "ckpt/commit.hpp"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc 2.28)
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <sys/statvfs.h>

#include "ckpt/ckpt_detail.hpp"
#include "ckpt/links.hpp"
#include "core/test_hooks.hpp"

namespace zt {
namespace fs = std::filesystem;

std::string fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return fmt::format("cannot open {} to fsync it: {}", path, std::strerror(errno));
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  if (rc != 0) return fmt::format("fsync of {} failed: {}", path, std::strerror(saved));
  return std::string();
}

std::string write_file_synced(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return fmt::format("cannot create {}: {}", path, std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int saved = errno;
      ::close(fd);
      return fmt::format("writing {} failed: {}", path, std::strerror(saved));
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0) {
    const int saved = errno;
    ::close(fd);
    return fmt::format("fsync of {} failed: {}", path, std::strerror(saved));
  }
  if (::close(fd) != 0) return fmt::format("closing {} failed: {}", path, std::strerror(errno));
  return std::string();
}

namespace {

/// Renames tmp_dir to final_dir: the commit. A re-save of a step swaps the two directories in one atomic step
/// (renameat2 RENAME_EXCHANGE), so at no moment is there no checkpoint of that step under its name; the old copy
/// then sits under the temporary name. Where the file system cannot swap (NFS), the old copy is first moved aside to
/// `.<name>.old`, which the run directory's clean-up renames back if the process dies before the second rename.
/// `replaced` receives where the old copy went ("" when there was none). Returns an error message or "".
std::string put_in_place(const std::string& output_dir, const std::string& tmp_dir, const std::string& final_dir,
                         std::string& replaced) {
  std::error_code ec;
  if (fs::exists(final_dir)) {
    test_hooks::kill_point("rename", 0, 0);
    if (::renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      replaced = tmp_dir;
    } else {
      if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return fmt::format("cannot swap {} into place of {}: {}", tmp_dir, final_dir, std::strerror(errno));
      replaced = fmt::format("{}/.{}.old", output_dir, fs::path(final_dir).filename().string());
      fs::remove_all(replaced, ec);
      fs::rename(final_dir, replaced, ec);
      if (ec) return fmt::format("cannot move aside existing {}: {}", final_dir, ec.message());
      test_hooks::kill_point("rename-aside", 0, 0);
    }
  } else {
    test_hooks::kill_point("rename", 0, 0);
  }
  if (replaced != tmp_dir) fs::rename(tmp_dir, final_dir, ec);
  if (ec) return fmt::format("cannot rename {} to {}: {}", tmp_dir, final_dir, ec.message());
  return std::string();
}

}  // namespace

std::string prepare_temp_dir(const std::string& output_dir, const std::string& tmp_dir) {
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) return fmt::format("cannot create output directory {}: {}", output_dir, ec.message());
  fs::remove_all(tmp_dir, ec);
  if (ec) return fmt::format("cannot remove stale temporary checkpoint {}: {}", tmp_dir, ec.message());
  fs::create_directories(tmp_dir, ec);
  if (ec) return fmt::format("cannot create temporary checkpoint directory {}: {}", tmp_dir, ec.message());
  return std::string();
}

std::string commit_checkpoint(const std::string& output_dir, const std::string& tmp_dir, const std::string& name,
                              const std::string& manifest_text) {
  std::string err = fsync_path(tmp_dir + "/" + kCheckpointFile, false);
  if (err.empty()) err = write_file_synced(tmp_dir + "/manifest.json", manifest_text + "\n");
  if (err.empty()) err = fsync_path(tmp_dir, true);
  if (!err.empty()) return err;
  const std::string final_dir = output_dir + "/" + name;
  std::string replaced;  // where the copy this save replaces ends up (a re-save of the step), removed last
  err = put_in_place(output_dir, tmp_dir, final_dir, replaced);
  if (!err.empty()) return err;
  err = fsync_path(output_dir, true);
  if (!err.empty()) return err;
  // `latest`: a small file replaced atomically (write + fsync + rename + fsync of the directory).
  test_hooks::kill_point("latest", 0, 0);
  const std::string latest_tmp = output_dir + "/.latest.tmp";
  err = write_file_synced(latest_tmp, name + "\n");
  if (!err.empty()) return err;
  test_hooks::kill_point("latest-rename", 0, 0);
  std::error_code ec;
  fs::rename(latest_tmp, output_dir + "/latest", ec);
  if (ec) return fmt::format("cannot update {}/latest: {}", output_dir, ec.message());
  err = fsync_path(output_dir, true);
  if (!replaced.empty()) fs::remove_all(replaced, ec);
  return err;
}

namespace {

/// Rename-then-delete: once the rename is on disk, a crash anywhere in the deletion leaves only a dot-name that is
/// never loaded and that the next prune (or the run directory's clean-up) finishes. Returns an error or "".
std::string prune_checkpoint(const std::string& output_dir, const std::string& dir, long index) {
  const std::string name = fs::path(dir).filename().string();
  const std::string aside = fmt::format("{}/.{}.pruning", output_dir, name);
  std::error_code ec;
  fs::remove_all(aside, ec);  // left by an earlier prune of a checkpoint of the same step
  if (!ec) fs::rename(dir, aside, ec);
  if (ec) return fmt::format("cannot move {} aside to {}: {}", dir, aside, ec.message());
  std::string err = fsync_path(output_dir, true);
  if (!err.empty()) return err;
  test_hooks::kill_point("prune", index, 0);
  fs::remove_all(aside, ec);
  if (ec) return fmt::format("cannot remove {} (moved aside from {}): {}", aside, name, ec.message());
  return std::string();
}

}  // namespace

Leftover classify_leftover(const std::string& name, int64_t* step) {
  if (name == ".latest.tmp") return Leftover::kLatestTemp;
  const std::string prefix = ".checkpoint-";
  if (name.rfind(prefix, 0) != 0) return Leftover::kNone;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return Leftover::kNone;
  const std::string digits = name.substr(prefix.size(), dot - prefix.size());
  if (digits.empty() || digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), ::isdigit))
    return Leftover::kNone;
  if (step) *step = std::stoll(digits);
  const std::string suffix = name.substr(dot);
  if (suffix == ".tmp") return Leftover::kSaveTemp;
  if (suffix == ".old") return Leftover::kMovedAside;
  if (suffix == ".pruning") return Leftover::kPruning;
  return Leftover::kNone;
}

namespace {

/// The checkpoints (directory names) retention keeps: the newest `keep` by commit order, the one `latest` names,
/// every one whose manifest cannot be read or that this run could not load (`unloadable`, not counted), and then
/// everything a kept one links to. False (nothing may be pruned) when the links of a kept checkpoint cannot be read.
/// `links` receives every checkpoint's links that could be read.
bool checkpoints_to_keep(const std::vector<CommittedCheckpoint>& all, const std::string& latest, int keep,
                         const std::vector<std::string>& unloadable, std::set<std::string>& kept,
                         std::map<std::string, std::set<std::string>>& links) {
  int n_newest = 0;
  for (const CommittedCheckpoint& c : all) {
    const std::string name = fs::path(c.path).filename().string();
    // Only what can be ordered is pruned: an unreadable manifest may be a passing read error on a good checkpoint.
    if (c.commit_seq < 0)
      fmt::print(stderr, "zerotrain: warning: --save_total_limit does not remove {}: {}\n", c.path, c.problem);
    // Counting a checkpoint this run could not load as kept would let a damaged one push out an intact older one.
    const bool bad = std::find(unloadable.begin(), unloadable.end(), name) != unloadable.end();
    if (bad)
      fmt::print(stderr,
                 "zerotrain: warning: --save_total_limit neither counts nor removes {}: this run could not load it\n",
                 c.path);
    if (bad || c.commit_seq < 0 || n_newest < keep || name == latest) kept.insert(name);
    if (!bad && c.commit_seq >= 0 && n_newest < keep) ++n_newest;
  }
  for (const CommittedCheckpoint& c : all) {
    const std::string name = fs::path(c.path).filename().string();
    try {
      links[name] = linked_checkpoints(c.path);
    } catch (const Error& e) {
      // It goes anyway, or it is already damaged: what it links to does not matter.
      if (!kept.count(name) || std::find(unloadable.begin(), unloadable.end(), name) != unloadable.end()) continue;
      fmt::print(stderr,
                 "zerotrain: warning: --save_total_limit removes nothing this time: cannot tell which checkpoints "
                 "{} links to: {}\n",
                 c.path, e.what());
      return false;
    }
  }
  std::vector<std::string> todo(kept.begin(), kept.end());
  while (!todo.empty()) {
    const std::string name = todo.back();
    todo.pop_back();
    for (const std::string& base : links[name])
      if (kept.insert(base).second) {
        todo.push_back(base);
        fmt::print("keeping {} (--save_total_limit {}): {} links to it\n", base, keep, name);
      }
  }
  return true;
}

}  // namespace

void apply_retention(const std::string& output_dir, int keep, const std::vector<std::string>& unloadable) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    if (classify_leftover(e.path().filename().string(), nullptr) != Leftover::kPruning) continue;
    std::error_code rm;
    fs::remove_all(e.path(), rm);
    if (!rm) fmt::print("finished removing {} (a prune that was interrupted)\n", e.path().string());
  }
  const std::string latest = fs::path(read_latest(output_dir)).filename().string();
  const std::vector<CommittedCheckpoint> all = checkpoints_by_commit(output_dir);
  std::set<std::string> kept;
  std::map<std::string, std::set<std::string>> links;
  if (!checkpoints_to_keep(all, latest, keep, unloadable, kept, links)) return;
  std::vector<std::string> doomed;  // most recent commit first
  for (const CommittedCheckpoint& c : all)
    if (!kept.count(fs::path(c.path).filename().string())) doomed.push_back(c.path);
  // A checkpoint goes only after every other doomed one that links to it: a crash between two prunes never leaves a
  // committed checkpoint whose links dangle.
  long pruned = 0;
  for (bool progress = true; progress && !doomed.empty();) {
    progress = false;
    for (auto it = doomed.begin(); it != doomed.end();) {
      const std::string name = fs::path(*it).filename().string();
      const bool linked_to = std::any_of(doomed.begin(), doomed.end(), [&](const std::string& other) {
        return other != *it && links[fs::path(other).filename().string()].count(name) > 0;
      });
      if (linked_to) {
        ++it;
        continue;
      }
      const std::string err = prune_checkpoint(output_dir, *it, pruned++);
      if (!err.empty())
        fmt::print(stderr, "zerotrain: warning: cannot remove old checkpoint {}: {}\n", *it, err);
      else
        fmt::print("removed old checkpoint {} (--save_total_limit {})\n", *it, keep);
      it = doomed.erase(it);
      progress = true;
    }
  }
}

uint64_t free_bytes(const std::string& dir) {
  // Test-only: pretend this many bytes are free, so the pre-check passes and a real write runs into ENOSPC.
  if (const auto fake = test_hooks::free_bytes_override()) return *fake;
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) return UINT64_MAX;
  return uint64_t(st.f_bavail) * uint64_t(st.f_frsize);
}

namespace {

/// (step, path) of every committed checkpoint directory, newest step first.
std::vector<std::pair<int64_t, std::string>> committed_dirs(const std::string& output_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return {};
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("checkpoint-", 0) != 0 || !e.is_directory()) continue;
    const std::string digits = n.substr(11);
    // (More than 18 digits is no step a run can reach, and would overflow.)
    if (digits.empty() || digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    found.emplace_back(std::stoll(digits), e.path().string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

}  // namespace

std::vector<std::string> list_checkpoints(const std::string& output_dir) {
  std::vector<std::string> out;
  for (auto& f : committed_dirs(output_dir)) out.push_back(f.second);
  return out;
}

std::vector<CommittedCheckpoint> checkpoints_by_commit(const std::string& output_dir) {
  std::vector<CommittedCheckpoint> out;
  for (auto& [step, dir] : committed_dirs(output_dir)) {
    CommittedCheckpoint c;
    c.path = dir;
    c.step = step;
    try {
      const nlohmann::json m = read_manifest(dir);
      const auto it = m.find("commit_seq");
      if (it == m.end())
        c.commit_seq = 0;
      else if (it->is_number_integer() && it->get<int64_t>() >= 0)
        c.commit_seq = it->get<int64_t>();
      else
        c.problem = fmt::format("the manifest of {} has an invalid commit_seq ({})", dir, it->dump());
    } catch (const Error& e) {
      c.problem = e.what();
    }
    out.push_back(std::move(c));
  }
  // Unreadable (-1) sorts after every readable checkpoint; equal keys keep the step order.
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.commit_seq > b.commit_seq; });
  return out;
}

std::string read_latest(const std::string& output_dir) {
  std::ifstream in(output_dir + "/latest");
  std::string name;
  if (!(in >> name)) return std::string();
  if (name.find('/') != std::string::npos || name.rfind("checkpoint-", 0) != 0) return std::string();
  return output_dir + "/" + name;
}

nlohmann::json build_manifest(const ModelConfig& model, const TrainConfig& train, const TrainProgress& progress,
                              const ShardSnapshot& snap, int world_size,
                              const std::vector<std::vector<uint64_t>>& chunk_digests) {
  const ParamTable& table = *snap.table;
  nlohmann::json units = nlohmann::json::array();
  for (size_t u = 0; u < table.units().size(); ++u) {
    // A unit is one part unless it exceeds the writer's --zero_bucket_mb; its sizes are then the parts' sums.
    nlohmann::json parts = nlohmann::json::array();
    size_t padded = 0, shard = 0;
    for (const PartLayout& P : snap.parts) {
      if (P.unit != int(u)) continue;
      parts.push_back({{"begin", P.begin},
                       {"numel", P.end - P.begin},
                       {"padded_numel", P.layout.padded_numel},
                       {"shard_numel", P.layout.shard_numel}});
      padded += P.layout.padded_numel;
      shard += P.layout.shard_numel;
    }
    nlohmann::json tensors = nlohmann::json::array();
    for (int ti : table.units()[u].tensors) {
      const TensorSpec& t = table.tensors()[size_t(ti)];
      tensors.push_back(
          {{"name", t.name}, {"unit_offset", t.unit_offset}, {"numel", t.numel()}, {"storage_numel", t.storage_numel}});
    }
    units.push_back({{"name", table.units()[u].name},
                     {"numel", table.units()[u].numel},
                     {"padded_numel", padded},
                     {"shard_numel", shard},
                     {"parts", parts},
                     {"tensors", tensors}});
  }
  nlohmann::json datasets = nlohmann::json::object();
  const std::vector<std::string> names = checkpoint_dataset_names(table);
  nlohmann::json frozen = nlohmann::json::array();  // their optim datasets are absent (version 3)
  for (size_t d = 0; d < names.size(); ++d) {
    const TensorSpec& t = table.tensors()[d % table.tensors().size()];
    const bool first_of_tensor = d < table.tensors().size();
    if (first_of_tensor && dataset_absent(snap.stateless, d + table.tensors().size())) frozen.push_back(t.name);
    if (dataset_absent(snap.stateless, d)) continue;
    nlohmann::json chunks = nlohmann::json::array();
    for (uint64_t c : chunk_digests[d]) chunks.push_back(hex64(c));
    datasets[names[d]] = {{"shape", t.shape},
                          {"dtype", "float32"},
                          {"xxh64", hex64(tensor_checksum(chunk_digests[d]))},
                          {"chunks", chunks}};
  }
  return {
      {"format", "zerotrain-checkpoint"},
      {"format_version", kCheckpointFormatVersion},
      {"zerotrain_version", ZT_VERSION},
      {"model", to_json(model)},
      {"train", to_json(train)},
      {"step", progress.step},
      {"commit_seq", progress.commit_seq},
      {"tokens_seen", progress.tokens_seen},
      {"data",
       {{"cursor", progress.data_cursor}, {"seed", train.seed}, {"global_batch_size", train.global_batch_size}}},
      {"rng",
       {{"kind", "philox4x32-10, counter-based"},
        {"init_seed", train.seed},
        {"data_seed", train.seed},
        {"note", "every random number is a pure function of (seed, stream, index): no generator state to save"}}},
      {"lr_schedule",
       {{"kind", "linear warmup + cosine"},
        {"step", progress.step},
        {"last_lr", progress.lr},
        {"peak_lr", train.learning_rate},
        {"warmup_steps", train.warmup_steps},
        {"max_steps", train.max_steps},
        {"min_lr_ratio", train.min_lr_ratio}}},
      {"optimizer",
       {{"kind", "adamw"},
        {"step", snap.adam_step},
        {"beta1", train.beta1},
        {"beta2", train.beta2},
        {"eps", train.adam_eps},
        {"weight_decay", train.weight_decay},
        {"frozen", frozen}}},
      {"world_size", world_size},
      {"zero_stage", snap.zero_stage},
      {"partition", {{"align", 16}, {"units", units}}},
      {"checksum",
       {{"algorithm", "xxh64 of each chunk, then xxh64 of the chunk digests (u64 LE)"},
        {"chunk_elems", kChecksumChunkElems}}},
      {"datasets", datasets},
  };
}

}  // namespace zt
