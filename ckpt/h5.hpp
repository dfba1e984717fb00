// Thin RAII over HDF5 handles and the HDF5 check macro (errors carry the HDF5 error stack, rank and host).
#pragma once

#include <hdf5.h>

#include <string>
#include <utility>

#include "core/errors.hpp"

namespace zt {

/// The innermost messages of the current HDF5 error stack, for error text.
std::string h5_error_stack();
/// Turns off HDF5's automatic printing of error stacks (we report them in zt::Error instead).
void h5_quiet();

/// An owned HDF5 identifier, closed with the function given at construction.
class H5Id {
 public:
  H5Id() = default;
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), close_(o.close_) {}
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      close_ = o.close_;
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() { reset(); }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  /// Closes now; returns the close status (negative on failure: buffered data may not have reached the file).
  herr_t reset() {
    herr_t rc = 0;
    if (id_ >= 0 && close_) rc = close_(id_);
    id_ = H5I_INVALID_HID;
    return rc;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  herr_t (*close_)(hid_t) = nullptr;
};

}  // namespace zt

#define ZT_H5_BAD(rc) ((rc) < 0)
#define ZT_H5_DESCRIBE(rc) ::zt::h5_error_stack()
/// Checks an HDF5 call (negative return = failure).
#define ZT_H5_CHECK(stmt) ZT_LIB_CHECK_GEN("HDF5", stmt, ZT_H5_BAD, ZT_H5_DESCRIBE)
