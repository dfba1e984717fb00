// The CUDA simulator's scheduler: a launch is checked at once and its grid queued on its stream (runtime.cpp runs
// the queue when the host synchronizes); a grid runs block after block; a block's threads are fibers switched
// cooperatively at __syncthreads and at every warp-wide instruction, which is where threads exchange data. A
// thread runs until it must wait; the last one to arrive at a barrier completes it (for a warp instruction: computes
// every lane's result) and goes on. Warps are run one at a time, each up to its next __syncthreads. No thread runs
// while another is between those points, so a run is deterministic, and the order warps and lanes are taken in
// (ZT_CUDA_SIM_ORDER=reverse) is the only thing that changes which thread's write to shared memory another sees
// without a barrier between them: running a kernel both ways shows such races.
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define ZT_SIM_ASAN 1
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "test/cuda_sim/cuda_sim.hpp"
#include "test/cuda_sim/sim_runtime.hpp"

// The static __shared__ variables of every simulated kernel (cuda_sim.hpp puts them in this section; the linker
// defines its bounds; weak, as a program may hold none).
extern "C" unsigned char __start_zt_sim_shared[] __attribute__((weak));
extern "C" unsigned char __stop_zt_sim_shared[] __attribute__((weak));

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace zt_sim {
namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = size_t(256) << 10;
constexpr size_t kDefaultSharedBytes = size_t(48) << 10;
constexpr size_t kMaxSharedBytes = 232448;  // an H100's opt-in maximum per block (227 KB)

enum class Op { kShuffle, kMma, kLdmatrix };
const char* op_name(Op op) {
  switch (op) {
    case Op::kShuffle:
      return "a shuffle";
    case Op::kMma:
      return "mma.sync";
    case Op::kLdmatrix:
      return "ldmatrix";
  }
  return "?";
}

// What one lane brings to a warp-wide instruction, and what it gets back.
struct LaneIn {
  Op op;
  unsigned mask;
  int arg;      // shuffle: the xor mask or source lane
  bool flag;    // shuffle: xor; ldmatrix: trans
  size_t size;  // shuffle: bytes
  uint64_t value;
  uint32_t a[4], b[2];
  float c[4];
  const void* row;
};
struct LaneOut {
  uint64_t value;
  float d[4];
  uint32_t r[4];
};
// Two rounds in turn: a lane starts round n + 2 only after every lane has arrived at n + 1, by which time all have
// read their results of round n.
struct Round {
  LaneIn in[kWarp];
  LaneOut out[kWarp];
  int arrived = 0;
};
struct WarpState {
  int live = 0;
  Round rounds[2];
};

// ---- fiber contexts ----
// x86-64: a switch saves the callee-saved registers and the SSE / x87 control words on the stack it leaves and
// restores them from the one it enters (no system call, unlike swapcontext's signal mask: the simulator switches
// tens of times per warp instruction). Elsewhere: ucontext.
// Under AddressSanitizer every switch is announced (__sanitizer_start/finish_switch_fiber), so that it knows which
// stack is running, and a fiber stack is unpoisoned before it is used again.
#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
  const void* bottom = nullptr;  // the stack's lowest address and size (AddressSanitizer's bookkeeping)
  size_t size = 0;
};
extern "C" void zt_sim_switch_stack(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .type zt_sim_switch_stack, @function
zt_sim_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size zt_sim_switch_stack, .-zt_sim_switch_stack
)");

