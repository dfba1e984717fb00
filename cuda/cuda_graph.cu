// --cuda_graphs on: the graph recorder, a decorator over the CUDA backend that records a region's ops (one micro-step,
// core/gpt2.cpp) and replays them as CUDA graphs.
//
// Inside a region an op is not launched but recorded: its arguments as words (pointers, sizes, floats' bits) and a
// closure that calls the backend. At end_graph the words of the whole region are its key. A key seen for the first
// time runs op by op (the warm-up: scratch blocks grow, cuBLASLt picks its plans, nothing is allocated later); seen
// again, it is captured (cudaStreamBeginCapture on the backend's stream, the closures run, cudaStreamEndCapture,
// cudaGraphInstantiate) and launched; with that key again, the closures are dropped and the graph is launched. Every
// value a kernel receives by value (dloss, B·T, the pointers) is in the key, so a region that differs in any of them
// (the last partial batch, an eval, a reallocation) is a different key and never replays a graph captured with other
// values. Device memory the backend reallocates behind the ops (a scratch block that grew) or that is released or
// kept (bf16 copies) drops every graph.
//
// The embedding backward groups rows by token on the host from the tokens just uploaded: data-dependent host work a
// graph would freeze. It runs op by op between two graphs (at its place at the end of the backward, after the LM
// head's product), so a micro-step is one graph and a few launches.
#include <cstring>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#include "core/forwarding_backend.hpp"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_graph.cuh"
#include "cuda/cuda_graph.hpp"
#include "cuda/device_memory.cuh"

namespace zt {
namespace {

// The inner backend, owned, constructed before the ForwardingBackend base that refers to it.
struct OwnedBackend {
  explicit OwnedBackend(std::unique_ptr<Backend> b) : owned(std::move(b)) {}
  std::unique_ptr<Backend> owned;
};

// One word per argument: what makes two calls launch the same work.
template <typename T>
uint64_t word(T v) {
  if constexpr (std::is_pointer_v<T>) {
    return uint64_t(reinterpret_cast<uintptr_t>(v));
  } else if constexpr (std::is_same_v<T, float>) {
    uint32_t bits = 0;
    std::memcpy(&bits, &v, sizeof bits);
    return bits;
  } else {
    return uint64_t(v);
  }
}

enum class Op : uint64_t {
  zero = 1,
  copy,
  embedding_forward,
  embedding_backward,
  layernorm_forward,
  residual_layernorm_forward,
  layernorm_backward,
  matmul_forward,
  matmul_backward,
  attention_forward,
  attention_backward,
  matmul_gelu_forward,
  matmul_gelu_backward,
  gelu_forward,
  gelu_backward,
  residual_forward,
  softmax_cross_entropy,
  accumulate,
};

class GraphBackend final : private OwnedBackend, public ForwardingBackend {
 public:
  GraphBackend(std::unique_ptr<Backend> inner, cudaStream_t stream)
      : OwnedBackend(std::move(inner)), ForwardingBackend(*owned), stream_(stream) {}
  ~GraphBackend() override { drop_graphs(); }

  Backend& inner() { return inner_; }
  const CudaGraphStats& stats() const { return stats_; }

  bool records_graphs() const override { return true; }
  void begin_graph() override;
  void end_graph() override;

  // Calls that read results, allocate or change what the graphs point to: what is recorded runs first.
  float* alloc(size_t n) override { return noted(flushed().alloc(n), n * sizeof(float)); }
  int32_t* alloc_int(size_t n) override { return noted(flushed().alloc_int(n), n * sizeof(int32_t)); }
  void release(void* p) override {
    flushed().release(p);
    const auto it = alloc_bytes_.find(p);
    drop_graphs_into(p, it != alloc_bytes_.end() ? it->second : 1);
    if (it != alloc_bytes_.end()) alloc_bytes_.erase(it);
  }
  void to_host(float* host_dst, const float* src, size_t n) override { flushed().to_host(host_dst, src, n); }
  void from_host(float* dst, const float* host_src, size_t n) override { flushed().from_host(dst, host_src, n); }
  void tokens_from_host(int32_t* dst, const int32_t* host_src, size_t n) override {
    flushed().tokens_from_host(dst, host_src, n);
  }
  void synchronize() override { flushed().synchronize(); }
  void keep_param_copy(const float* params, size_t n) override {
    flushed().keep_param_copy(params, n);
    drop_graphs_into(params, n * sizeof(float));  // its matmuls read the copy from now on
  }
  void keep_activation_copy(const float* act, size_t n, bool fp32_read) override {
    flushed().keep_activation_copy(act, n, fp32_read);
    drop_graphs_into(act, n * sizeof(float));
  }
  void refresh_param_copy(const float* params, size_t n) override { flushed().refresh_param_copy(params, n); }
  void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                    float eps, float wd, float grad_scale, int64_t step) override {
    flushed().adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, wd, grad_scale, step);
  }
  double squared_norm(const float* x, size_t n) override { return flushed().squared_norm(x, n); }
  void attention_cached(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int n_new, int pos,
                        int max_T, int C, int NH) override {
    flushed().attention_cached(out, k_cache, v_cache, qkv, B, n_new, pos, max_T, C, NH);
  }

