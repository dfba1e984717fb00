// MpiComm under mpirun: bit-exact collectives, the fixed rank-order sum, non-blocking = blocking, byte counters.
#include <catch2/catch.hpp>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "core/rng.hpp"
#include "sharding/comm_mpi.hpp"
#include "test/test_util.hpp"

namespace {

using zt::CommHandle;
using zt::MpiComm;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// Small integer in [-8, 8] times 2^e, e in [-3, 3]: sums over <= 4 ranks stay exact in float, so every order of
// summation gives the same bits and the expected result is known independently of the order rule.
template <typename T>
T exact_value(uint64_t salt, int rank, size_t i) {
  uint64_t bits = zt::philox_u64(salt, uint64_t(rank), i);
  int mant = int(bits % 17) - 8;
  int e = int((bits >> 8) % 7) - 3;
  return T(std::ldexp(double(mant), e));
}

// A float with a random mantissa and magnitude in [2^-8, 2^9): sums round, so the order shows in the bits.
template <typename T>
T random_value(uint64_t seed, int rank, size_t i) {
  uint64_t bits = zt::philox_u64(seed, uint64_t(rank), i);
  double mag = std::ldexp(1.0 + double(bits >> 12) / double(uint64_t(1) << 52), int(bits % 17) - 8);
  return T(((bits >> 5) & 1) ? -mag : mag);
}

enum class Values { kExact, kRandom };

template <typename T>
T value(Values kind, uint64_t seed, int rank, size_t i) {
  return kind == Values::kExact ? exact_value<T>(seed, rank, i) : random_value<T>(seed, rank, i);
}

// Rank `rank`'s contribution of n elements.
template <typename T>
std::vector<T> contribution(Values kind, uint64_t seed, int rank, size_t n) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = value<T>(kind, seed, rank, i);
  return v;
}

// The contract's sum for element i: rank 0's value + rank 1's + ... left to right, in T.
template <typename T>
T ordered_sum_ref(Values kind, uint64_t seed, int world_size, size_t i) {
  T acc = value<T>(kind, seed, 0, i);
  for (int r = 1; r < world_size; ++r) acc += value<T>(kind, seed, r, i);
  return acc;
}

// Exact sum in long double (exact for exact_value inputs), as an order-free expected value.
template <typename T>
T exact_sum_ref(uint64_t seed, int world_size, size_t i) {
  long double acc = 0;
  for (int r = 0; r < world_size; ++r) acc += (long double)exact_value<T>(seed, r, i);
  return T(acc);
}

// Index of the first element whose bits differ, or n when all match.
template <typename T>
size_t first_bit_mismatch(const T* a, const T* b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (std::memcmp(a + i, b + i, sizeof(T)) != 0) return i;
  return n;
}

#define CHECK_BITS_EQUAL(a, b, n)                                                                         \
  do {                                                                                                    \
    size_t zt_bad_ = first_bit_mismatch((a), (b), (n));                                                   \
    INFO("first mismatch at " << zt_bad_ << " of " << (n)                                                 \
                              << (zt_bad_ < (n) ? ": got " + fmt::format("{}", (a)[zt_bad_]) + " want " + \
                                                      fmt::format("{}", (b)[zt_bad_])                     \
                                                : std::string()));                                        \
    CHECK(zt_bad_ == size_t(n));                                                                          \
  } while (0)

const std::vector<size_t> kSizes = {0, 1, 2, 3, 4, 5, 7, 13, 16, 17, 100, 1001, 4099};

// The comms under test: default message size, and tiny pieces so the chunked (derived datatype) path runs too.
std::vector<std::unique_ptr<MpiComm>> comms_under_test() {
  std::vector<std::unique_ptr<MpiComm>> comms;
  comms.push_back(std::make_unique<MpiComm>(MPI_COMM_WORLD));
  comms.push_back(std::make_unique<MpiComm>(MPI_COMM_WORLD, 12));  // 3 floats or 1 double per call
  return comms;
}

