// The field table built from ZT_MODEL_FIELDS / ZT_TRAIN_FIELDS, strict value checks, and the JSON forms.
#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "core/config.hpp"
#include "core/errors.hpp"

namespace zt {

FieldCheck any() { return {}; }

FieldCheck at_least(double lo) {
  FieldCheck c;
  c.lo = lo;
  return c;
}

FieldCheck above(double lo) {
  FieldCheck c = at_least(lo);
  c.lo_open = true;
  return c;
}

FieldCheck closed(double lo, double hi) {
  FieldCheck c = at_least(lo);
  c.hi = hi;
  return c;
}

FieldCheck half_open(double lo, double hi) {
  FieldCheck c = closed(lo, hi);
  c.hi_open = true;
  return c;
}

FieldCheck above_at_most(double lo, double hi) {
  FieldCheck c = closed(lo, hi);
  c.lo_open = true;
  return c;
}

FieldCheck one_of(std::vector<std::string> choices) {
  FieldCheck c;
  c.choices = std::move(choices);
  return c;
}

namespace {

template <typename>
constexpr bool kUnsupported = false;

template <typename T>
constexpr FieldKind kind_of() {
  if constexpr (std::is_same_v<T, int>)
    return FieldKind::int32;
  else if constexpr (std::is_same_v<T, int64_t>)
    return FieldKind::int64;
  else if constexpr (std::is_same_v<T, uint64_t>)
    return FieldKind::uint64;
  else if constexpr (std::is_same_v<T, double>)
    return FieldKind::real;
  else if constexpr (std::is_same_v<T, bool>)
    return FieldKind::boolean;
  else if constexpr (std::is_same_v<T, std::string>)
    return FieldKind::text;
  else if constexpr (std::is_same_v<T, StringList>)
    return FieldKind::text_list;
  else
    static_assert(kUnsupported<T>, "a config field must be int, int64_t, uint64_t, double, bool, string or list");
}

std::string default_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string s;
    for (const auto& e : v) s += (s.empty() ? "" : ",") + e.get<std::string>();
    return s;
  }
  return v.dump();
}

template <typename T>
FieldSpec make_field(const char* name, bool model, InManifest manifest, OnResume on_resume, FieldCheck check,
                     const char* help, nlohmann::json (*get)(const ModelConfig&, const TrainConfig&),
                     void (*put)(ModelConfig&, TrainConfig&, const nlohmann::json&)) {
  const std::string def = default_text(get(ModelConfig(), TrainConfig()));
  return FieldSpec{name, kind_of<T>(), model, manifest, on_resume, std::move(check), help, def, get, put};
}

std::vector<FieldSpec> build_table() {
  std::vector<FieldSpec> fields;
  constexpr InManifest saved = InManifest::saved, unsaved = InManifest::unsaved;
  constexpr OnResume must_match = OnResume::must_match, listed = OnResume::listed, restored = OnResume::restored,
                     this_run = OnResume::this_run;
  (void)unsaved, (void)must_match, (void)listed, (void)restored, (void)this_run;
  // Each row becomes a FieldSpec whose get/put reach the member through a captureless lambda.
#define ZT_MODEL_ROW(type, name, def, manifest, on_resume, check, help)                \
  fields.push_back(make_field<type>(                                                   \
      #name, true, manifest, on_resume, check, help,                                   \
      [](const ModelConfig& m, const TrainConfig&) { return nlohmann::json(m.name); }, \
      [](ModelConfig& m, TrainConfig&, const nlohmann::json& v) { m.name = v.get<type>(); }));
#define ZT_TRAIN_ROW(type, name, def, manifest, on_resume, check, help)                \
  fields.push_back(make_field<type>(                                                   \
      #name, false, manifest, on_resume, check, help,                                  \
      [](const ModelConfig&, const TrainConfig& t) { return nlohmann::json(t.name); }, \
      [](ModelConfig&, TrainConfig& t, const nlohmann::json& v) { t.name = v.get<type>(); }));
  ZT_MODEL_FIELDS(ZT_MODEL_ROW)
  ZT_TRAIN_FIELDS(ZT_TRAIN_ROW)
#undef ZT_MODEL_ROW
#undef ZT_TRAIN_ROW
  return fields;
}

std::string number_text(double x) {
  if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 1e15) return fmt::format("{}", int64_t(x));
  return fmt::format("{}", x);
}

/// "must be >= 0", "must be 0, 1, 2 or 3", "must be in [0, 1)".
std::string limits_text(const FieldSpec& f) {
  const FieldCheck& c = f.check;
  const bool integral = f.kind != FieldKind::real;
  const bool has_lo = std::isfinite(c.lo), has_hi = std::isfinite(c.hi);
  if (has_lo && has_hi && integral && c.hi - c.lo <= 4 && !c.lo_open && !c.hi_open) {
    std::string s;
    for (int64_t v = int64_t(c.lo); v <= int64_t(c.hi); ++v)
      s += fmt::format("{}{}", v == int64_t(c.lo) ? "" : (v == int64_t(c.hi) ? " or " : ", "), v);
    return "must be " + s;
  }
  if (has_lo && has_hi)
    return fmt::format("must be in {}{}, {}{}", c.lo_open ? "(" : "[", number_text(c.lo), number_text(c.hi),
                       c.hi_open ? ")" : "]");
  if (has_lo) return fmt::format("must be {} {}", c.lo_open ? ">" : ">=", number_text(c.lo));
  return fmt::format("must be {} {}", c.hi_open ? "<" : "<=", number_text(c.hi));
}

