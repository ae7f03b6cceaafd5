// Per-operator times from ExecuTorch's ETDump event tracer, summed in the process.
//
// The wheel ships ETDumpGen (libexecutorch_etdump) but not the flatcc reader of the
// ETDump it writes, so the runner does not parse its own .etdp: this subclass passes
// every event on to ETDumpGen (which still builds the real ETDump, written with --etdump
// for ExecuTorch's Inspector) and keeps the time of each innermost one. What the events
// are (executorch 1.5.1):
//
//   OPERATOR_CALL            one per kernel instruction, around
//     native_call_<op>.<overload>   the kernel wrapper's own event (portable/optimized/quantized)
//   DELEGATE_CALL            one per delegated subgraph, around
//     "<XNNPACK op> #<n>"    the XNNPACK delegate's per-operator times (log_profiling_delegate,
//                            from XNNPACK's own timers in microseconds)
//
// An OPERATOR_CALL or DELEGATE_CALL with nothing inside is kept as itself; a DELEGATE_CALL's
// time outside its operators (copies, XNNPACK's setup) as "DELEGATE_CALL outside its
// operators". Method::execute gives the whole run's time (method_ms). Each event's end is
// read before this class does any bookkeeping, so the times here leave that out (the
// ETDump's own enclosing events include it: about a microsecond per event).
#pragma once

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/runtime/platform/platform.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace edgepack {

struct OpTime {
  std::string name;
  std::string type;      // "kernel" (a CPU kernel), "xnnpack" (inside the delegate), "delegate", "operator"
  double ms = 0;         // total over the recorded runs
  long calls = 0;        // total over the recorded runs
};

class ProfileRecorder : public executorch::etdump::ETDumpGen {
 public:
  using Entry = executorch::runtime::EventTracerEntry;

  bool recording = false;   // off: events go to the ETDump only (warm-up)

  Entry start_profiling(const char* name, executorch::runtime::ChainID chain_id,
                        executorch::runtime::DebugHandle debug_handle) override {
    Entry entry = ETDumpGen::start_profiling(name, chain_id, debug_handle);
    open(name, entry.start_time, false);
    return entry;
  }

  void end_profiling(Entry entry) override {
    close(et_pal_current_ticks());
    ETDumpGen::end_profiling(entry);
  }

  Entry start_profiling_delegate(const char* name, executorch::runtime::DelegateDebugIntId index) override {
    Entry entry = ETDumpGen::start_profiling_delegate(name, index);
    open(name ? name : "delegate event", entry.start_time, true);
    return entry;
  }

  void end_profiling_delegate(Entry entry, const void* metadata, size_t metadata_len) override {
    close(et_pal_current_ticks());
    ETDumpGen::end_profiling_delegate(entry, metadata, metadata_len);
  }

  void log_profiling_delegate(const char* name, executorch::runtime::DelegateDebugIntId index,
                              et_timestamp_t start, et_timestamp_t end, const void* metadata,
                              size_t metadata_len) override {
    ETDumpGen::log_profiling_delegate(name, index, start, end, metadata, metadata_len);
    if (!stack_.empty()) {
      stack_.back().has_child = true;
      stack_.back().child_ticks += end - start;
    }
    add(name ? name : "delegate event", true, end - start);
  }

  // Mean ms per run of Method::execute, and every operator's total, most time first.
  double method_ms = 0;
  std::vector<OpTime> ops() const {
    std::vector<OpTime> out;
    for (const auto& kv : totals_) out.push_back(kv.second);
    std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
    return out;
  }

 private:
  struct Frame {
    std::string name;
    et_timestamp_t start;
    bool delegate;
    bool has_child = false;
    et_timestamp_t child_ticks = 0;   // time inside the events it holds
  };

  void open(const char* name, et_timestamp_t start, bool delegate) {
    if (!stack_.empty()) stack_.back().has_child = true;
    stack_.push_back({name ? name : "", start, delegate});
  }

  void close(et_timestamp_t end) {
    if (stack_.empty()) return;
    Frame f = stack_.back();
    stack_.pop_back();
    if (!stack_.empty()) stack_.back().child_ticks += end - f.start;
    if (f.name == "Method::execute") {
      if (recording) method_ms += ticks_ms(end - f.start);
      return;
    }
    if (f.has_child && f.name == "DELEGATE_CALL") {     // the delegate's own work around its operators
      add("DELEGATE_CALL outside its operators", false, end - f.start - std::min(f.child_ticks, end - f.start));
      return;
    }
    if (f.has_child || f.name.rfind("Method::", 0) == 0 || f.name.rfind("Program::", 0) == 0) return;
    if (f.delegate || f.name.rfind("native_call_", 0) == 0 || f.name == "OPERATOR_CALL" ||
        f.name == "DELEGATE_CALL")
      add(f.name, f.delegate, end - f.start);
  }

  void add(std::string name, bool delegate, et_timestamp_t ticks) {
    if (!recording) return;
    std::string type = delegate ? "xnnpack" : "kernel";
    if (delegate) {          // "Convolution (NHWC, F32) IGEMM #3": the 3rd of its kind in this subgraph
      size_t hash = name.rfind(" #");
      if (hash != std::string::npos && name.find_first_not_of("0123456789", hash + 2) == std::string::npos)
        name.erase(hash);
    } else if (name.rfind("native_call_", 0) == 0) {
      name.erase(0, std::strlen("native_call_"));
    } else {
      type = name.rfind("DELEGATE_CALL", 0) == 0 ? "delegate" : "operator";
    }
    OpTime& t = totals_[type + '\0' + name];
    t.name = name;
    t.type = type;
    t.ms += ticks_ms(ticks);
    t.calls += 1;
  }

  static double ticks_ms(et_timestamp_t ticks) {
    et_tick_ratio_t r = et_pal_ticks_to_ns_multiplier();
    return double(ticks) * double(r.numerator) / double(r.denominator) / 1e6;
  }

  std::vector<Frame> stack_;
  std::map<std::string, OpTime> totals_;
};

}  // namespace edgepack