// Checks every collective on n-element inputs of the given kind against expected results computed locally.
void check_all_collectives(MpiComm& comm, Values kind, uint64_t seed, size_t n) {
  const int rank = comm.rank(), ws = comm.world_size();
  INFO("world_size " << ws << " rank " << rank << " n " << n << " seed " << seed
                     << (kind == Values::kExact ? " exact" : " random"));
  // all_reduce_sum(float)
  {
    std::vector<float> data = contribution<float>(kind, seed, rank, n), want(n);
    for (size_t i = 0; i < n; ++i) want[i] = ordered_sum_ref<float>(kind, seed, ws, i);
    if (kind == Values::kExact)
      for (size_t i = 0; i < n; ++i) REQUIRE(want[i] == exact_sum_ref<float>(seed, ws, i));
    comm.all_reduce_sum(data.data(), n);
    CHECK_BITS_EQUAL(data.data(), want.data(), n);
  }
  // all_reduce_sum(double)
  {
    std::vector<double> data = contribution<double>(kind, seed, rank, n), want(n);
    for (size_t i = 0; i < n; ++i) want[i] = ordered_sum_ref<double>(kind, seed, ws, i);
    comm.all_reduce_sum(data.data(), n);
    CHECK_BITS_EQUAL(data.data(), want.data(), n);
  }
  // reduce_scatter_sum with recv_n = n, blocking and non-blocking
  {
    std::vector<float> send = contribution<float>(kind, seed, rank, n * size_t(ws));
    std::vector<float> want(n), recv(n, -7.0f), irecv(n, -7.0f);
    for (size_t i = 0; i < n; ++i) want[i] = ordered_sum_ref<float>(kind, seed, ws, size_t(rank) * n + i);
    comm.reduce_scatter_sum(send.data(), recv.data(), n);
    CHECK_BITS_EQUAL(recv.data(), want.data(), n);
    CommHandle h = comm.ireduce_scatter_sum(send.data(), irecv.data(), n);
    comm.progress();
    comm.wait(h);
    CHECK_FALSE(h.pending());
    CHECK_BITS_EQUAL(irecv.data(), want.data(), n);
  }
  // all_gather with send_n = n, blocking and non-blocking
  {
    std::vector<float> send = contribution<float>(kind, seed, rank, n);
    std::vector<float> want, recv(n * size_t(ws), -7.0f), irecv(n * size_t(ws), -7.0f);
    for (int r = 0; r < ws; ++r) {
      std::vector<float> part = contribution<float>(kind, seed, r, n);
      want.insert(want.end(), part.begin(), part.end());
    }
    comm.all_gather(send.data(), recv.data(), n);
    CHECK_BITS_EQUAL(recv.data(), want.data(), want.size());
    CommHandle h = comm.iall_gather(send.data(), irecv.data(), n);
    comm.progress();
    comm.wait(h);
    CHECK_BITS_EQUAL(irecv.data(), want.data(), want.size());
  }
}

}  // namespace

TEST_CASE("collectives are bit-exact on exactly representable values", "[comm]") {
  const uint64_t seed = zt::test::shared_test_seed();
  for (auto& comm : comms_under_test()) {
    for (size_t n : kSizes) check_all_collectives(*comm, Values::kExact, seed, n);
  }
}

TEST_CASE("sums follow the rank order on values where rounding shows it", "[comm]") {
  // Random mantissas and magnitudes: any other order (tree, ring, reversed) differs in some bits.
  const uint64_t seed = zt::test::shared_test_seed() + 1;
  for (auto& comm : comms_under_test()) {
    for (size_t n : kSizes) check_all_collectives(*comm, Values::kRandom, seed, n);
  }
}

