// External links of incremental checkpoints: their one allowed form, listing them, and opening linked datasets.
#include "ckpt/links.hpp"

#include <algorithm>
#include <filesystem>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "ckpt/ckpt_detail.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {
namespace fs = std::filesystem;

namespace {

constexpr const char* kTensorGroups[] = {"params", "optim/exp_avg", "optim/exp_avg_sq"};

/// The directory a path names, without trailing slashes ("out/checkpoint-4/" -> "out/checkpoint-4").
std::string trimmed(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

/// An external link's file name and object path; false when `name` is not an external link.
bool unpack_external(hid_t loc, const std::string& name, const H5L_info_t& info, std::string& file,
                     std::string& object) {
  if (info.type != H5L_TYPE_EXTERNAL) return false;
  std::vector<char> buf(info.u.val_size + 1, '\0');
  unsigned flags = 0;
  const char* f = nullptr;
  const char* o = nullptr;
  if (H5Lget_val(loc, name.c_str(), buf.data(), buf.size(), H5P_DEFAULT) < 0 ||
      H5Lunpack_elink_val(buf.data(), info.u.val_size, &flags, &f, &o) < 0)
    return false;
  file = f ? f : "";
  object = o ? o : "";
  return true;
}

}  // namespace

std::string link_target(const std::string& holder) { return "../" + holder + "/" + kCheckpointFile; }

std::string link_holder(const std::string& target) {
  const std::string head = "../checkpoint-", tail = std::string("/") + kCheckpointFile;
  if (target.size() <= head.size() + tail.size() || target.rfind(head, 0) != 0 ||
      target.compare(target.size() - tail.size(), tail.size(), tail) != 0)
    return std::string();
  const std::string digits = target.substr(head.size(), target.size() - head.size() - tail.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return std::string();
  return "checkpoint-" + digits;
}

std::map<std::string, std::string> read_links(const std::string& ckpt_dir) {
  const std::string path = trimmed(ckpt_dir) + "/" + kCheckpointFile;
  h5_quiet();
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (file.get() < 0)
    throw CheckpointError(fmt::format("cannot open checkpoint file {} to list its links: {}", path, h5_error_stack()));
  std::map<std::string, std::string> out;
  for (const char* group : kTensorGroups) {
    if (H5Lexists(file, group, H5P_DEFAULT) <= 0) continue;
    H5Id g(H5Gopen2(file, group, H5P_DEFAULT), H5Gclose);
    if (g.get() < 0) continue;
    struct Ctx {
      std::string group;
      std::map<std::string, std::string>* out;
    } ctx{group, &out};
    hsize_t idx = 0;
    H5Literate(
        g, H5_INDEX_NAME, H5_ITER_INC, &idx,
        [](hid_t loc, const char* name, const H5L_info_t* info, void* data) -> herr_t {
          auto* c = static_cast<Ctx*>(data);
          std::string target, object;
          if (unpack_external(loc, name, *info, target, object)) (*c->out)[c->group + "/" + name] = target;
          return 0;
        },
        &ctx);
  }
  return out;
}

std::set<std::string> linked_checkpoints(const std::string& ckpt_dir) {
  std::set<std::string> out;
  for (const auto& [name, target] : read_links(ckpt_dir)) {
    const std::string holder = link_holder(target);
    // A link of another form is refused by every reader; what it names is kept all the same, when it names a sibling.
    out.insert(holder.empty() ? fs::path(target).parent_path().filename().string() : holder);
  }
  return out;
}

LinkedFile::LinkedFile(const std::string& ckpt_dir, MpiComm& comm)
    : dir_(trimmed(ckpt_dir)),
      path_(dir_ + "/" + kCheckpointFile),
      comm_(comm),
      file_(detail::open_parallel(path_, comm, false)) {}

std::string LinkedFile::link_note(const Found& f) {
  return f.link.empty() ? std::string() : fmt::format(" (a link to {})", f.holder);
}

std::string LinkedFile::open(const std::string& name, Found& out) {
  out = Found();
  out.holder = path_;
  if (H5Lexists(file_, name.c_str(), H5P_DEFAULT) <= 0) return fmt::format("dataset {} is missing", name);
  H5L_info_t info{};
  if (H5Lget_info(file_, name.c_str(), &info, H5P_DEFAULT) < 0)
    return fmt::format("cannot read the link {}: {}", name, h5_error_stack());
  if (info.type == H5L_TYPE_HARD) {
    out.dset = H5Id(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (out.dset.get() < 0) return fmt::format("cannot open dataset {}: {}", name, h5_error_stack());
    return std::string();
  }
  std::string object;
  if (!unpack_external(file_, name, info, out.link, object))
    return fmt::format("{} is a soft or user-defined link, not a dataset or an external link", name);
  const std::string holder = link_holder(out.link);
  if (holder.empty() || object != "/" + name)
    return fmt::format(
        "{} is an external link to {}:{}; the format allows only ../checkpoint-<step>/model.h5:/{} (a sibling "
        "checkpoint's same dataset)",
        name, out.link, object, name);
  // Lexically, as retention names siblings: "out/checkpoint-4" + "../checkpoint-2/model.h5" is out/checkpoint-2.
  out.holder = (fs::path(dir_) / out.link).lexically_normal().string();
  const std::string& base = out.holder;
  if (!bases_.count(base) && !base_errors_.count(base)) {
    // Every rank decides the same, so the collective open below is entered by all or none.
    std::error_code ec;
    const bool missing = comm_.all_reduce_max(fs::is_regular_file(base, ec) ? 0 : 1) != 0;
    if (missing) {
      base_errors_[base] = "which does not exist (deleted, or the run directory copied without it?)";
    } else {
      try {
        bases_.emplace(base, detail::open_parallel(base, comm_, false));
      } catch (const CheckpointError& e) {
        base_errors_[base] = fmt::format("which cannot be read: {}", e.what());
      }
    }
  }
  if (base_errors_.count(base)) return fmt::format("tensor {} is a link to {}, {}", name, base, base_errors_.at(base));
  const hid_t b = bases_.at(base).get();
  H5L_info_t there{};
  if (H5Lexists(b, name.c_str(), H5P_DEFAULT) <= 0 || H5Lget_info(b, name.c_str(), &there, H5P_DEFAULT) < 0)
    return fmt::format("tensor {} is a link to {}, which has no dataset {}", name, base, name);
  if (there.type != H5L_TYPE_HARD)
    return fmt::format("tensor {} is a link to {}, where {} is itself a link (links are one step deep)", name, base,
                       name);
  out.dset = H5Id(H5Dopen2(b, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (out.dset.get() < 0)
    return fmt::format("tensor {} is a link to {}, whose dataset cannot be opened: {}", name, base, h5_error_stack());
  return std::string();
}

}  // namespace zt
