// Token ids <-> text: byte vocabularies (a token is a byte) and llm.c's GPT-2 tokenizer file (gpt2_tokenizer.bin).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace zt {

/// llm.c's tokenizer file: uint32 header[256] (magic 20240328, version 1 or 2, vocab size, version 2: the
/// end-of-text id), then per token a uint8 length and that many bytes. It holds the decoding table only (GPT-2's
/// BPE merges are not in it), so encoding is greedy longest-match over that table.
class Tokenizer {
 public:
  /// Reads a tokenizer file; throws zt::Error naming the file and the field that is wrong.
  static Tokenizer load(const std::string& path);
  int vocab_size() const { return int(pieces_.size()); }
  /// The end-of-text id, or -1 when the file names none.
  int eot() const { return eot_; }
  /// The bytes of one token; throws for an id outside the table.
  const std::string& piece(int32_t id) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  /// Greedy longest-match: at each position the longest token whose bytes come next (GPT-2's table has every
  /// single byte, so every text encodes). Not GPT-2's BPE: the same text may split differently.
  std::vector<int32_t> encode(const std::string& text) const;

 private:
  std::string path_;
  std::vector<std::string> pieces_;
  int eot_ = -1;
  size_t max_len_ = 0;
};

/// A byte vocabulary's text: every token id a byte (ids must be < 256).
std::string decode_bytes(const std::vector<int32_t>& ids);
/// Bytes as tokens; throws when a byte is not below `vocab`.
std::vector<int32_t> encode_bytes(const std::string& text, int vocab);
/// Text for a log line: printable ASCII as is, everything else as \n, \t or \xNN.
std::string escape_bytes(const std::string& bytes);

}  // namespace zt