  // The ops: recorded inside a region, run at once outside one.
  void zero(float* p, size_t n) override {
    record(
        Op::zero, [=] { inner_.zero(p, n); }, p, n);
  }
  void copy(float* dst, const float* src, size_t n) override {
    record(
        Op::copy, [=] { inner_.copy(dst, src, n); }, dst, src, n);
  }
  void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T,
                         int C) override {
    record(
        Op::embedding_forward, [=] { inner_.embedding_forward(out, tokens, wte, wpe, B, T, C); }, out, tokens, wte, wpe,
        B, T, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                          int C) override {
    eager_in_graph_ = true;  // its token grouping is host work on this step's tokens
    record(
        Op::embedding_backward, [=] { inner_.embedding_backward(dwte, dwpe, dout, tokens, B, T, C); }, dwte, dwpe, dout,
        tokens, B, T, C);
    eager_in_graph_ = false;
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                         int N, int C) override {
    record(
        Op::layernorm_forward, [=] { inner_.layernorm_forward(out, mean, rstd, inp, weight, bias, N, C); }, out, mean,
        rstd, inp, weight, bias, N, C);
  }
  void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a, const float* b,
                                  const float* weight, const float* bias, int N, int C) override {
    record(
        Op::residual_layernorm_forward,
        [=] { inner_.residual_layernorm_forward(res, out, mean, rstd, a, b, weight, bias, N, C); }, res, out, mean,
        rstd, a, b, weight, bias, N, C);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, const float* mean, const float* rstd, int N, int C) override {
    record(
        Op::layernorm_backward,
        [=] { inner_.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C); }, dinp, dweight,
        dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
                      bool wt) override {
    record(
        Op::matmul_forward, [=] { inner_.matmul_forward(out, inp, weight, bias, N, C, OC, wt); }, out, inp, weight,
        bias, N, C, OC, wt);
  }
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int N, int C, int OC, bool wt) override {
    record(
        Op::matmul_backward, [=] { inner_.matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, wt); },
        dinp, dweight, dbias, dout, inp, weight, N, C, OC, wt);
  }
  void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) override {
    record(
        Op::attention_forward, [=] { inner_.attention_forward(out, att, qkv, B, T, C, NH); }, out, att, qkv, B, T, C,
        NH);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int B, int T, int C,
                          int NH) override {
    record(
        Op::attention_backward, [=] { inner_.attention_backward(dqkv, dout, qkv, att, B, T, C, NH); }, dqkv, dout, qkv,
        att, B, T, C, NH);
  }
  void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight, const float* bias, int N,
                           int C, int OC) override {
    record(
        Op::matmul_gelu_forward, [=] { inner_.matmul_gelu_forward(pre, out, inp, weight, bias, N, C, OC); }, pre, out,
        inp, weight, bias, N, C, OC);
  }
  void matmul_gelu_backward(float* dpre, float* dact, float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* weight, const float* pre, int N, int C, int OC) override {
    record(
        Op::matmul_gelu_backward,
        [=] { inner_.matmul_gelu_backward(dpre, dact, dweight, dbias, dout, inp, weight, pre, N, C, OC); }, dpre, dact,
        dweight, dbias, dout, inp, weight, pre, N, C, OC);
  }
  void gelu_forward(float* out, const float* inp, size_t n) override {
    record(
        Op::gelu_forward, [=] { inner_.gelu_forward(out, inp, n); }, out, inp, n);
  }
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) override {
    record(
        Op::gelu_backward, [=] { inner_.gelu_backward(dinp, inp, dout, n); }, dinp, inp, dout, n);
  }
  void residual_forward(float* out, const float* a, const float* b, size_t n) override {
    record(
        Op::residual_forward, [=] { inner_.residual_forward(out, a, b, n); }, out, a, b, n);
  }
  void softmax_cross_entropy(float* logits, float* losses, const int32_t* targets, int N, int V, int Vp,
                             float dloss) override {
    record(
        Op::softmax_cross_entropy, [=] { inner_.softmax_cross_entropy(logits, losses, targets, N, V, Vp, dloss); },
        logits, losses, targets, N, V, Vp, dloss);
  }
  void accumulate(float* x, const float* y, size_t n) override {
    record(
        Op::accumulate, [=] { inner_.accumulate(x, y, n); }, x, y, n);
  }

 private:
  struct Recorded {
    std::function<void()> run;
    bool eager;  // runs op by op even in a replay, between graphs
  };
  // A captured region: its key, and per piece either a graph (ops [first, end)) or one eager op (graph null).
  struct Piece {
    cudaGraphExec_t graph = nullptr;
    size_t first = 0, end = 0;
  };
  struct Captured {
    std::vector<uint64_t> key;
    std::vector<Piece> pieces;
  };

  template <typename F, typename... Args>
  void record(Op op, F&& run, Args... args) {
    if (!open_) {
      run();
      return;
    }
    key_.push_back(uint64_t(op));
    (key_.push_back(word(args)), ...);
    ops_.push_back({std::forward<F>(run), eager_in_graph_});
    ++stats_.ops;
  }
  // Runs what the open region recorded, op by op, and the rest of the region likewise (it needs results now).
  Backend& flushed();
  void run_eagerly(size_t first);
  bool capture(Captured& c);
  void replay(const Captured& c);
  void drop_graphs();
  // Drops the graphs whose ops point into [p, p + n_bytes): released, or now with a kept copy.
  void drop_graphs_into(const void* p, size_t n_bytes);
  template <typename T>
  T* noted(T* p, size_t n_bytes) {
    alloc_bytes_[p] = n_bytes;
    return p;
  }

  cudaStream_t stream_;
  bool open_ = false, eager_in_graph_ = false;
  std::vector<uint64_t> key_;
  std::vector<Recorded> ops_;
  std::vector<Captured> graphs_;
  std::map<std::vector<uint64_t>, int> seen_;  // keys run op by op so far (warm-up), and how often
  std::map<const void*, size_t> alloc_bytes_;  // buffers from alloc / alloc_int and their sizes
  uint64_t scratch_generation_ = 0;            // DeviceScratch::reallocations() the graphs were captured under
  CudaGraphStats stats_;
};

