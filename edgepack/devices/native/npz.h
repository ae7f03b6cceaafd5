// Minimal .npz (numpy's np.savez) reading and writing, so that the C++ runner takes and
// returns the same files as runner.py and no transport changes for it.
//
// np.savez writes an uncompressed (STORED) zip, and since numpy 1.x every member with a
// zip64 extra field (zipfile's force_zip64): entries are found through the central
// directory and its zip64 records. Each member is a .npy file (format 1.0, 2.0 or 3.0):
// a magic string, a Python dict literal header {'descr', 'fortran_order', 'shape'} and
// the raw data. Compressed files (np.savez_compressed) and structured dtypes are refused
// with a message that says so.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace npz {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Array {
  std::string name;            // the member's name without ".npy"
  std::string descr;           // numpy's type string, normalised: "<f4", "|i1", "|b1", "<i8" ...
  std::vector<int64_t> shape;  // empty: a 0-d array
  std::vector<uint8_t> data;   // C order, little-endian

  size_t itemsize() const;
  int64_t count() const;       // number of elements
};

// Every array in the file, in the order they were written. Throws npz::Error naming the file.
std::vector<Array> read(const std::string& path);

// Writes `arrays` as an uncompressed .npz that np.load reads. Throws npz::Error.
void write(const std::string& path, const std::vector<Array>& arrays);

}  // namespace npz