TEST_CASE("the sum order is fixed: rank 0 + rank 1 + ... + rank N-1", "[comm]") {
  MpiComm comm(MPI_COMM_WORLD);
  const int rank = comm.rank(), ws = comm.world_size();
  // Element i: rank r contributes table[(i + r*k) % size] for a few strides k. With 1e8 next to 1 the result depends
  // on the order: (1e8 + 1) - 1e8 = 0 in float, but 1e8 - 1e8 + 1 = 1.
  const float table[] = {1e8f, 1.0f, -1e8f, 1.0f, 3.0f, -1e8f, 0.5f, 1e8f, -3.0f, 1e-3f, 7e7f, -1.0f};
  const size_t table_n = sizeof(table) / sizeof(table[0]);
  const size_t n = 997;  // not a multiple of 2, 3 or 4: exercises the padded all_reduce
  auto contrib = [&](int r, size_t i) { return table[(i * 7 + size_t(r) * (1 + i % 5)) % table_n]; };
  std::vector<float> data(n), ordered(n), reversed(n);
  for (size_t i = 0; i < n; ++i) {
    data[i] = contrib(rank, i);
    float acc = contrib(0, i);
    for (int r = 1; r < ws; ++r) acc += contrib(r, i);
    ordered[i] = acc;
    float rev = contrib(ws - 1, i);
    for (int r = ws - 2; r >= 0; --r) rev += contrib(r, i);
    reversed[i] = rev;
  }
  if (ws >= 3) {
    // The inputs must be able to tell orders apart, or this test could not fail.
    REQUIRE(first_bit_mismatch(ordered.data(), reversed.data(), n) < n);
  }
  std::vector<float> reduced = data;
  comm.all_reduce_sum(reduced.data(), n);
  CHECK_BITS_EQUAL(reduced.data(), ordered.data(), n);

  // The same elements through reduce_scatter (n per rank block) give the same bits.
  std::vector<float> send(n * size_t(ws));
  for (int b = 0; b < ws; ++b)
    for (size_t i = 0; i < n; ++i) send[size_t(b) * n + i] = data[i];
  std::vector<float> recv(n);
  comm.reduce_scatter_sum(send.data(), recv.data(), n);
  CHECK_BITS_EQUAL(recv.data(), ordered.data(), n);
}

TEST_CASE("reduce_scatter bits equal the matching slice of all_reduce bits", "[comm]") {
  const uint64_t seed = zt::test::shared_test_seed() + 2;
  std::mt19937_64 gen(seed);
  MpiComm comm(MPI_COMM_WORLD);
  MpiComm chunked(MPI_COMM_WORLD, 4096);
  const int rank = comm.rank(), ws = comm.world_size();
  for (int iter = 0; iter < 20; ++iter) {
    const size_t recv_n = std::uniform_int_distribution<size_t>(0, iter < 15 ? 300 : 20000)(gen);
    INFO("seed " << seed << " iteration " << iter << " recv_n " << recv_n);
    const size_t total = recv_n * size_t(ws);
    std::vector<float> send = contribution<float>(Values::kRandom, seed + uint64_t(iter), rank, total);
    std::vector<float> reduced = send;
    comm.all_reduce_sum(reduced.data(), total);
    std::vector<float> recv(recv_n), recv_chunked(recv_n);
    comm.reduce_scatter_sum(send.data(), recv.data(), recv_n);
    chunked.reduce_scatter_sum(send.data(), recv_chunked.data(), recv_n);
    CHECK_BITS_EQUAL(recv.data(), reduced.data() + size_t(rank) * recv_n, recv_n);
    CHECK_BITS_EQUAL(recv_chunked.data(), recv.data(), recv_n);
    // An all_reduce of a size that does not divide evenly pads differently, yet every element keeps its bits.
    const size_t odd = total + 1;
    std::vector<float> odd_data = contribution<float>(Values::kRandom, seed + uint64_t(iter), rank, odd);
    chunked.all_reduce_sum(odd_data.data(), odd);
    CHECK_BITS_EQUAL(odd_data.data(), reduced.data(), total);
  }
}

TEST_CASE("in-place reduce_scatter and all_gather", "[comm]") {
  const uint64_t seed = zt::test::shared_test_seed() + 3;
  for (auto& comm : comms_under_test()) {
    const int rank = comm->rank(), ws = comm->world_size();
    for (size_t n : {size_t(1), size_t(5), size_t(64), size_t(1001)}) {
      INFO("n " << n);
      std::vector<float> send = contribution<float>(Values::kRandom, seed, rank, n * size_t(ws));
      std::vector<float> want(n);
      comm->reduce_scatter_sum(send.data(), want.data(), n);
      // recv is this rank's block of send.
      std::vector<float> buf = send;
      comm->reduce_scatter_sum(buf.data(), buf.data() + size_t(rank) * n, n);
      CHECK_BITS_EQUAL(buf.data() + size_t(rank) * n, want.data(), n);
      std::vector<float> ibuf = send;
      CommHandle h = comm->ireduce_scatter_sum(ibuf.data(), ibuf.data() + size_t(rank) * n, n);
      comm->wait(h);
      CHECK_BITS_EQUAL(ibuf.data() + size_t(rank) * n, want.data(), n);

      // all_gather from this rank's own slot of recv.
      std::vector<float> gathered(n * size_t(ws));
      comm->all_gather(want.data(), gathered.data(), n);
      std::vector<float> in_place(n * size_t(ws), -1.0f);
      std::memcpy(in_place.data() + size_t(rank) * n, want.data(), n * sizeof(float));
      comm->all_gather(in_place.data() + size_t(rank) * n, in_place.data(), n);
      CHECK_BITS_EQUAL(in_place.data(), gathered.data(), gathered.size());
      std::vector<float> i_in_place(n * size_t(ws), -1.0f);
      std::memcpy(i_in_place.data() + size_t(rank) * n, want.data(), n * sizeof(float));
      CommHandle g = comm->iall_gather(i_in_place.data() + size_t(rank) * n, i_in_place.data(), n);
      comm->wait(g);
      CHECK_BITS_EQUAL(i_in_place.data(), gathered.data(), gathered.size());
      if (ws > 1) {
        // Any other overlap is a caller mistake (detected on every rank before any MPI call, so none hangs).
        const size_t off = (size_t(rank) * n + 1) % (n * size_t(ws));
        CHECK_THROWS_AS(comm->all_gather(in_place.data() + off, in_place.data(), n), zt::Error);
      }
    }
  }
}

