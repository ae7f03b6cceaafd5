// Just enough JSON to write the runner's result: an ordered tree of values.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace edgepack {

class Json {
 public:
  Json() : text_("null") {}
  Json(const char* s) : text_(quote(s)) {}
  Json(const std::string& s) : text_(quote(s)) {}
  Json(bool b) : text_(b ? "true" : "false") {}
  Json(int v) : text_(std::to_string(v)) {}
  Json(long v) : text_(std::to_string(v)) {}
  Json(long long v) : text_(std::to_string(v)) {}
  Json(unsigned long v) : text_(std::to_string(v)) {}
  Json(double v) {
    if (!std::isfinite(v)) { text_ = "null"; return; }
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, v);     // shortest text that reads back the same
    text_.assign(buf, r.ptr);
    if (text_.find_first_of(".eE") == std::string::npos) text_ += ".0";
  }
  template <typename T>
  Json(const std::vector<T>& items) : kind_(kArray) {
    for (const T& x : items) items_.emplace_back("", Json(x));
  }

  static Json object() { Json j; j.kind_ = kObject; return j; }
  static Json array() { Json j; j.kind_ = kArray; return j; }

  Json& set(const std::string& key, Json value) {        // objects keep the order keys were set in
    for (auto& kv : items_)
      if (kv.first == key) { kv.second = std::move(value); return *this; }
    items_.emplace_back(key, std::move(value));
    return *this;
  }
  Json& push(Json value) { items_.emplace_back("", std::move(value)); return *this; }

  std::string dump(int indent = 1, int depth = 0) const {
    if (kind_ == kScalar) return text_;
    const char* open = kind_ == kObject ? "{" : "[";
    const char* close = kind_ == kObject ? "}" : "]";
    if (items_.empty()) return std::string(open) + close;
    if (indent < 0) {                                  // one line
      std::string out = open;
      for (size_t i = 0; i < items_.size(); ++i) {
        out += i ? ", " : "";
        if (kind_ == kObject) out += quote(items_[i].first) + ": ";
        out += items_[i].second.dump(indent);
      }
      return out + close;
    }
    std::string pad(size_t(indent * (depth + 1)), ' '), out = open;
    for (size_t i = 0; i < items_.size(); ++i) {
      out += (i ? ",\n" : "\n") + pad;
      if (kind_ == kObject) out += quote(items_[i].first) + ": ";
      out += items_[i].second.dump(indent, depth + 1);
    }
    return out + "\n" + std::string(size_t(indent * depth), ' ') + close;
  }

  static std::string quote(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') { out += '\\'; out += char(c); }
      else if (c == '\n') out += "\\n";
      else if (c == '\t') out += "\\t";
      else if (c < 0x20) { char buf[8]; std::snprintf(buf, sizeof buf, "\\u%04x", c); out += buf; }
      else out += char(c);
    }
    return out + "\"";
  }

 private:
  enum Kind { kScalar, kObject, kArray };
  Kind kind_ = kScalar;
  std::string text_;
  std::vector<std::pair<std::string, Json>> items_;
};

}  // namespace edgepack
