// HDF5 error-stack text for zt::Error messages.
#include "ckpt/h5.hpp"

#include <vector>

namespace zt {

void h5_quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

std::string h5_error_stack() {
  std::vector<std::string> msgs;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
        auto* out = static_cast<std::vector<std::string>*>(data);
        out->push_back(fmt::format("{}(): {}", e->func_name ? e->func_name : "?", e->desc ? e->desc : "?"));
        return 0;
      },
      &msgs);
  if (msgs.empty()) return "(no HDF5 error stack)";
  std::string s;
  for (size_t i = 0; i < msgs.size() && i < 4; ++i) s += (i ? " <- " : "") + msgs[i];
  return s;
}

}  // namespace zt
