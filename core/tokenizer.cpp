// llm.c tokenizer files and byte vocabularies: decoding ids to text, and encoding prompts.
#include "core/tokenizer.hpp"

#include <cstdio>
#include <fstream>
#include <unordered_map>

#include "core/errors.hpp"

namespace zt {

namespace {
constexpr uint32_t kTokenizerMagic = 20240328;
}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ZT_CHECK(in.good(), "cannot open tokenizer file '{}'", path);
  uint32_t header[256] = {};
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  ZT_CHECK(in.gcount() == std::streamsize(sizeof(header)),
           "tokenizer file '{}' is truncated: shorter than its {}-byte header", path, sizeof(header));
  ZT_CHECK(header[0] == kTokenizerMagic, "tokenizer file '{}' has magic {} (header[0]); llm.c's tokenizer has {}", path,
           header[0], kTokenizerMagic);
  ZT_CHECK(header[1] == 1 || header[1] == 2, "tokenizer file '{}' has version {} (header[1]); this build reads 1 and 2",
           path, header[1]);
  const uint32_t n = header[2];
  ZT_CHECK(n >= 1 && n <= (1u << 24), "tokenizer file '{}' has vocab_size {} (header[2])", path, n);
  Tokenizer t;
  t.path_ = path;
  // Version 1 predates the field: llm.c takes GPT-2's <|endoftext|>.
  t.eot_ = header[1] == 2 ? int(header[3]) : (n == 50257 ? 50256 : -1);
  t.pieces_.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    unsigned char len = 0;
    in.read(reinterpret_cast<char*>(&len), 1);
    std::string& s = t.pieces_[i];
    s.resize(len);
    if (len) in.read(s.data(), len);
    ZT_CHECK(in.good(), "tokenizer file '{}' is truncated at token {} of {} (header[2] vocab_size)", path, i, n);
    ZT_CHECK(len > 0, "tokenizer file '{}': token {} has length 0", path, i);
    t.max_len_ = std::max<size_t>(t.max_len_, len);
  }
  ZT_CHECK(t.eot_ < int(n), "tokenizer file '{}' names end-of-text id {} (header[3]) outside its {} tokens", path,
           t.eot_, n);
  return t;
}

const std::string& Tokenizer::piece(int32_t id) const {
  ZT_CHECK(id >= 0 && size_t(id) < pieces_.size(), "token {} is outside tokenizer '{}' ({} tokens)", id, path_,
           pieces_.size());
  return pieces_[size_t(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += piece(id);
  return out;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::unordered_map<std::string, int32_t> index;
  for (size_t i = pieces_.size(); i-- > 0;) index[pieces_[i]] = int32_t(i);  // the lowest id of equal pieces wins
  std::vector<int32_t> ids;
  for (size_t at = 0; at < text.size();) {
    size_t len = std::min(max_len_, text.size() - at);
    for (; len > 0; --len) {
      auto it = index.find(text.substr(at, len));
      if (it == index.end()) continue;
      ids.push_back(it->second);
      break;
    }
    ZT_CHECK(len > 0, "tokenizer '{}' has no token for byte 0x{:02x} at offset {} of the text", path_,
             (unsigned char)text[at], at);
    at += len;
  }
  return ids;
}

std::string decode_bytes(const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) {
    ZT_CHECK(id >= 0 && id < 256, "token {} is not a byte", id);
    out.push_back(char(id));
  }
  return out;
}

std::vector<int32_t> encode_bytes(const std::string& text, int vocab) {
  std::vector<int32_t> ids;
  for (unsigned char ch : text) {
    ZT_CHECK(ch < vocab, "the text has byte 0x{:02x}, outside the model's byte vocabulary of {}", ch, vocab);
    ids.push_back(ch);
  }
  return ids;
}

std::string escape_bytes(const std::string& bytes) {
  std::string out;
  for (unsigned char ch : bytes) {
    if (ch == '\n')
      out += "\\n";
    else if (ch == '\t')
      out += "\\t";
    else if (ch == '\\')
      out += "\\\\";
    else if (ch >= 0x20 && ch < 0x7f)
      out.push_back(char(ch));
    else
      out += fmt::format("\\x{:02x}", ch);
  }
  return out;
}

}  // namespace zt
