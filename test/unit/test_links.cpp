// The one form of link an incremental checkpoint may hold (docs/checkpoint-format.md, section 3, "Links"), and
// listing a file's external links as retention does.
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "ckpt/checkpoint.hpp"
#include "ckpt/h5.hpp"
#include "ckpt/links.hpp"
#include "test/test_util.hpp"

namespace fs = std::filesystem;

TEST_CASE("link_target and link_holder: only ../checkpoint-<digits>/model.h5 names a sibling", "[links]") {
  CHECK(zt::link_target("checkpoint-2") == "../checkpoint-2/model.h5");
  CHECK(zt::link_holder(zt::link_target("checkpoint-120")) == "checkpoint-120");
  // Each of these would let a link leave the run directory or name something that is not a committed checkpoint.
  for (const char* bad :
       {"checkpoint-2/model.h5", "/abs/checkpoint-2/model.h5", "../../checkpoint-2/model.h5", "../checkpoint-/model.h5",
        "../checkpoint-2x/model.h5", "../checkpoint-2/other.h5", "../.checkpoint-2.tmp/model.h5",
        "../checkpoint-2/model.h5x", "../checkpoint-2/../model.h5", "../checkpoint-1234567890123456789/model.h5", ""})
    CHECK(zt::link_holder(bad).empty());
}

TEST_CASE("read_links lists the external links of the tensor groups only, linked_checkpoints their holders",
          "[links]") {
  zt::test::ScratchDir dir;
  const std::string ck = dir.path + "/checkpoint-6";
  fs::create_directories(ck);
  {
    zt::H5Id f(H5Fcreate((ck + "/" + zt::kCheckpointFile).c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    REQUIRE(f.get() >= 0);
    for (const char* g : {"params", "optim", "optim/exp_avg", "optim/exp_avg_sq"})
      zt::H5Id(H5Gcreate2(f, g, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    const hsize_t n = 4;
    zt::H5Id space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    zt::H5Id(H5Dcreate2(f, "params/wpe", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    REQUIRE(H5Lcreate_external("../checkpoint-2/model.h5", "/params/wte", f, "params/wte", H5P_DEFAULT, H5P_DEFAULT) >=
            0);
    REQUIRE(H5Lcreate_external("../checkpoint-4/model.h5", "/optim/exp_avg/wte", f, "optim/exp_avg/wte", H5P_DEFAULT,
                               H5P_DEFAULT) >= 0);
    REQUIRE(H5Lcreate_soft("/params/wpe", f, "optim/exp_avg_sq/wpe", H5P_DEFAULT, H5P_DEFAULT) >= 0);
    // Outside the tensor groups: not a tensor, so not listed (and never written by zerotrain).
    REQUIRE(H5Lcreate_external("../checkpoint-1/model.h5", "/x", f, "stray", H5P_DEFAULT, H5P_DEFAULT) >= 0);
  }
  const std::map<std::string, std::string> links = zt::read_links(ck + "/");
  CHECK(links == std::map<std::string, std::string>{{"optim/exp_avg/wte", "../checkpoint-4/model.h5"},
                                                    {"params/wte", "../checkpoint-2/model.h5"}});
  CHECK(zt::linked_checkpoints(ck) == std::set<std::string>{"checkpoint-2", "checkpoint-4"});
  CHECK_THROWS_AS(zt::read_links(dir.path + "/checkpoint-9"), zt::CheckpointError);
}