TEST_CASE("non-blocking operations overlap and equal the blocking ones", "[comm]") {
  const uint64_t seed = zt::test::shared_test_seed() + 4;
  for (auto& comm : comms_under_test()) {
    const int rank = comm->rank(), ws = comm->world_size();
    const size_t n_rs = 777, n_ag = 333;
    std::vector<float> rs_send = contribution<float>(Values::kRandom, seed, rank, n_rs * size_t(ws));
    std::vector<float> ag_send = contribution<float>(Values::kRandom, seed + 9, rank, n_ag);
    std::vector<float> rs_want(n_rs), ag_want(n_ag * size_t(ws));
    comm->reduce_scatter_sum(rs_send.data(), rs_want.data(), n_rs);
    comm->all_gather(ag_send.data(), ag_want.data(), n_ag);

    // Two reduce_scatters and an all_gather in flight together, completed out of order.
    std::vector<float> rs_a(n_rs), rs_b(n_rs), ag(n_ag * size_t(ws));
    CommHandle ha = comm->ireduce_scatter_sum(rs_send.data(), rs_a.data(), n_rs);
    CommHandle hg = comm->iall_gather(ag_send.data(), ag.data(), n_ag);
    CommHandle hb = comm->ireduce_scatter_sum(rs_send.data(), rs_b.data(), n_rs);
    CHECK(comm->pending_operations() == (ws > 1 ? 3u : 0u));
    for (int i = 0; i < 5; ++i) comm->progress();
    comm->wait(hb);
    comm->wait(hg);
    CommHandle moved = std::move(ha);
    CHECK_FALSE(ha.pending());
    comm->wait(ha);  // empty: returns at once
    comm->wait(moved);
    CHECK(comm->pending_operations() == 0);
    CHECK_BITS_EQUAL(rs_a.data(), rs_want.data(), n_rs);
    CHECK_BITS_EQUAL(rs_b.data(), rs_want.data(), n_rs);
    CHECK_BITS_EQUAL(ag.data(), ag_want.data(), ag.size());
  }
}