// Keys kept: a run has one or two (training, eval) plus the last partial batch's; beyond this, all are dropped.
constexpr size_t kMaxGraphs = 8;
// seen_ for a key whose capture the runtime refused: it runs op by op from then on.
constexpr int kRefused = -1;
// Keys remembered at most (one that changes every micro-step, such as a pointer that moves, would grow seen_).
constexpr size_t kMaxSeen = 64;

void GraphBackend::begin_graph() {
  if (open_) flushed();  // a region left open (an exception unwound the last step) runs as issued
  open_ = true;
  key_.clear();
  ops_.clear();
}

Backend& GraphBackend::flushed() {
  if (open_) {
    open_ = false;
    ++stats_.broken_regions;
    run_eagerly(0);
    ops_.clear();
    key_.clear();
  }
  return inner_;
}

void GraphBackend::run_eagerly(size_t first) {
  for (size_t i = first; i < ops_.size(); ++i) ops_[i].run();
}

void GraphBackend::end_graph() {
  if (!open_) return;  // broken: its ops ran already
  open_ = false;
  ++stats_.regions;
  const uint64_t scratch_generation = cuda::DeviceScratch::reallocations();
  if (scratch_generation != scratch_generation_) {  // graphs may point into a freed block
    drop_graphs();
    scratch_generation_ = scratch_generation;
  }
  for (const Captured& c : graphs_)
    if (c.key == key_) {
      ++stats_.replays;
      replay(c);
      return;
    }
  if (seen_.size() > kMaxSeen) seen_.clear();
  int& seen = seen_[key_];
  if (seen == 0 || seen == kRefused) {  // the first time (the warm-up), or a key whose capture was refused
    seen = seen == 0 ? 1 : seen;
    ++stats_.eager_regions;
    run_eagerly(0);
    return;
  }
  if (graphs_.size() == kMaxGraphs) drop_graphs();
  Captured c{key_, {}};
  if (!capture(c)) {
    seen_[key_] = kRefused;
    ++stats_.capture_failures;
    ++stats_.eager_regions;
    std::fprintf(stderr,
                 "zerotrain: --cuda_graphs on: the CUDA runtime refused to capture a micro-step (%s); it runs "
                 "op by op\n",
                 cudaGetErrorString(cudaGetLastError()));
    run_eagerly(0);
    return;
  }
  ++stats_.captures;
  graphs_.push_back(std::move(c));
  replay(graphs_.back());
}