// `leaving` true: the context switched from is never resumed.
void switch_context(Context& from, Context& to, bool leaving = false) {
#ifdef ZT_SIM_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(leaving ? nullptr : &fake_stack, to.bottom, to.size);
#else
  (void)leaving;
#endif
  zt_sim_switch_stack(&from.sp, to.sp);
#ifdef ZT_SIM_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// What a fiber calls first: completes the switch into it, learning the bounds of the stack it came from.
void entered_fiber(Context& came_from) {
#ifdef ZT_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &came_from.bottom, &came_from.size);
#else
  (void)came_from;
#endif
}

// A context that starts entry() on [stack, stack + n_bytes): the frame zt_sim_switch_stack pops, then entry's
// address for its ret, 16-byte aligned so that entry starts as if called.
void make_context(Context& c, void* stack, size_t n_bytes, void (*entry)()) {
#ifdef ZT_SIM_ASAN
  ASAN_UNPOISON_MEMORY_REGION(stack, n_bytes);  // frames of a fiber that never returned leave poison behind
#endif
  c.bottom = stack;
  c.size = n_bytes;
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack) + n_bytes) & ~uintptr_t(15));
  uint32_t mxcsr = __builtin_ia32_stmxcsr();
  uint16_t fpu_cw = 0;
  asm volatile("fnstcw %0" : "=m"(fpu_cw));
  top[-1] = 0;  // entry never returns
  top[-2] = reinterpret_cast<uint64_t>(entry);
  for (int i = 3; i <= 8; ++i) top[-i] = 0;  // rbp, rbx, r12..r15
  top[-9] = uint64_t(mxcsr) | uint64_t(fpu_cw) << 32;
  c.sp = top - 9;
}
#else
struct Context {
  ucontext_t uc;
};
void switch_context(Context& from, Context& to, bool /*leaving*/ = false) { swapcontext(&from.uc, &to.uc); }
void entered_fiber(Context&) {}
void make_context(Context& c, void* stack, size_t n_bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = n_bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

enum class Wait { kRunnable, kBlockBarrier, kWarpInstruction, kDone };

// One cp.async in flight: its source bytes (read at issue) and the group it belongs to (the number of groups the
// thread had committed when it issued the copy).
struct AsyncCopy {
  unsigned char* dst;
  unsigned char bytes[16];
  int n_bytes;
  uint64_t group;
};

struct Fiber {
  Context context;
  uint3 tid;
  int warp = 0, lane = 0;
  Wait wait = Wait::kRunnable;
  uint64_t round = 0;  // warp instructions taken so far
  void* stack = nullptr;
  std::vector<AsyncCopy> copies;  // cp.async not yet retired by a wait_group: dropped if the thread exits
  uint64_t n_committed = 0;       // cp.async groups committed so far
};

struct BlockRun {
  const LaunchConfig* config = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber>* fibers = nullptr;
  std::vector<WarpState> warps;
  int live = 0, at_barrier = 0;
  unsigned char* shared = nullptr;
  Context scheduler;
  Fiber* current = nullptr;
  std::string error;
};

std::mutex g_launch_mutex;  // one grid at a time: the fibers share the process-wide built-in variables
BlockRun* g_block = nullptr;
std::map<const void*, int> g_shared_limits;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
std::map<std::string, int> g_launches;       // accepted launches per kernel name

std::vector<void*>& stack_pool() {
  static std::vector<void*> pool;
  return pool;
}

// A fiber stack with a guard page below it: an overflow faults instead of corrupting a neighbour.
void* stack_at(size_t i) {
  auto& pool = stack_pool();
  while (pool.size() <= i) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "zerotrain CUDA simulator: cannot map a thread stack\n");
      std::abort();
    }
    mprotect(p, page, PROT_NONE);
    pool.push_back(static_cast<char*>(p) + page);
  }
  return pool[i];
}

std::string where(const BlockRun& b) {
  const Fiber& f = *b.current;
  char buf[160];
  std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z, f.tid.x,
                f.tid.y, f.tid.z);
  return buf;
}

void yield_to_scheduler() {
  BlockRun& b = *g_block;
  Fiber* f = b.current;
  switch_context(f->context, b.scheduler);
  // Resumed by the scheduler, which set threadIdx and current for this fiber.
}

// A fault inside the kernel: recorded, and this fiber is abandoned (the scheduler drops the whole grid).
[[noreturn]] void fault(const std::string& what) {
  BlockRun& b = *g_block;
  if (b.error.empty()) b.error = where(b) + ": " + what;
  Fiber* f = b.current;
  switch_context(f->context, b.scheduler, true);
  std::abort();  // never resumed
}

void release_block_barrier(BlockRun& b) {
  for (Fiber& f : *b.fibers)
    if (f.wait == Wait::kBlockBarrier) f.wait = Wait::kRunnable;
  b.at_barrier = 0;
}