TEST_CASE("reduce_scatter in pieces: same bits, in place and non-blocking, staging within its budget", "[comm]") {
  const uint64_t seed = zt::test::shared_test_seed() + 5;
  MpiComm whole(MPI_COMM_WORLD);
  // 64 bytes of staging: pieces of 32 / (4 * ranks) elements (at least one), so every size below runs many pieces.
  MpiComm pieced(MPI_COMM_WORLD, MpiComm::kDefaultMaxBytesPerCall, 64);
  const int rank = whole.rank(), ws = whole.world_size();
  for (size_t recv_n : {size_t(1), size_t(5), size_t(97), size_t(1000)}) {
    INFO("seed " << seed << " recv_n " << recv_n);
    const std::vector<float> send = contribution<float>(Values::kRandom, seed + recv_n, rank, recv_n * size_t(ws));
    std::vector<float> want(recv_n), got(recv_n);
    whole.reduce_scatter_sum(send.data(), want.data(), recv_n);
    pieced.reduce_scatter_sum(send.data(), got.data(), recv_n);
    CHECK_BITS_EQUAL(got.data(), want.data(), recv_n);
    // Non-blocking, two in flight, advanced by progress() and finished by wait(), one of them in place.
    std::vector<float> a(recv_n), in_place = send;
    float* own = in_place.data() + size_t(rank) * recv_n;
    CommHandle ha = pieced.ireduce_scatter_sum(send.data(), a.data(), recv_n);
    CommHandle hb = pieced.ireduce_scatter_sum(in_place.data(), own, recv_n);
    for (int i = 0; i < 7; ++i) pieced.progress();
    pieced.wait(hb);
    pieced.wait(ha);
    CHECK_BITS_EQUAL(a.data(), want.data(), recv_n);
    CHECK_BITS_EQUAL(own, want.data(), recv_n);
    // The pool holds the staging of the two that were in flight at once: at most twice the budget (or, when one
    // element per rank is already more, two pieces of one element per rank).
    const size_t one_piece_min = size_t(ws) * sizeof(float);
    CHECK(pieced.staging_bytes() <= 2 * std::max<size_t>(64, 2 * one_piece_min));
  }
  // The default budget bounds a large reduce_scatter too (4 MiB per rank: 4 x ranks MiB sent).
  const size_t big = size_t(1) << 20;
  const std::vector<float> send = contribution<float>(Values::kRandom, seed, rank, big * size_t(ws));
  std::vector<float> got(big);
  CommHandle h = whole.ireduce_scatter_sum(send.data(), got.data(), big);
  whole.wait(h);
  CHECK(whole.staging_bytes() <= (ws > 1 ? MpiComm::kReduceScatterStagingBytes : 0));
}

TEST_CASE("byte counters follow the documented formula", "[comm]") {
  MpiComm comm(MPI_COMM_WORLD, 64);  // chunking must not change the accounting
  const int rank = comm.rank(), ws = comm.world_size();
  const uint64_t peers = uint64_t(ws - 1);
  const size_t n = 1001;
  std::vector<float> send(n * size_t(ws), 1.0f), recv(n * size_t(ws));
  comm.reduce_scatter_sum(send.data(), recv.data(), 10);
  CHECK(comm.bytes_sent() == peers * 10 * 4);
  comm.reset_counters();
  CHECK(comm.bytes_sent() == 0);
  CHECK(comm.wait_seconds() == 0.0);

  comm.all_gather(send.data(), recv.data(), 7);
  CHECK(comm.bytes_sent() == peers * 7 * 4);
  comm.reset_counters();

  // all_reduce counts reduce_scatter + all_gather on the size padded to a multiple of world_size.
  const uint64_t chunk = (n + size_t(ws) - 1) / size_t(ws);
  comm.all_reduce_sum(send.data(), n);
  CHECK(comm.bytes_sent() == 2 * peers * chunk * 4);
  comm.reset_counters();
  std::vector<double> d(n, 1.0);
  comm.all_reduce_sum(d.data(), n);
  CHECK(comm.bytes_sent() == 2 * peers * chunk * 8);
  comm.reset_counters();

  CommHandle h1 = comm.ireduce_scatter_sum(send.data(), recv.data(), 10);
  CommHandle h2 = comm.iall_gather(send.data(), recv.data() + 10 * size_t(ws), 7);
  comm.wait(h1);
  comm.wait(h2);
  CHECK(comm.bytes_sent() == peers * 10 * 4 + peers * 7 * 4);
  comm.reset_counters();

  // broadcast: n_bytes * (N-1) on the root, 0 elsewhere; barrier and all_reduce_max count nothing.
  const int root = ws - 1;
  comm.broadcast(send.data(), 1000, root);
  CHECK(comm.bytes_sent() == (rank == root ? uint64_t(1000) * peers : 0));
  comm.reset_counters();
  comm.barrier();
  (void)comm.all_reduce_max(rank);
  comm.all_reduce_sum(send.data(), 0);
  comm.reduce_scatter_sum(send.data(), recv.data(), 0);
  comm.all_gather(send.data(), recv.data(), 0);
  CHECK(comm.bytes_sent() == 0);
  CHECK(comm.wait_seconds() >= 0.0);
}