bool GraphBackend::capture(Captured& c) {
  size_t i = 0;
  while (i < ops_.size()) {
    if (ops_[i].eager) {
      c.pieces.push_back({nullptr, i, i + 1});
      ++i;
      continue;
    }
    Piece piece{nullptr, i, i};
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal) != cudaSuccess) return false;
    bool ok = true;
    try {
      for (; i < ops_.size() && !ops_[i].eager; ++i) ops_[i].run();
    } catch (const Error&) {
      ok = false;  // a call the capture refused (the op checks every CUDA call): it runs op by op instead
    }
    cudaGraph_t graph = nullptr;
    ok = cudaStreamEndCapture(stream_, &graph) == cudaSuccess && ok;
    ok = ok && cudaGraphInstantiate(&piece.graph, graph, 0) == cudaSuccess;
    if (graph != nullptr) cudaGraphDestroy(graph);
    piece.end = i;
    c.pieces.push_back(piece);
    if (!ok) {
      for (Piece& p : c.pieces)
        if (p.graph != nullptr) cudaGraphExecDestroy(p.graph);
      return false;
    }
  }
  return true;
}

void GraphBackend::replay(const Captured& c) {
  for (const Piece& p : c.pieces) {
    if (p.graph == nullptr) {
      const uint64_t before = cuda::DeviceScratch::reallocations();
      ops_[p.first].run();
      if (cuda::DeviceScratch::reallocations() != before) {
        // The eager op grew a scratch block a later graph may point into: the rest runs op by op, graphs dropped.
        const size_t next = p.end;
        drop_graphs();
        run_eagerly(next);
        return;
      }
      continue;
    }
    ZT_CUDA_CHECK(cudaGraphLaunch(p.graph, stream_));
    ++stats_.graph_launches;
    stats_.ops_in_graphs += p.end - p.first;
  }
}

void GraphBackend::drop_graphs_into(const void* p, size_t n_bytes) {
  const uint64_t begin = word(p), end = begin + n_bytes;
  for (const Captured& c : graphs_)
    for (uint64_t w : c.key)
      if (w >= begin && w < end) {
        drop_graphs();  // rare (start-up, a resize): all of them, simply
        return;
      }
}

void GraphBackend::drop_graphs() {
  if (!graphs_.empty()) cudaStreamSynchronize(stream_);  // a launched graph may still run
  for (Captured& c : graphs_)
    for (Piece& p : c.pieces)
      if (p.graph != nullptr) cudaGraphExecDestroy(p.graph);
  graphs_.clear();  // seen_ stays: a key that ran before is captured at its next region, without a new warm-up
}

}  // namespace

namespace cuda {

bool graphs_on(const std::string& value) {
  ZT_CHECK(value == "auto" || value == "on" || value == "off", "--cuda_graphs {}: expected auto, on or off", value);
  return value == "on";
}

std::unique_ptr<Backend> make_graph_backend(std::unique_ptr<Backend> inner, cudaStream_t stream) {
  return std::make_unique<GraphBackend>(std::move(inner), stream);
}

Backend& unwrap_graph_backend(Backend& backend) {
  auto* g = dynamic_cast<GraphBackend*>(&backend);
  return g != nullptr ? g->inner() : backend;
}

}  // namespace cuda

CudaGraphStats cuda_graph_stats(const Backend& backend) {
  const auto* g = dynamic_cast<const GraphBackend*>(&backend);
  return g != nullptr ? g->stats() : CudaGraphStats{};
}

}  // namespace zt