void check_number(const FieldSpec& f, double x, const nlohmann::json& shown, const std::string& where) {
  const FieldCheck& c = f.check;
  const bool ok = (c.lo_open ? x > c.lo : x >= c.lo) && (c.hi_open ? x < c.hi : x <= c.hi);
  ZT_CHECK(ok, "{} {}, got {}", where, limits_text(f), shown.dump());
}

const char* kind_text(FieldKind k) {
  switch (k) {
    case FieldKind::int32:
    case FieldKind::int64:
      return "an integer";
    case FieldKind::uint64:
      return "a non-negative integer";
    case FieldKind::real:
      return "a number";
    case FieldKind::boolean:
      return "true or false";
    case FieldKind::text:
      return "a string";
    case FieldKind::text_list:
      return "an array of strings";
  }
  return "?";
}

// The value as the field's type stores it, or a zt::Error naming where it came from and what it should be.
nlohmann::json checked_value(const FieldSpec& f, const nlohmann::json& v, const std::string& where) {
  auto wrong = [&]() { ZT_FAIL("{} must be {}, got {}", where, kind_text(f.kind), v.dump()); };
  switch (f.kind) {
    case FieldKind::int32:
    case FieldKind::int64:
    case FieldKind::uint64: {
      if (!v.is_number_integer()) wrong();
      const bool negative = !v.is_number_unsigned() && v.get<int64_t>() < 0;
      const bool fits = f.kind == FieldKind::int32
                            ? negative ? v.get<int64_t>() >= INT32_MIN : v.get<uint64_t>() <= uint64_t(INT32_MAX)
                        : f.kind == FieldKind::int64 ? negative || v.get<uint64_t>() <= uint64_t(INT64_MAX)
                                                     : !negative;
      ZT_CHECK(fits, "{} must be {}, got {} (out of range)", where,
               f.kind == FieldKind::int32   ? "a 32-bit integer"
               : f.kind == FieldKind::int64 ? "a 64-bit integer"
                                            : "a non-negative 64-bit integer",
               v.dump());
      check_number(f, negative ? double(v.get<int64_t>()) : double(v.get<uint64_t>()), v, where);
      return v;
    }
    case FieldKind::real: {
      if (!v.is_number() || v.is_boolean()) wrong();
      const double x = v.get<double>();
      ZT_CHECK(std::isfinite(x), "{} must be a finite number, got {}", where, number_text(x));
      check_number(f, x, v, where);
      return nlohmann::json(x);
    }
    case FieldKind::boolean:
      if (!v.is_boolean()) wrong();
      return v;
    case FieldKind::text: {
      if (!v.is_string()) wrong();
      const auto& c = f.check.choices;
      ZT_CHECK(c.empty() || std::find(c.begin(), c.end(), v.get<std::string>()) != c.end(),
               "{} must be one of {}, got {}", where, fmt::join(c, ", "), v.dump());
      return v;
    }
    case FieldKind::text_list:
      if (!v.is_array()) wrong();
      for (const auto& e : v)
        if (!e.is_string()) wrong();
      return v;
  }
  wrong();
  return v;
}

}  // namespace

const std::vector<FieldSpec>& config_fields() {
  static const std::vector<FieldSpec> fields = build_table();
  return fields;
}

const FieldSpec* find_field(const std::string& name) {
  for (const auto& f : config_fields())
    if (f.name == name) return &f;
  return nullptr;
}

void set_field(const FieldSpec& f, const nlohmann::json& value, ModelConfig& m, TrainConfig& t,
               const std::string& where) {
  f.put(m, t, checked_value(f, value, where));
}

nlohmann::json to_json(const ModelConfig& m) {
  nlohmann::json j = nlohmann::json::object();
  const TrainConfig unused;
  for (const auto& f : config_fields())
    if (f.model && f.manifest == InManifest::saved) j[f.name] = f.get(m, unused);
  return j;
}

nlohmann::json to_json(const TrainConfig& t) {
  nlohmann::json j = nlohmann::json::object();
  const ModelConfig unused;
  for (const auto& f : config_fields())
    if (!f.model && f.manifest == InManifest::saved) j[f.name] = f.get(unused, t);
  return j;
}

void update_from_json(const nlohmann::json& j, ModelConfig& m, TrainConfig& t, const std::string& source) {
  ZT_CHECK(j.is_object(), "{}a config must be a JSON/TOML table of keys, got {}", source, j.type_name());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const FieldSpec* f = find_field(it.key());
    ZT_CHECK(f != nullptr, "{}unknown config key '{}'", source, it.key());
    set_field(*f, it.value(), m, t, fmt::format("{}key '{}'", source, it.key()));
  }
}

std::vector<std::string> diff_model_config(const ModelConfig& a, const ModelConfig& b) {
  std::vector<std::string> out;
  const TrainConfig unused;
  for (const auto& f : config_fields()) {
    if (!f.model) continue;
    const nlohmann::json x = f.get(a, unused), y = f.get(b, unused);
    if (x != y) out.push_back(fmt::format("{}: {} -> {}", f.name, x.dump(), y.dump()));
  }
  return out;
}

}  // namespace zt
