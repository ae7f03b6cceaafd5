#include "npz.h"

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

namespace npz {
namespace {

const char kMagic[] = "\x93NUMPY";

uint16_t u16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t u32(const uint8_t* p) { return uint32_t(u16(p)) | uint32_t(u16(p + 2)) << 16; }
uint64_t u64(const uint8_t* p) { return uint64_t(u32(p)) | uint64_t(u32(p + 4)) << 32; }

void put16(std::string& s, uint16_t v) { s.push_back(char(v & 0xff)); s.push_back(char(v >> 8)); }
void put32(std::string& s, uint32_t v) { put16(s, uint16_t(v & 0xffff)); put16(s, uint16_t(v >> 16)); }

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

// The value after `'key':` in a .npy header dict, up to the next top-level comma or brace.
std::string header_value(const std::string& header, const std::string& key, const std::string& where) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw Error(where + ": .npy header has no '" + key + "': " + header);
  at = header.find(':', at);
  size_t end = at + 1;
  int depth = 0;
  for (; end < header.size(); ++end) {
    char c = header[end];
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (depth < 0) break;
  }
  std::string v = header.substr(at + 1, end - at - 1);
  size_t b = v.find_first_not_of(" \t"), e = v.find_last_not_of(" \t");
  return b == std::string::npos ? "" : v.substr(b, e - b + 1);
}

std::string normalise_descr(std::string d, const std::string& where) {
  if (d.size() < 3 || (d.front() != '\'' && d.front() != '"'))
    throw Error(where + ": structured or unknown dtype " + d + " (one plain numeric array per input, please)");
  d = d.substr(1, d.size() - 2);
  char order = d[0], kind = d[1];
  std::string size = d.substr(2);
  if (order == '>' && size != "1") throw Error(where + ": big-endian dtype " + d + " is not supported");
  static const char* known[] = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"};
  std::string ks = std::string(1, kind) + size;
  for (const char* k : known)
    if (ks == k) return std::string(size == "1" ? "|" : "<") + ks;
  throw Error(where + ": dtype " + d + " is not supported (float16/32/64, int8-64, uint8-64, bool)");
}

// C-order copy of an array numpy stored in Fortran order.
std::vector<uint8_t> fortran_to_c(const std::vector<uint8_t>& f, const std::vector<int64_t>& shape, size_t item) {
  std::vector<uint8_t> c(f.size());
  size_t nd = shape.size();
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<int64_t> idx(nd, 0);
  for (int64_t i = 0; i < n; ++i) {      // i walks C order; idx is its multi-index
    int64_t off = 0, stride = 1;
    for (size_t k = 0; k < nd; ++k) { off += idx[k] * stride; stride *= shape[k]; }
    std::memcpy(&c[size_t(i) * item], &f[size_t(off) * item], item);
    for (size_t k = nd; k-- > 0;) {
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
  return c;
}

Array parse_npy(const uint8_t* p, size_t n, const std::string& name, const std::string& where) {
  if (n < 10 || std::memcmp(p, kMagic, 6) != 0) throw Error(where + ": not a .npy member");
  int major = p[6];
  size_t hlen, start;
  if (major == 1) { hlen = u16(p + 8); start = 10; }
  else if (major == 2 || major == 3) { hlen = u32(p + 8); start = 12; }
  else throw Error(where + ": .npy format version " + std::to_string(major) + " is not supported");
  if (start + hlen > n) throw Error(where + ": truncated .npy header");
  std::string header(reinterpret_cast<const char*>(p + start), hlen);

  Array a;
  a.name = name;
  a.descr = normalise_descr(header_value(header, "descr", where), where);
  std::string fortran = header_value(header, "fortran_order", where);
  std::string shape = header_value(header, "shape", where);
  for (char& c : shape) if (c == '(' || c == ')' || c == ',') c = ' ';
  std::istringstream in(shape);
  for (long long v; in >> v;) a.shape.push_back(v);
  size_t bytes = size_t(a.count()) * a.itemsize();
  if (start + hlen + bytes != n)
    throw Error(where + ": the data holds " + std::to_string(n - start - hlen) + " bytes, its header says " +
                std::to_string(bytes));
  a.data.assign(p + start + hlen, p + n);
  if (fortran == "True") a.data = fortran_to_c(a.data, a.shape, a.itemsize());
  return a;
}

std::string npy_header(const Array& a) {
  std::string shape = "(";
  for (size_t i = 0; i < a.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(a.shape[i]);
  shape += a.shape.size() == 1 ? ",)" : ")";
  std::string dict = "{'descr': '" + a.descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + dict.size() + 1;            // magic, version, length, dict, '\n'
  dict.append((64 - total % 64) % 64, ' ');       // numpy aligns the data to 64 bytes
  dict.push_back('\n');
  std::string out(kMagic, 6);
  out.push_back('\x01');
  out.push_back('\x00');
  put16(out, uint16_t(dict.size()));
  return out + dict;
}

}  // namespace

size_t Array::itemsize() const { return size_t(std::stoi(descr.substr(2))); }

int64_t Array::count() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::vector<Array> read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open");
  std::vector<uint8_t> z((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const uint8_t* b = z.data();
  size_t n = z.size();

  // End of central directory: the last "PK\5\6" in the final 64 KiB + 22 bytes.
  size_t eocd = std::string::npos;
  for (size_t i = n >= 22 ? n - 22 : 0; n >= 22; --i) {
    if (u32(b + i) == 0x06054b50) { eocd = i; break; }
    if (i == 0 || n - i > 65557) break;
  }
  if (eocd == std::string::npos) throw Error(path + ": not a .npz (zip) file");
  uint64_t entries = u16(b + eocd + 10), cd_offset = u32(b + eocd + 16);
  if ((entries == 0xffff || cd_offset == 0xffffffff) && eocd >= 20 && u32(b + eocd - 20) == 0x07064b50) {
    uint64_t rec = u64(b + eocd - 20 + 8);        // the zip64 end of central directory record
    if (rec + 56 > n || u32(b + rec) != 0x06064b50) throw Error(path + ": broken zip64 directory");
    entries = u64(b + rec + 32);
    cd_offset = u64(b + rec + 48);
  }

  std::vector<Array> out;
  size_t at = size_t(cd_offset);
  for (uint64_t e = 0; e < entries; ++e) {
    if (at + 46 > n || u32(b + at) != 0x02014b50) throw Error(path + ": broken zip central directory");
    uint16_t flags = u16(b + at + 8), method = u16(b + at + 10);
    uint64_t csize = u32(b + at + 20), usize = u32(b + at + 24), local = u32(b + at + 42);
    uint16_t nlen = u16(b + at + 28), xlen = u16(b + at + 30), clen = u16(b + at + 32);
    std::string name(reinterpret_cast<const char*>(b + at + 46), nlen);
    for (size_t x = at + 46 + nlen; x + 4 <= at + 46 + nlen + xlen;) {   // zip64 sizes and offset
      uint16_t id = u16(b + x), size = u16(b + x + 2);
      if (id == 0x0001) {
        const uint8_t* v = b + x + 4;
        if (usize == 0xffffffff) { usize = u64(v); v += 8; }
        if (csize == 0xffffffff) { csize = u64(v); v += 8; }
        if (local == 0xffffffff) { local = u64(v); }
      }
      x += 4 + size;
    }
    at += 46 + nlen + xlen + clen;
    std::string where = path + " [" + name + "]";
    if (flags & 1) throw Error(where + ": encrypted");
    if (method != 0)
      throw Error(where + ": compressed (np.savez_compressed); write the inputs with np.savez");
    if (local + 30 > n || u32(b + local) != 0x04034b50) throw Error(where + ": broken zip entry");
    size_t data = size_t(local) + 30 + u16(b + local + 26) + u16(b + local + 28);
    if (data + csize > n) throw Error(where + ": truncated");
    std::string key = name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0
                          ? name.substr(0, name.size() - 4) : name;
    out.push_back(parse_npy(b + data, size_t(csize), key, where));
  }
  return out;
}

void write(const std::string& path, const std::vector<Array>& arrays) {
  std::string zip, central;
  for (const Array& a : arrays) {
    std::string name = a.name + ".npy";
    std::string body = npy_header(a);
    body.append(reinterpret_cast<const char*>(a.data.data()), a.data.size());
    if (body.size() >= 0xffffffffu || zip.size() >= 0xffffffffu)
      throw Error(path + ": outputs over 4 GiB are not supported");
    uint32_t crc = crc32(reinterpret_cast<const uint8_t*>(body.data()), body.size());
    uint32_t offset = uint32_t(zip.size());
    auto fields = [&](std::string& s) {     // version needed .. extra length: shared by both headers
      put16(s, 20); put16(s, 0); put16(s, 0);          // version 2.0, no flags, STORED
      put16(s, 0); put16(s, 0x21);                     // 00:00, 1980-01-01
      put32(s, crc); put32(s, uint32_t(body.size())); put32(s, uint32_t(body.size()));
      put16(s, uint16_t(name.size())); put16(s, 0);
    };
    put32(zip, 0x04034b50);
    fields(zip);
    zip += name + body;
    put32(central, 0x02014b50);
    put16(central, 0x0314);                            // made by: Unix, 2.0
    fields(central);
    put16(central, 0); put16(central, 0); put16(central, 0);   // comment, disk, internal attributes
    put32(central, 0644u << 16);                       // -rw-r--r--
    put32(central, offset);
    central += name;
  }
  std::string end;
  put32(end, 0x06054b50);
  put16(end, 0); put16(end, 0);
  put16(end, uint16_t(arrays.size())); put16(end, uint16_t(arrays.size()));
  put32(end, uint32_t(central.size())); put32(end, uint32_t(zip.size()));
  put16(end, 0);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << zip << central << end;
  f.close();
  if (!f) throw Error(path + ": cannot write");
}

}  // namespace npz
