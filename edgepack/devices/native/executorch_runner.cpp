// The device runner for ExecuTorch .pte files, in C++ on the executorch wheel's own C++
// runtime: no Python and no torch on the device (runner.py's executorch runtime imports
// torch, which PyPI ships for aarch64 only as a CUDA build). It takes runner.py's flags and
// files and writes its JSON result (schema edgepack.runner/1) and outputs .npz:
//
//   edgepack-executorch-runner --model M.pte --inputs X.npz --warmup W --runs N --threads T \
//       --out-json R.json --out-outputs O.npz [--outputs a,b] [--runtimes ...]
//       [--profile-runs P] [--etdump FILE.etdp]
//   edgepack-executorch-runner --version        one JSON line: runtime, executorch version, source
//
// Every sample of X.npz is run once, batch 1, for the outputs (each input in its own dtype;
// a float array for a float input of another width, or an integer one for another integer
// input, is cast; nothing is quantized: a .pte carries no input scale); then `warmup`
// untimed and `runs` timed invocations of the first sample, each timed alone; then, on a
// second instance of the program with ExecuTorch's ETDump event tracer, one untimed and
// P recorded invocations (P: --profile-runs, default min(runs, 10); 0 skips it) give the
// per-operator profile. Timed runs carry no event tracer, as in the Python runtime.
// Exit status: 0 done, 2 bad usage, 3 a problem the runner names on stderr ("runner: ...").
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>
#include <executorch/runtime/platform/runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_info.h"
#include "dtypes.h"
#include "etdump_profile.h"
#include "json.h"
#include "npz.h"

#ifndef EDGEPACK_EXECUTORCH_VERSION
#define EDGEPACK_EXECUTORCH_VERSION "unknown"
#endif
#ifndef EDGEPACK_RUNNER_SOURCE
#define EDGEPACK_RUNNER_SOURCE "unknown"
#endif

// The wheel ships libexecutorch_threadpool but not its header (executorch 1.5.1): the two
// calls the runner makes, as extension/threadpool/threadpool.h declares them.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using edgepack::Json;

const char* kSchema = "edgepack.runner/1";
const char* kRuntime = "executorch_cpp";

struct RunnerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string model, inputs, out_json, out_outputs, outputs, runtimes, etdump;
  int warmup = 10, runs = 100, threads = 1, profile_runs = -1;   // -1: none, or a few with --etdump
};

[[noreturn]] void usage(const std::string& message) {
  std::fprintf(stderr,
               "usage: edgepack-executorch-runner --model M.pte --inputs X.npz --out-json R.json "
               "--out-outputs O.npz [--warmup W] [--runs N] [--threads T] [--outputs a,b] [--runtimes ...] "
               "[--profile P] [--etdump FILE]\nedgepack-executorch-runner: error: %s\n",
               message.c_str());
  std::exit(2);
}

int to_int(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    int v = std::stoi(value, &used);
    if (used == value.size()) return v;
  } catch (const std::exception&) {
  }
  usage("argument " + flag + ": invalid int value: '" + value + "'");
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i], value;
    size_t eq = flag.find('=');
    if (flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag.erase(eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      usage("argument " + flag + ": expected one argument");
    }
    if (flag == "--model") a.model = value;
    else if (flag == "--inputs") a.inputs = value;
    else if (flag == "--out-json") a.out_json = value;
    else if (flag == "--out-outputs") a.out_outputs = value;
    else if (flag == "--outputs") a.outputs = value;
    else if (flag == "--runtimes") a.runtimes = value;
    else if (flag == "--etdump") a.etdump = value;
    else if (flag == "--warmup") a.warmup = to_int(flag, value);
    else if (flag == "--runs") a.runs = to_int(flag, value);
    else if (flag == "--threads") a.threads = to_int(flag, value);
    else if (flag == "--profile" || flag == "--profile-runs") a.profile_runs = to_int(flag, value);
    else usage("unrecognized argument: " + flag);
  }
  for (auto [flag, value] : {std::pair{"--model", &a.model}, {"--inputs", &a.inputs}, {"--out-json", &a.out_json},
                             {"--out-outputs", &a.out_outputs}})
    if (value->empty()) usage(std::string("the following argument is required: ") + flag);
  if (a.warmup < 0 || a.runs < 1 || a.threads < 1) usage("--warmup must be >= 0, --runs and --threads >= 1");
  if (!a.runtimes.empty() && ("," + a.runtimes + ",").find(std::string(",") + kRuntime + ",") == std::string::npos)
    throw RunnerError(std::string("this is the ") + kRuntime + " runner; --runtimes offers only " + a.runtimes);
  // As runner.py: profiled runs only when asked (--profile P), or for an --etdump file.
  if (a.profile_runs < 0) a.profile_runs = a.etdump.empty() ? 0 : std::min(a.runs, 10);
  return a;
}

