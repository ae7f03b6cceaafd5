// numpy's dtypes and ExecuTorch's scalar types, and the casts the runner makes between them.
#pragma once

#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "npz.h"

namespace edgepack {

using executorch::aten::ScalarType;

struct DtypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// numpy's type string <-> ExecuTorch's ScalarType, for the dtypes a .pte takes and gives.
inline const std::vector<std::pair<std::string, ScalarType>>& dtypes() {
  static const std::vector<std::pair<std::string, ScalarType>> table = {
      {"<f4", ScalarType::Float}, {"<f8", ScalarType::Double}, {"<f2", ScalarType::Half},
      {"|i1", ScalarType::Char},  {"|u1", ScalarType::Byte},   {"<i2", ScalarType::Short},
      {"<i4", ScalarType::Int},   {"<i8", ScalarType::Long},   {"|b1", ScalarType::Bool}};
  return table;
}

inline ScalarType to_scalar(const std::string& descr) {
  for (auto& [d, t] : dtypes()) if (d == descr) return t;
  throw DtypeError("dtype " + descr + " has no ExecuTorch scalar type here");
}

inline std::string to_descr(ScalarType t) {
  for (auto& [d, s] : dtypes()) if (s == t) return d;
  throw DtypeError(std::string("output dtype ") + executorch::runtime::toString(t) + " has no numpy type here");
}

inline std::string dtype_name(const std::string& descr) {
  static const std::map<std::string, std::string> names = {
      {"<f4", "float32"}, {"<f8", "float64"}, {"<f2", "float16"}, {"|i1", "int8"}, {"|u1", "uint8"},
      {"<i2", "int16"},   {"<i4", "int32"},   {"<i8", "int64"},   {"|b1", "bool"}, {"<u2", "uint16"},
      {"<u4", "uint32"},  {"<u8", "uint64"}};
  auto it = names.find(descr);
  return it == names.end() ? descr : it->second;
}

template <typename To>
void cast_from(const npz::Array& a, std::vector<uint8_t>& out) {
  size_t n = size_t(a.count());
  out.resize(n * sizeof(To));
  To* dst = reinterpret_cast<To*>(out.data());
  const uint8_t* src = a.data.data();
  const std::string& d = a.descr;
  auto load = [&](auto tag, size_t i) {
    using From = decltype(tag);
    From v;
    std::memcpy(&v, src + i * sizeof(From), sizeof(From));
    return static_cast<To>(v);
  };
  for (size_t i = 0; i < n; ++i) {
    if (d == "<f4") dst[i] = load(float(), i);
    else if (d == "<f8") dst[i] = load(double(), i);
    else if (d == "|i1") dst[i] = load(int8_t(), i);
    else if (d == "|u1") dst[i] = load(uint8_t(), i);
    else if (d == "<i2") dst[i] = load(int16_t(), i);
    else if (d == "<u2") dst[i] = load(uint16_t(), i);
    else if (d == "<i4") dst[i] = load(int32_t(), i);
    else if (d == "<u4") dst[i] = load(uint32_t(), i);
    else if (d == "<i8") dst[i] = load(int64_t(), i);
    else if (d == "<u8") dst[i] = load(uint64_t(), i);
    else if (d == "|b1") dst[i] = load(uint8_t(), i);
  }
}

// An input array in the dtype the model takes: as it is when they agree; a float array
// for a float input of another width, an integer (or bool) one for an integer input, cast
// as numpy's astype would; anything else is a mismatch the runner names.
inline npz::Array as_model_dtype(npz::Array a, const std::string& want, const std::string& input) {
  if (a.descr == want) return a;
  bool from_float = a.descr[1] == 'f', to_float = want[1] == 'f';
  bool ok = from_float ? to_float : !to_float && want != "|b1";
  if (!ok || want == "<f2")
    throw DtypeError(input + ": the model takes " + dtype_name(want) + ", the inputs file gives " +
                      dtype_name(a.descr) + (from_float && !to_float ? " (a .pte holds no input quantization "
                                                                      "scale to quantize floats with)" : ""));
  std::vector<uint8_t> out;
  if (want == "<f4") cast_from<float>(a, out);
  else if (want == "<f8") cast_from<double>(a, out);
  else if (want == "|i1") cast_from<int8_t>(a, out);
  else if (want == "|u1") cast_from<uint8_t>(a, out);
  else if (want == "<i2") cast_from<int16_t>(a, out);
  else if (want == "<i4") cast_from<int32_t>(a, out);
  else if (want == "<i8") cast_from<int64_t>(a, out);
  else throw DtypeError(input + ": cannot cast " + dtype_name(a.descr) + " to " + dtype_name(want));
  a.data = std::move(out);
  a.descr = want;
  return a;
}

}  // namespace edgepack
