// What kind of CPU this is, as runner.py's cpu_info() says it: {"model", "isa"}.
// The same flag lists and Arm part numbers; on aarch64 the SIMD extensions come from
// getauxval(AT_HWCAP/AT_HWCAP2) when /proc/cpuinfo is not this CPU's (qemu-user shows the
// host's). Keep the tables in step with runner.py.
#pragma once

#include <sys/auxv.h>
#include <sys/utsname.h>

#include <cctype>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "json.h"

namespace edgepack {

inline std::string machine() {
  struct utsname u;
  return uname(&u) == 0 ? u.machine : "";
}

inline std::map<std::string, std::string> proc_cpuinfo() {     // the first value of each key
  std::map<std::string, std::string> info;
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto trim = [](std::string s) {
      size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
      return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    };
    info.emplace(trim(line.substr(0, colon)), trim(line.substr(colon + 1)));
  }
  return info;
}

inline std::vector<std::string> arm64_hwcaps() {
  // Linux arm64 AT_HWCAP / AT_HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h).
  static const std::vector<std::pair<const char*, int>> hwcap = {
      {"fphp", 9}, {"asimd", 1}, {"asimdhp", 10}, {"asimddp", 20}, {"sve", 22}, {"asimdfhm", 23}};
  static const std::vector<std::pair<const char*, int>> hwcap2 = {
      {"sve2", 1}, {"svei8mm", 9}, {"svebf16", 12}, {"i8mm", 13}, {"bf16", 14}, {"sme", 23}};
  unsigned long a = getauxval(AT_HWCAP), b = getauxval(AT_HWCAP2);
  std::vector<std::string> found;
  for (auto& [name, bit] : hwcap) if (a >> bit & 1) found.push_back(name);
  for (auto& [name, bit] : hwcap2) if (b >> bit & 1) found.push_back(name);
  return found;
}

inline Json cpu_info() {
  static const char* x86_flags[] = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
                                    "amx_int8", "amx_bf16"};
  static const char* arm_flags[] = {"neon", "vfpv4", "asimd", "asimdhp", "fphp", "asimddp", "asimdfhm", "i8mm",
                                    "bf16", "sve", "sve2", "svei8mm", "svebf16", "sme"};
  static const std::map<std::string, std::string> arm_parts = {
      {"0xd03", "Cortex-A53"}, {"0xd04", "Cortex-A35"}, {"0xd05", "Cortex-A55"}, {"0xd07", "Cortex-A57"},
      {"0xd08", "Cortex-A72"}, {"0xd09", "Cortex-A73"}, {"0xd0a", "Cortex-A75"}, {"0xd0b", "Cortex-A76"},
      {"0xd0c", "Neoverse-N1"}, {"0xd0d", "Cortex-A77"}, {"0xd40", "Neoverse-V1"}, {"0xd41", "Cortex-A78"},
      {"0xd44", "Cortex-X1"}, {"0xd46", "Cortex-A510"}, {"0xd47", "Cortex-A710"}, {"0xd48", "Cortex-X2"},
      {"0xd49", "Neoverse-N2"}, {"0xd4b", "Cortex-A78C"}, {"0xd4f", "Neoverse-V2"}, {"0xd80", "Cortex-A520"},
      {"0xd81", "Cortex-A720"}, {"0xd82", "Cortex-X4"}};

  auto info = proc_cpuinfo();
  auto get = [&](const char* key) { auto it = info.find(key); return it == info.end() ? std::string() : it->second; };
  std::string arch = machine();
  std::set<std::string> flags;
  std::istringstream words(!get("flags").empty() ? get("flags") : get("Features"));
  for (std::string w; words >> w;) flags.insert(w);
  std::string model = get("model name");
  if (model.empty()) model = get("Model");
  if (model.empty()) model = get("Hardware");
  std::vector<std::string> isa;
  if (arch == "aarch64" || arch == "arm64" || arch.rfind("arm", 0) == 0) {
    std::string part;
    if (get("CPU implementer") == "0x41") {
      std::string p = get("CPU part");
      for (char& c : p) c = char(std::tolower(c));
      auto it = arm_parts.find(p);
      if (it != arm_parts.end()) part = it->second;
    }
    std::string board = !get("Model").empty() ? get("Model") : get("Hardware");
    std::string named = board.empty() ? part : (part.empty() ? board : board + " " + part);
    if (!named.empty()) model = named;
    if ((arch == "aarch64" || arch == "arm64") && !flags.count("asimd") && !flags.count("fp")) {
      auto caps = arm64_hwcaps();                    // /proc/cpuinfo is not this CPU's (emulated)
      flags = std::set<std::string>(caps.begin(), caps.end());
    }
    for (const char* f : arm_flags) if (flags.count(f)) isa.push_back(f);
  } else {
    for (const char* f : x86_flags) if (flags.count(f)) isa.push_back(f);
  }
  return Json::object().set("model", model.empty() ? arch : model).set("isa", isa);
}

// This process's peak resident set in MB (VmHWM), as runner.py's peak_rss_mb().
inline double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream in(line.substr(6));
      long kb = 0;
      in >> kb;
      return double(long(kb / 1024.0 * 100 + 0.5)) / 100;
    }
  }
  return 0;
}

}  // namespace edgepack