void fiber_main() {
  BlockRun& b = *g_block;
  entered_fiber(b.scheduler);
  (*b.body)();
  Fiber& f = *b.current;
  f.wait = Wait::kDone;
  --b.live;
  WarpState& w = b.warps[size_t(f.warp)];
  --w.live;
  if (w.rounds[0].arrived + w.rounds[1].arrived > 0)
    fault("exited while the rest of its warp waits in a full-warp instruction");
  // Threads that have exited no longer hold back a __syncthreads (as on the hardware).
  if (b.at_barrier > 0 && b.at_barrier == b.live) release_block_barrier(b);
  switch_context(f.context, b.scheduler, true);  // never resumed
  std::abort();
}

// The results of a warp-wide instruction every lane has arrived at.
void complete(BlockRun& b, Round& round) {
  const LaneIn& first = round.in[0];
  for (int l = 1; l < kWarp; ++l) {
    const LaneIn& in = round.in[l];
    if (in.op != first.op)
      fault("diverged: lane 0 is at " + std::string(op_name(first.op)) + ", lane " + std::to_string(l) + " at " +
            op_name(in.op));
    if (in.op == Op::kShuffle && (in.size != first.size || in.mask != first.mask))
      fault("lanes disagree on a shuffle's mask or size");
    if (in.op == Op::kLdmatrix && in.flag != first.flag) fault("lanes disagree on ldmatrix .trans");
  }
  switch (first.op) {
    case Op::kShuffle:
      for (int l = 0; l < kWarp; ++l) {
        const int src = (round.in[l].flag ? (l ^ round.in[l].arg) : round.in[l].arg) & (kWarp - 1);
        round.out[l].value = round.in[src].value;
      }
      break;
    case Op::kMma: {
      float A[16][16], B[16][8], C[16][8];
      auto lo = [](uint32_t v) { return bf16_bits_to_float(uint16_t(v & 0xffffu)); };
      auto hi = [](uint32_t v) { return bf16_bits_to_float(uint16_t(v >> 16)); };
      for (int l = 0; l < kWarp; ++l) {
        const LaneIn& in = round.in[l];
        const int g = l / 4, t = l % 4;
        A[g][2 * t] = lo(in.a[0]), A[g][2 * t + 1] = hi(in.a[0]);
        A[g + 8][2 * t] = lo(in.a[1]), A[g + 8][2 * t + 1] = hi(in.a[1]);
        A[g][2 * t + 8] = lo(in.a[2]), A[g][2 * t + 9] = hi(in.a[2]);
        A[g + 8][2 * t + 8] = lo(in.a[3]), A[g + 8][2 * t + 9] = hi(in.a[3]);
        B[2 * t][g] = lo(in.b[0]), B[2 * t + 1][g] = hi(in.b[0]);
        B[2 * t + 8][g] = lo(in.b[1]), B[2 * t + 9][g] = hi(in.b[1]);
        C[g][2 * t] = in.c[0], C[g][2 * t + 1] = in.c[1];
        C[g + 8][2 * t] = in.c[2], C[g + 8][2 * t + 1] = in.c[3];
      }
      for (int l = 0; l < kWarp; ++l) {
        const int g = l / 4, t = l % 4;
        const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int e = 0; e < 4; ++e) {
          float acc = C[rows[e]][cols[e]];
          for (int k = 0; k < 16; ++k) acc += A[rows[e]][k] * B[k][cols[e]];
          round.out[l].d[e] = acc;
        }
      }
      break;
    }
    case Op::kLdmatrix: {
      const bool trans = first.flag;
      const unsigned char* lo_bound = b.shared;
      const unsigned char* hi_bound = b.shared + b.config->dynamic_shared_bytes;
      for (int l = 0; l < kWarp; ++l) {
        const auto* p = static_cast<const unsigned char*>(round.in[l].row);
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
          fault("ldmatrix row address of lane " + std::to_string(l) + " is not 16-byte aligned");
        if (p < lo_bound || p + 16 > hi_bound)
          fault("ldmatrix row address of lane " + std::to_string(l) + " is outside the block's shared memory");
      }
      auto element = [&](int m, int row, int col) {
        uint16_t v;
        std::memcpy(&v, static_cast<const unsigned char*>(round.in[8 * m + row].row) + 2 * col, 2);
        return uint32_t(v);
      };
      for (int l = 0; l < kWarp; ++l)
        for (int m = 0; m < 4; ++m) {
          const int q = l / 4, p = 2 * (l % 4);
          round.out[l].r[m] =
              trans ? element(m, p, q) | element(m, p + 1, q) << 16 : element(m, q, p) | element(m, q, p + 1) << 16;
        }
      break;
    }
  }
}

