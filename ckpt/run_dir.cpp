// The output directory's lock (flock on OUTPUT/.lock, naming its holder) and the clean-up of stale leftovers.
#include "ckpt/run_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <utility>

#include "ckpt/commit.hpp"
#include "sharding/comm.hpp"

namespace zt {
namespace fs = std::filesystem;

namespace {

/// This process as the lock file records it.
std::string holder_text() {
  nlohmann::json j = {{"host", hostname()}, {"pid", long(::getpid())}};
  if (const char* job = std::getenv("SLURM_JOB_ID")) {
    std::string id = job;
    const char* array_job = std::getenv("SLURM_ARRAY_JOB_ID");
    const char* task = std::getenv("SLURM_ARRAY_TASK_ID");
    if (array_job && task) id += fmt::format(" (array task {}_{})", array_job, task);
    j["slurm_job_id"] = id;
  }
  char since[64] = "";
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  if (::localtime_r(&now, &tm)) std::strftime(since, sizeof(since), "%Y-%m-%dT%H:%M:%S%z", &tm);
  j["since"] = since;
  return j.dump() + "\n";
}

/// The holder recorded in an open lock file, in words.
std::string describe_holder(int fd, const std::string& path) {
  std::string text(4096, '\0');
  const ssize_t n = ::pread(fd, text.data(), text.size(), 0);
  text.resize(n > 0 ? size_t(n) : 0);
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    std::string out = fmt::format("held by host {}, pid {}", j.at("host").get<std::string>(), j.at("pid").get<long>());
    if (j.contains("slurm_job_id")) out += fmt::format(", Slurm job {}", j["slurm_job_id"].get<std::string>());
    if (j.contains("since")) out += fmt::format(", since {}", j["since"].get<std::string>());
    return out;
  } catch (const nlohmann::json::exception&) {
    // The holder writes its name right after locking; an empty file is a holder that is just starting.
    return text.empty() ? fmt::format("holder unknown: {} is empty", path)
                        : fmt::format("holder unknown: {} holds '{}'", path, text.substr(0, 200));
  }
}

/// Writes the whole of `text` at offset 0 of `fd`, replacing what was there; "" or the error.
std::string replace_contents(int fd, const std::string& text) {
  if (::ftruncate(fd, 0) != 0) return std::strerror(errno);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::pwrite(fd, text.data() + done, text.size() - done, off_t(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::strerror(errno);
    done += size_t(n);
  }
  // Another node reads the holder through the file server: flush it there.
  if (::fdatasync(fd) != 0) return std::strerror(errno);
  return std::string();
}

uint64_t tree_bytes(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return fs::is_regular_file(p, ec) ? fs::file_size(p, ec) : 0;
  uint64_t total = 0;
  for (fs::recursive_directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  return total;
}

/// Removes a leftover and says so (`why`: what it was left from).
std::string remove_leftover(const fs::path& p, const char* why) {
  const uint64_t bytes = tree_bytes(p);
  std::error_code ec;
  fs::remove_all(p, ec);
  if (ec) return fmt::format("could not remove {} ({}): {}", p.string(), why, ec.message());
  return fmt::format("removed {} ({:.1f} MiB): {}", p.string(), double(bytes) / double(1 << 20), why);
}

}  // namespace

RunDirLock RunDirLock::take(const std::string& output_dir) {
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) throw RunDirLockedError(fmt::format("cannot create output directory {}: {}", output_dir, ec.message()));
  const std::string path = (fs::path(output_dir) / kRunDirLockFile).string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    throw RunDirLockedError(
        fmt::format("cannot open the lock file {} of output directory {}: {}", path, output_dir, std::strerror(errno)));
  int rc;
  do {
    rc = ::flock(fd, LOCK_EX | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    const std::string holder = err == EWOULDBLOCK ? describe_holder(fd, path) : std::string();
    ::close(fd);
    if (err == EWOULDBLOCK)
      throw RunDirLockedError(fmt::format(
          "output directory {} is in use by another zerotrain job ({}): two jobs writing one directory destroy "
          "each other's checkpoints; wait for that job to end, or give this one another --output_dir",
          output_dir, holder));
    throw RunDirLockedError(fmt::format(
        "cannot lock output directory {}: flock on {} failed: {}; the file system may not support flock (Lustre "
        "needs the 'flock' mount option, NFS its lock service; docs/checkpoint-format.md, section 1)",
        output_dir, path, std::strerror(err)));
  }
  RunDirLock lock(output_dir, fd);
  const std::string err = replace_contents(fd, holder_text());
  if (!err.empty())
    throw RunDirLockedError(fmt::format("cannot write the lock file {}: {}", path, err));  // ~RunDirLock unlocks
  return lock;
}

RunDirLock RunDirLock::take_collective(const std::string& output_dir, Comm& comm) {
  RunDirLock lock(output_dir, -1);
  std::string err;
  if (comm.rank() == 0) {
    try {
      lock = take(output_dir);
    } catch (const Error& e) {
      err = e.what();
    }
  }
  uint64_t len = err.size();
  comm.broadcast(&len, sizeof(len), 0);
  err.resize(len);
  comm.broadcast(err.data(), len, 0);
  if (!err.empty()) throw RunDirLockedError(err);
  return lock;
}

RunDirLock::RunDirLock(RunDirLock&& other) noexcept : dir_(std::move(other.dir_)), fd_(std::exchange(other.fd_, -1)) {}

RunDirLock& RunDirLock::operator=(RunDirLock&& other) noexcept {
  if (this != &other) {
    release();
    dir_ = std::move(other.dir_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

RunDirLock::~RunDirLock() { release(); }

void RunDirLock::release() {
  // Closing the only descriptor of the open file drops the flock.
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::vector<std::string> RunDirLock::clean_leftovers() const {
  std::vector<std::string> done;
  if (!held()) return done;
  std::vector<fs::path> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) names.push_back(e.path());
  std::sort(names.begin(), names.end());
  bool renamed = false;
  for (const fs::path& p : names) {
    int64_t step = 0;
    switch (classify_leftover(p.filename().string(), &step)) {
      case Leftover::kNone:
        break;
      case Leftover::kSaveTemp:
        done.push_back(remove_leftover(p, "a save that did not commit"));
        break;
      case Leftover::kPruning:
        done.push_back(remove_leftover(p, "the rest of a prune that was interrupted"));
        break;
      case Leftover::kLatestTemp:
        done.push_back(remove_leftover(p, "an update of `latest` that did not finish"));
        break;
      case Leftover::kMovedAside: {
        const fs::path committed = fs::path(dir_) / fmt::format("checkpoint-{}", step);
        if (fs::exists(committed, ec)) {
          done.push_back(remove_leftover(p, "the old copy of a checkpoint that a later save replaced"));
          break;
        }
        fs::rename(p, committed, ec);
        done.push_back(
            ec ? fmt::format("could not restore {} from {}: {}", committed.string(), p.string(), ec.message())
               : fmt::format("restored {} from {}: the save that was replacing it died before its commit",
                             committed.string(), p.string()));
        renamed = renamed || !ec;
        break;
      }
    }
  }
  if (renamed) {
    const std::string err = fsync_path(dir_, true);
    if (!err.empty()) done.push_back(err);
  }
  return done;
}

}  // namespace zt
