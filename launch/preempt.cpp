// Signal handlers that record a preemption request; the trainer acts on it at the next step boundary.
#include "launch/preempt.hpp"

#include <csignal>

namespace zt {
namespace {
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_preempt(int sig) {
  if (g_signal == 0) g_signal = sig;  // a second signal (e.g. during the save) changes nothing
}
}  // namespace

void install_preemption_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_preempt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // MPI and file I/O continue; the flag is read between steps
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

int preemption_signal() { return int(g_signal); }

}  // namespace zt