// Takes this lane into the warp-wide instruction `in`; returns its result once every lane has arrived.
const LaneOut& warp_instruction(const LaneIn& in) {
  BlockRun& b = *g_block;
  Fiber& f = *b.current;
  WarpState& w = b.warps[size_t(f.warp)];
  if (in.mask != 0xffffffffu) fault("only full-warp masks are simulated");
  if (w.live != kWarp) fault(std::string(op_name(in.op)) + " over a full warp after some of its lanes exited");
  Round& round = w.rounds[f.round % 2];
  ++f.round;
  round.in[f.lane] = in;
  if (++round.arrived == kWarp) {
    complete(b, round);
    round.arrived = 0;
    for (Fiber& other : *b.fibers)
      if (other.warp == f.warp && other.wait == Wait::kWarpInstruction) other.wait = Wait::kRunnable;
  } else {
    f.wait = Wait::kWarpInstruction;
    yield_to_scheduler();
  }
  return round.out[g_block->current->lane];
}

void poison_static_shared() {
  unsigned char *begin = __start_zt_sim_shared, *end = __stop_zt_sim_shared;
  if (begin != nullptr && end > begin) std::memset(begin, 0xff, size_t(end - begin));
}

// Context switches return twice, as setjmp does: kept out of run_grid's frame, whose locals they would otherwise
// put at risk.
__attribute__((noinline)) void prepare_fiber(Fiber& f) { make_context(f.context, f.stack, kStackBytes, fiber_main); }

__attribute__((noinline)) void resume(BlockRun& b, Fiber& f) {
  b.current = &f;
  threadIdx = f.tid;
  switch_context(b.scheduler, f.context);
}

std::string describe_waits(const BlockRun& b) {
  int n_block = 0, n_warp = 0;
  for (const Fiber& f : *b.fibers) {
    n_block += f.wait == Wait::kBlockBarrier;
    n_warp += f.wait == Wait::kWarpInstruction;
  }
  return std::to_string(n_block) + " thread(s) wait at __syncthreads, " + std::to_string(n_warp) +
         " in a warp instruction, " + std::to_string(b.live) + " have not exited";
}

// 1 reverse, 0 forward, -1 not yet read from ZT_CUDA_SIM_ORDER.
int g_reverse = -1;

bool reverse_order() {
  if (g_reverse < 0) {
    const char* v = std::getenv("ZT_CUDA_SIM_ORDER");
    g_reverse = v != nullptr && std::string(v) == "reverse" ? 1 : 0;
  }
  return g_reverse == 1;
}

cudaError_t check_config(const LaunchConfig& c, std::string& why) {
  const size_t threads = size_t(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64) {
    why = "block (" + std::to_string(c.block.x) + "," + std::to_string(c.block.y) + "," + std::to_string(c.block.z) +
          ") is not a valid block shape";
    return cudaErrorInvalidConfiguration;
  }
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 2147483647u || c.grid.y > 65535 ||
      c.grid.z > 65535) {
    why = "grid (" + std::to_string(c.grid.x) + "," + std::to_string(c.grid.y) + "," + std::to_string(c.grid.z) +
          ") is not a valid grid shape";
    return cudaErrorInvalidConfiguration;
  }
  auto it = g_shared_limits.find(c.kernel);
  const size_t limit = it != g_shared_limits.end() ? size_t(it->second) : kDefaultSharedBytes;
  if (c.dynamic_shared_bytes > limit) {
    why = std::to_string(c.dynamic_shared_bytes) + " bytes of dynamic shared memory, over the kernel's limit of " +
          std::to_string(limit) + " (cudaFuncAttributeMaxDynamicSharedMemorySize)";
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

}  // namespace