TEST_CASE("all_reduce_max returns the largest value on every rank", "[comm]") {
  MpiComm comm(MPI_COMM_WORLD);
  const int rank = comm.rank(), ws = comm.world_size();
  CHECK(comm.all_reduce_max(rank) == ws - 1);
  CHECK(comm.all_reduce_max(-rank) == 0);
  // One rank raising a flag is seen by all.
  CHECK(comm.all_reduce_max(rank == ws / 2 ? 1 : 0) == 1);
  CHECK(comm.all_reduce_max(0) == 0);
  CHECK(comm.all_reduce_max(rank == 0 ? INT_MIN : INT_MIN + 1) == (ws > 1 ? INT_MIN + 1 : INT_MIN));
}

TEST_CASE("broadcast from every root, chunked and not", "[comm]") {
  for (auto& comm : comms_under_test()) {
    const int rank = comm->rank(), ws = comm->world_size();
    for (int root = ws - 1; root >= 0; --root) {
      for (size_t n_bytes : {size_t(0), size_t(1), size_t(13), size_t(4099)}) {
        INFO("root " << root << " n_bytes " << n_bytes);
        std::vector<unsigned char> want(n_bytes), data(n_bytes);
        for (size_t i = 0; i < n_bytes; ++i) want[i] = static_cast<unsigned char>((i * 31 + size_t(root) * 7) & 0xff);
        for (size_t i = 0; i < n_bytes; ++i) data[i] = rank == root ? want[i] : static_cast<unsigned char>(0xAA);
        comm->broadcast(data.data(), n_bytes, root);
        CHECK(data == want);
      }
    }
    CHECK_THROWS_AS(comm->broadcast(nullptr, 0, ws), zt::Error);
    CHECK_THROWS_AS(comm->broadcast(nullptr, 0, -1), zt::Error);
  }
}

TEST_CASE("staging buffers are reused: a repeated sequence allocates nothing", "[comm]") {
  MpiComm comm(MPI_COMM_WORLD);
  const int ws = comm.world_size();
  std::vector<float> a(5000 * size_t(ws), 1.0f), b(5000 * size_t(ws), 2.0f), r1(5000), r2(5000);
  std::vector<double> d(37, 1.0);
  auto sequence = [&] {
    comm.all_reduce_sum(a.data(), 4999);  // padded: two staging buffers at once
    comm.reduce_scatter_sum(a.data(), r1.data(), 100);
    comm.reduce_scatter_sum(b.data(), r2.data(), 5000);
    CommHandle h1 = comm.ireduce_scatter_sum(a.data(), r1.data(), 5000);
    CommHandle h2 = comm.ireduce_scatter_sum(b.data(), r2.data(), 17);
    comm.wait(h2);
    comm.wait(h1);
    comm.all_reduce_sum(d.data(), d.size());
  };
  sequence();
  const size_t after_first = comm.staging_allocations();
  for (int i = 0; i < 3; ++i) sequence();
  CHECK(comm.staging_allocations() == after_first);
  if (ws == 1) CHECK(after_first == 0);  // a single rank only copies
}

TEST_CASE("ranks and gather order follow the communicator, not the world", "[comm]") {
  // Reverse the world's order: world rank r becomes rank N-1-r of the split communicator.
  const int wr = world_rank();
  int wsize = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &wsize);
  MPI_Comm reversed;
  REQUIRE(MPI_Comm_split(MPI_COMM_WORLD, 0, wsize - 1 - wr, &reversed) == MPI_SUCCESS);
  {
    MpiComm comm(reversed);
    CHECK(comm.rank() == wsize - 1 - wr);
    CHECK(comm.world_size() == wsize);
    float mine = float(wr);
    std::vector<float> all(static_cast<size_t>(wsize));
    comm.all_gather(&mine, all.data(), 1);
    for (int r = 0; r < wsize; ++r) CHECK(all[size_t(r)] == float(wsize - 1 - r));
  }
  MPI_Comm_free(&reversed);
}

TEST_CASE("MPI errors name the call, rank and host", "[comm]") {
  auto failing_call = [] { return MPI_ERR_COUNT; };
  try {
    ZT_MPI_CHECK(failing_call());
    FAIL("ZT_MPI_CHECK did not throw");
  } catch (const zt::Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("failing_call()") != std::string::npos);
    CHECK(msg.find("rank " + std::to_string(world_rank())) != std::string::npos);
    CHECK(msg.find(zt::hostname()) != std::string::npos);
    CHECK(msg.find("MPI") != std::string::npos);
  }
  CHECK_THROWS_AS(MpiComm(MPI_COMM_WORLD, 4), zt::Error);  // below one double per call
}
