// The ZeRO engine's private state, shared by zero_engine.cpp (state, optimizer) and zero_pool.cpp (working pool).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sharding/zero_engine.hpp"

namespace zt {

struct ZeroEngine::PartState {
  float* params_full = nullptr;   // stages 0-2: padded
  float* params_shard = nullptr;  // stage 3: shard
  float* m = nullptr;             // optim_range (stage 0: padded part, else shard) less its frozen elements; null: none
  float* v = nullptr;
  size_t moment_elems = 0;         // elements of m (and of v)
  float* grad_shard = nullptr;     // shard: reduced gradients accumulated over the step
  float* grad_local = nullptr;     // stages 0-1: padded, this rank's gradients until they are reduced
  float* grads_now = nullptr;      // the buffer handed to the model this micro-step
  Region* grads_region = nullptr;  // stages 2-3: the pool region grads_now lies in
  bool grads_started = false;      // handed out this micro-step
  bool local_fresh = true;         // stages 0-1: grad_local is zeroed at its next first use (it was reduced)
  bool unreduced = false;          // stages 0-1: grad_local holds gradients no reduction has taken yet
  CommHandle params_gather;        // stages 1-2: AdamW's all-gather into params_full, waited where first needed
};

// A range of the working pool: a gather slot (one part's parameters), a gradient work buffer (one part's
// gradients), or `whole` (every part of the embedding unit side by side, its parameters or its gradients). Regions
// overlap (whole spans the others); nothing is written into a region while an overlapping one is busy.
struct ZeroEngine::Region {
  size_t begin = 0, end = 0;        // pool elements
  size_t part = SIZE_MAX;           // a slot: the part it holds (gathered, or being gathered)
  bool valid = false;               // whole: the embedding's parameters are there (or being gathered)
  bool copy_fresh = false;          // the backend's low-precision copy holds them too
  std::vector<CommHandle> gathers;  // in flight into the region
  int users = 0;                    // parts the model holds from it (parameters or gradients being written)
  int reducing = 0;                 // reductions in flight out of it
  size_t used = 0;                  // elements in use while busy (a part's padded size, or whole)
  bool busy() const { return !gathers.empty() || users > 0 || reducing > 0; }
  bool overlaps(const Region& o) const { return begin < o.end && o.begin < end; }
};

// A gradient reduction in flight: a part's buffer reduce-scattered in place into this rank's slot of it.
struct ZeroEngine::Reduction {
  size_t part = 0;
  float* buf = nullptr;
  Region* region = nullptr;  // the pool region it reads, or null (a stage 0-1 local buffer)
  uint64_t seq = 0;          // issue order: the oldest is finished first
  bool active = false;
  CommHandle handle;
};

// One visit of the micro-step's schedule: one part, or (whole) every part of a unit at once.
struct ZeroEngine::Visit {
  int unit = 0;
  size_t part = 0;  // global part index (the first of the unit for a whole visit)
  bool whole = false;
};

}  // namespace zt