int launch_count(const std::string& name_part) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  int n = 0;
  for (const auto& kv : g_launches)
    if (kv.first.find(name_part) != std::string::npos) n += kv.second;
  return n;
}

void set_reverse_order(bool reverse) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_reverse = reverse ? 1 : 0;
}

float bf16_bits_to_float(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

cudaError_t set_kernel_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return set_last_error(cudaErrorNotSupported);
  if (value < 0 || size_t(value) > kMaxSharedBytes) return set_last_error(cudaErrorInvalidValue);
  g_shared_limits[kernel] = value;
  return cudaSuccess;
}

void launch_grid(const LaunchConfig& config, std::function<void()> thread_body) {
  {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    std::string why;
    if (const cudaError_t rc = check_config(config, why); rc != cudaSuccess) {
      report_failure(std::string("launch of ") + config.name + ": " + why);
      set_last_error(rc);
      return;
    }
    ++g_launches[config.name];
  }
  enqueue(config.stream, [config, body = std::move(thread_body)] { run_grid(config, body); });
}

void run_grid(const LaunchConfig& config, const std::function<void()>& thread_body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  const unsigned n_threads = config.block.x * config.block.y * config.block.z;
  std::vector<Fiber> fibers(n_threads);
  std::vector<unsigned char> shared(std::max<size_t>(1, config.dynamic_shared_bytes));
  const bool reverse = reverse_order();
  blockDim = config.block;
  gridDim = config.grid;
  const size_t n_blocks = size_t(config.grid.x) * config.grid.y * config.grid.z;
  for (size_t nb = 0; nb < n_blocks; ++nb) {
    const size_t lin = reverse ? n_blocks - 1 - nb : nb;
    blockIdx = uint3{unsigned(lin % config.grid.x), unsigned(lin / config.grid.x % config.grid.y),
                     unsigned(lin / (size_t(config.grid.x) * config.grid.y))};
    // Shared memory starts each block with garbage, as on the hardware: a kernel that reads before it writes sees
    // NaN floats.
    std::memset(shared.data(), 0xff, shared.size());
    poison_static_shared();
    BlockRun b;
    b.config = &config;
    b.body = &thread_body;
    b.fibers = &fibers;
    b.warps.assign((n_threads + kWarp - 1) / kWarp, WarpState{});
    b.live = int(n_threads);
    b.shared = shared.data();
    g_block = &b;
    for (unsigned i = 0; i < n_threads; ++i) {
      Fiber& f = fibers[i];
      f = Fiber{};
      f.tid = uint3{i % config.block.x, i / config.block.x % config.block.y, i / (config.block.x * config.block.y)};
      f.warp = int(i / kWarp);
      f.lane = int(i % kWarp);
      ++b.warps[size_t(f.warp)].live;
      f.stack = stack_at(i);
      prepare_fiber(f);
    }
    // A warp at a time, each as far as it can go (to a __syncthreads or its end) before the next starts: the
    // schedule furthest from lockstep, so that a missing barrier lets one warp overwrite shared memory another has
    // yet to read.
    const unsigned n_warps = unsigned(b.warps.size());
    while (b.live > 0 && b.error.empty()) {
      bool ran = false;
      for (unsigned kw = 0; kw < n_warps && b.error.empty(); ++kw) {
        const unsigned w = reverse ? n_warps - 1 - kw : kw;
        const unsigned first = w * kWarp, last = std::min(n_threads, first + kWarp);
        for (bool progressed = true; progressed && b.error.empty();) {
          progressed = false;
          for (unsigned k = first; k < last && b.error.empty(); ++k) {
            Fiber& f = fibers[reverse ? first + last - 1 - k : k];
            if (f.wait != Wait::kRunnable) continue;
            resume(b, f);
            progressed = ran = true;
          }
        }
      }
      if (!ran && b.error.empty()) b.error = "deadlock: " + describe_waits(b);
    }
    g_block = nullptr;
    if (!b.error.empty()) {
      report_failure(std::string("kernel ") + config.name + ": " + b.error);
      set_last_error(cudaErrorLaunchFailure);
      return;
    }
  }
}