std::string error_text(Error e) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", unsigned(e));
  return std::string(executorch::runtime::to_string(e)) + " (" + buf + ")";
}

void check(Error e, const std::string& what) {
  if (e != Error::Ok) throw RunnerError(what + ": " + error_text(e));
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    if (comma > start) out.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::string basename(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string join(const std::vector<std::string>& xs) {
  std::string out;
  for (const auto& x : xs) out += (out.empty() ? "" : ", ") + x;
  return out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s;
  for (auto d : shape) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return "(" + s + (shape.size() == 1 ? ",)" : ")");
}

Json summarize(std::vector<double> a) {
  std::sort(a.begin(), a.end());
  double n = double(a.size()), sum = 0, sq = 0;
  for (double v : a) sum += v;
  double mean = sum / n;
  for (double v : a) sq += (v - mean) * (v - mean);
  auto pct = [&](double q) {                  // numpy.percentile's default (linear) method
    double pos = (n - 1) * q / 100, lo = std::floor(pos);
    size_t i = size_t(lo), j = std::min(i + 1, a.size() - 1);
    return a[i] + (a[j] - a[i]) * (pos - lo);
  };
  return Json::object().set("mean", mean).set("std", std::sqrt(sq / n)).set("p50", pct(50)).set("p90", pct(90))
      .set("p99", pct(99)).set("min", a.front()).set("max", a.back());
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

struct Model {
  std::vector<std::string> input_names, output_names;
  std::vector<std::string> input_descr;
  std::vector<std::vector<int32_t>> input_sizes;
  Json io = Json::object();
};

Model describe(Module& module) {
  auto meta = module.method_meta("forward");
  if (!meta.ok()) throw RunnerError("the program has no method 'forward': " + error_text(meta.error()));
  Model m;
  Json ins = Json::array(), outs = Json::array();
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    std::string name = "input_" + std::to_string(i);
    auto tag = meta->input_tag(i);
    if (!tag.ok() || *tag != executorch::runtime::Tag::Tensor)
      throw RunnerError(name + " is not a tensor: the runner feeds tensors only");
    auto info = meta->input_tensor_meta(i);
    check(info.error(), name);
    m.input_names.push_back(name);
    m.input_descr.push_back(edgepack::to_descr(info->scalar_type()));
    m.input_sizes.emplace_back(info->sizes().begin(), info->sizes().end());
    ins.push(Json::object().set("name", name)
                 .set("shape", std::vector<long>(info->sizes().begin(), info->sizes().end()))
                 .set("dtype", edgepack::dtype_name(m.input_descr.back())));
  }
  for (size_t i = 0; i < meta->num_outputs(); ++i) {
    std::string name = "output_" + std::to_string(i);
    m.output_names.push_back(name);
    Json o = Json::object().set("name", name);
    auto info = meta->output_tensor_meta(i);
    if (info.ok())
      o.set("shape", std::vector<long>(info->sizes().begin(), info->sizes().end()))
          .set("dtype", edgepack::dtype_name(edgepack::to_descr(info->scalar_type())));
    outs.push(o);
  }
  m.io.set("n_inputs", meta->num_inputs()).set("n_outputs", meta->num_outputs()).set("inputs", ins)
      .set("outputs", outs);
  return m;
}

// One sample (batch 1) of each input, as tensors over the arrays' own memory.
std::vector<EValue> sample(std::vector<npz::Array>& inputs, int64_t i,
                           std::vector<executorch::extension::TensorPtr>& keep) {
  keep.clear();
  std::vector<EValue> values;
  for (npz::Array& a : inputs) {
    std::vector<executorch::aten::SizesType> sizes(a.shape.begin(), a.shape.end());
    sizes[0] = 1;
    size_t row = size_t(a.count() / a.shape[0]) * a.itemsize();
    keep.push_back(executorch::extension::from_blob(a.data.data() + size_t(i) * row, sizes,
                                                    edgepack::to_scalar(a.descr)));
    values.emplace_back(keep.back());
  }
  return values;
}

std::vector<EValue> execute(Module& module, const std::vector<EValue>& inputs) {
  auto out = module.execute("forward", inputs);
  if (!out.ok()) throw RunnerError("executing forward failed: " + error_text(out.error()));
  return std::move(*out);
}

void write_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    if (!f.flush()) throw RunnerError(path + ": cannot write");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw RunnerError(path + ": cannot write");
}

Json profile(const Args& args, std::vector<npz::Array>& inputs) {
  Json p = Json::object().set("source", "etdump").set("runs", args.profile_runs);
  auto owned = std::make_unique<edgepack::ProfileRecorder>();
  edgepack::ProfileRecorder* tracer = owned.get();
  Module module(args.model, Module::LoadMode::Mmap, std::move(owned));
  check(module.load_method("forward"), "loading forward with the ETDump tracer");
  std::vector<executorch::extension::TensorPtr> keep;
  auto x = sample(inputs, 0, keep);
  execute(module, x);                         // untimed: first-run costs stay out of the profile
  tracer->recording = true;
  for (int i = 0; i < args.profile_runs; ++i) execute(module, x);
  tracer->recording = false;
  Json ops = Json::array();
  for (const auto& op : tracer->ops())
    ops.push(Json::object().set("name", op.name).set("type", op.type).set("ms", op.ms / args.profile_runs)
                 .set("calls", long(std::lround(double(op.calls) / args.profile_runs))));
  p.set("method_ms", tracer->method_ms / args.profile_runs).set("ops", ops);
  if (!args.etdump.empty()) {
    auto dump = tracer->get_etdump_data();
    if (dump.buf == nullptr) throw RunnerError("the ETDump tracer gave no data");
    write_atomic(args.etdump, std::string(static_cast<const char*>(dump.buf), dump.size));
    std::free(dump.buf);
  }
  return p;
}

Json run(const Args& args) {
  std::vector<npz::Array> given;
  try {
    given = npz::read(args.inputs);
  } catch (const npz::Error& e) {
    throw RunnerError(e.what());
  }
  if (given.empty()) throw RunnerError(basename(args.inputs) + " holds no input arrays");
  int64_t n_samples = -1;
  bool same = true;
  for (const auto& a : given) {
    int64_t n = a.shape.empty() ? 0 : a.shape[0];
    same = same && (n_samples < 0 || n == n_samples) && n > 0;
    n_samples = n;
  }
  if (!same) {
    std::vector<std::string> shapes;
    for (const auto& a : given) shapes.push_back(a.name + " " + shape_text(a.shape));
    throw RunnerError(basename(args.inputs) + ": the inputs need the same number (> 0) of samples, got " +
                      join(shapes));
  }

  if (!std::ifstream(args.model)) throw RunnerError(args.model + ": cannot open the model file");
  executorch::runtime::runtime_init();
  Json runtime = Json::object().set("name", kRuntime).set("version", EDGEPACK_EXECUTORCH_VERSION)
                     .set("runner_source", EDGEPACK_RUNNER_SOURCE);
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr || !pool->_unsafe_reset_threadpool(uint32_t(args.threads)))
    runtime.set("threads_note", "the thread pool could not be set to " + std::to_string(args.threads));

  auto t0 = std::chrono::steady_clock::now();
  auto module = std::make_unique<Module>(args.model, Module::LoadMode::Mmap);
  check(module->load(), "loading " + basename(args.model));
  check(module->load_method("forward"), "loading method forward of " + basename(args.model));
  double init_ms = ms_since(t0);
  Model m = describe(*module);

  // The arrays in the model's order: by name when every name matches, else by position.
  std::vector<npz::Array> inputs;
  bool by_name = given.size() == m.input_names.size();
  for (const auto& name : m.input_names)
    by_name = by_name && std::any_of(given.begin(), given.end(), [&](auto& a) { return a.name == name; });
  if (!by_name && given.size() != m.input_names.size()) {
    std::vector<std::string> names;
    for (const auto& a : given) names.push_back(a.name);
    throw RunnerError("the model takes " + std::to_string(m.input_names.size()) + " inputs (" +
                      join(m.input_names) + "); the inputs file holds " + std::to_string(given.size()) + " (" +
                      join(names) + ")");
  }
  for (size_t i = 0; i < m.input_names.size(); ++i) {
    auto named = [&](const npz::Array& g) { return g.name == m.input_names[i]; };
    npz::Array a = by_name ? *std::find_if(given.begin(), given.end(), named) : given[i];
    try {
      inputs.push_back(edgepack::as_model_dtype(std::move(a), m.input_descr[i], m.input_names[i]));
    } catch (const edgepack::DtypeError& e) {
      throw RunnerError(e.what());
    }
  }

  std::vector<std::string> wanted = args.outputs.empty() ? m.output_names : split(args.outputs);
  if (wanted.size() != m.output_names.size())
    throw RunnerError("the model has " + std::to_string(m.output_names.size()) + " outputs (" +
                      join(m.output_names) + "); expected " + std::to_string(wanted.size()) + " (" +
                      join(wanted) + ")");
  // Outputs by name where the wanted names are the model's own, else by position.
  std::vector<std::string> a = wanted, b = m.output_names;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  std::vector<size_t> order;
  for (size_t k = 0; k < wanted.size(); ++k)
    order.push_back(a == b ? size_t(std::find(m.output_names.begin(), m.output_names.end(), wanted[k]) -
                                    m.output_names.begin())
                           : k);

  // Every sample once, for the outputs.
  std::vector<npz::Array> outs(wanted.size());
  std::vector<std::vector<int64_t>> first_shape(wanted.size());
  std::vector<executorch::extension::TensorPtr> keep;
  for (int64_t i = 0; i < n_samples; ++i) {
    std::vector<EValue> got;
    try {
      got = execute(*module, sample(inputs, i, keep));
    } catch (const RunnerError& e) {       // most often a sample of another shape than the model's
      std::vector<std::string> given_desc, taken;
      for (size_t k = 0; k < inputs.size(); ++k) {
        std::vector<int64_t> one(inputs[k].shape);
        one[0] = 1;
        given_desc.push_back(m.input_names[k] + " " + edgepack::dtype_name(inputs[k].descr) + " " + shape_text(one));
        taken.push_back(m.input_names[k] + " " + edgepack::dtype_name(m.input_descr[k]) + " " +
                        shape_text(std::vector<int64_t>(m.input_sizes[k].begin(), m.input_sizes[k].end())));
      }
      throw RunnerError(std::string(e.what()) + " (sample " + std::to_string(i) + ": " + join(given_desc) +
                        "; the model takes " + join(taken) + ")");
    }
    for (size_t k = 0; k < wanted.size(); ++k) {
      const EValue& v = got.at(order[k]);
      if (!v.isTensor()) throw RunnerError(wanted[k] + " is not a tensor: the runner returns tensors only");
      const auto& t = v.toTensor();
      std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
      npz::Array& o = outs[k];
      if (i == 0) {
        o.name = wanted[k];
        o.descr = edgepack::to_descr(t.scalar_type());
        first_shape[k] = shape;
      } else if (shape != first_shape[k]) {
        throw RunnerError(wanted[k] + " changes shape from one sample to the next");
      }
      const uint8_t* p = static_cast<const uint8_t*>(t.const_data_ptr());
      o.data.insert(o.data.end(), p, p + t.nbytes());
    }
  }
  for (size_t k = 0; k < outs.size(); ++k) {    // batch-1 outputs concatenated, others stacked
    std::vector<int64_t>& s = first_shape[k];
    bool batched = !s.empty() && s[0] == 1;
    outs[k].shape = s;
    if (batched) outs[k].shape[0] = n_samples;
    else outs[k].shape.insert(outs[k].shape.begin(), n_samples);
  }
  try {
    npz::write(args.out_outputs + ".tmp.npz", outs);
  } catch (const npz::Error& e) {
    throw RunnerError(e.what());
  }
  if (std::rename((args.out_outputs + ".tmp.npz").c_str(), args.out_outputs.c_str()) != 0)
    throw RunnerError(args.out_outputs + ": cannot write");

  auto x = sample(inputs, 0, keep);
  for (int i = 0; i < args.warmup; ++i) execute(*module, x);
  std::vector<double> samples;
  for (int i = 0; i < args.runs; ++i) {
    auto t = std::chrono::steady_clock::now();
    execute(*module, x);
    samples.push_back(ms_since(t));
  }
  double rss = edgepack::peak_rss_mb();          // before the profiling instance adds its own
  module.reset();

  Json prof;
  if (args.profile_runs > 0) {
    try {
      prof = profile(args, inputs);
    } catch (const RunnerError& e) {
      prof = Json::object().set("source", "etdump").set("error", e.what()).set("ops", Json::array());
    }
  }

  Json result = Json::object();
  result.set("schema", kSchema).set("runtime", runtime).set("model", basename(args.model))
      .set("arch", edgepack::machine()).set("cpu", edgepack::cpu_info()).set("threads", args.threads)
      .set("warmup", args.warmup).set("runs", args.runs).set("init_ms", init_ms)
      .set("latency_ms", summarize(samples)).set("samples_ms", samples).set("peak_rss_mb", rss)
      .set("n_inputs", long(n_samples)).set("outputs", wanted).set("io", m.io);
  if (args.profile_runs > 0) result.set("profile", prof);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--version") {
    std::printf("%s\n", Json::object().set("runtime", kRuntime).set("version", EDGEPACK_EXECUTORCH_VERSION)
                            .set("runner_source", EDGEPACK_RUNNER_SOURCE).set("arch", edgepack::machine())
                            .dump(-1).c_str());
    return 0;
  }
  try {
    Args args = parse_args(argc, argv);
    Json result = run(args);
    write_atomic(args.out_json, result.dump() + "\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "runner: %s\n", e.what());
    return 3;
  }
  return 0;
}
