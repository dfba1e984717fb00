// Small helpers shared by the checkpoint's direct reads and writes (direct_read.cpp, direct_write.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace zt {

/// O_DIRECT wants file offsets, lengths and buffer addresses aligned to the device's logical block: 4096 covers
/// both 512-byte and 4K-sector devices.
constexpr uint64_t kDirectAlign = 4096;

/// strerror-like text of an errno value.
inline std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

/// Runs `work` on n_threads threads, the calling one included, and joins them. Where the system refuses to start
/// more threads, fewer run (each `work` must share the tasks with whoever else runs it, not own a fixed part).
template <typename Fn>
void run_on_threads(int n_threads, Fn&& work) {
  std::vector<std::thread> threads;
  try {
    for (int i = 1; i < n_threads; ++i) threads.emplace_back(work);
  } catch (const std::system_error&) {
  }
  work();
  for (std::thread& th : threads) th.join();
}

}  // namespace zt