void* dynamic_shared() { return g_block->shared; }

void sync_threads() {
  BlockRun& b = *g_block;
  Fiber& f = *b.current;
  if (++b.at_barrier == b.live) {
    release_block_barrier(b);
    return;
  }
  f.wait = Wait::kBlockBarrier;
  yield_to_scheduler();
}

void shuffle(void* value, size_t n_bytes, unsigned mask, int arg, bool is_xor) {
  LaneIn in{};
  in.op = Op::kShuffle;
  in.mask = mask;
  in.arg = arg;
  in.flag = is_xor;
  in.size = n_bytes;
  std::memcpy(&in.value, value, n_bytes);
  const LaneOut& out = warp_instruction(in);
  std::memcpy(value, &out.value, n_bytes);
}

void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  LaneIn in{};
  in.op = Op::kMma;
  in.mask = 0xffffffffu;
  std::memcpy(in.a, a, sizeof in.a);
  in.b[0] = b0;
  in.b[1] = b1;
  std::memcpy(in.c, d, sizeof in.c);
  const LaneOut& out = warp_instruction(in);
  std::memcpy(d, out.d, sizeof out.d);
}

void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  LaneIn in{};
  in.op = Op::kLdmatrix;
  in.mask = 0xffffffffu;
  in.flag = trans;
  in.row = row;
  const LaneOut& out = warp_instruction(in);
  std::memcpy(r, out.r, sizeof out.r);
}

namespace {

bool in_block_shared(const unsigned char* p, size_t n_bytes) {
  const BlockRun& b = *g_block;
  const unsigned char* dyn = b.shared;
  if (p >= dyn && p + n_bytes <= dyn + b.config->dynamic_shared_bytes) return true;
  const unsigned char *st = __start_zt_sim_shared, *st_end = __stop_zt_sim_shared;
  return st != nullptr && p >= st && p + n_bytes <= st_end;
}

}  // namespace

void cp_async(void* dst, const void* src, int n_bytes, int src_bytes, bool cache_global) {
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  if (n_bytes != 4 && n_bytes != 8 && n_bytes != 16) fault("cp.async of " + std::to_string(n_bytes) + " bytes");
  if (cache_global && n_bytes != 16) fault("cp.async.cg copies 16 bytes, not " + std::to_string(n_bytes));
  if (src_bytes < 0 || src_bytes > n_bytes)
    fault("cp.async source size " + std::to_string(src_bytes) + " of 0.." + std::to_string(n_bytes));
  if (reinterpret_cast<uintptr_t>(d) % unsigned(n_bytes) != 0 ||
      reinterpret_cast<uintptr_t>(s) % unsigned(n_bytes) != 0)
    fault("cp.async addresses not aligned to its " + std::to_string(n_bytes) + " bytes");
  if (!in_block_shared(d, size_t(n_bytes))) fault("cp.async destination outside the block's shared memory");
  if (src_bytes > 0 && !is_device_range(s, size_t(src_bytes))) fault("cp.async source outside device memory");
  Fiber& f = *g_block->current;
  AsyncCopy copy{d, {}, n_bytes, f.n_committed};
  if (src_bytes > 0) std::memcpy(copy.bytes, s, size_t(src_bytes));  // the zero-fill is the initialiser's
  std::memset(d, 0xff, size_t(n_bytes));                             // undefined until the wait: NaN, whoever reads it
  f.copies.push_back(copy);
}

void cp_async_commit() { ++g_block->current->n_committed; }

void cp_async_wait(int n) {
  if (n < 0) fault("cp.async.wait_group " + std::to_string(n));
  Fiber& f = *g_block->current;
  const uint64_t keep_from = f.n_committed > uint64_t(n) ? f.n_committed - uint64_t(n) : 0;
  auto landed = [&](const AsyncCopy& c) {
    if (c.group >= keep_from) return false;
    std::memcpy(c.dst, c.bytes, size_t(c.n_bytes));
    return true;
  };
  f.copies.erase(std::remove_if(f.copies.begin(), f.copies.end(), landed), f.copies.end());
}

void cp_async_wait_all() {
  cp_async_commit();
  cp_async_wait(0);
}

}  // namespace zt_sim
