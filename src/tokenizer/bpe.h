#pragma once
// The BPE model: vocabulary, merge ranks and the merge loop of HF tokenizers (priority queue of
// (rank, position), leftmost lowest rank first), with a per-thread cache of piece -> ids.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace lowrank::tok {

// A fast hash for the short strings (pieces, tokens) of the hot path: 8 bytes per multiply.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept {
    const char* p = s.data();
    size_t n = s.size();
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
      uint64_t w;
      __builtin_memcpy(&w, p, 8);
      h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 31;
      p += 8;
      n -= 8;
    }
    if (n) {
      uint64_t w = 0;
      __builtin_memcpy(&w, p, n);
      h = (h ^ w) * 0x94D049BB133111EBull;
      h ^= h >> 29;
    }
    h *= 0x9E3779B97F4A7C15ull;
    return static_cast<size_t>(h ^ (h >> 32));
  }
};
using VocabMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;  // "" = none
  std::string end_of_word_suffix;         // "" = none
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

// Open-addressing hash map from a pair of token ids to (rank, merged id).
class MergeMap {
 public:
  struct Value { uint32_t rank; int32_t id; };
  void reserve(size_t n);
  void insert_or_assign(int32_t a, int32_t b, Value v);
  const Value* find(int32_t a, int32_t b) const {
    uint64_t k = key(a, b);
    for (size_t i = slot(k);; i = (i + 1) & mask_) {
      const Entry& e = table_[i];
      if (e.key == k) return &e.v;
      if (e.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Entry { uint64_t key = kEmpty; Value v{}; };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  size_t slot(uint64_t k) const { return (k * 0x9E3779B97F4A7C15ull) >> shift_; }
  std::vector<Entry> table_;
  size_t mask_ = 0, size_ = 0;
  int shift_ = 64;
};

class BpeModel {
 public:
  // `byte_level`: pieces are raw bytes and vocabulary strings are in GPT-2's byte alphabet.
  BpeModel(VocabMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           BpeOptions opt, bool byte_level);

  // Appends the ids of one pre-tokenized piece (thread-safe).
  void tokenize(std::string_view piece, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr when unknown
  int32_t max_id() const { return static_cast<int32_t>(vocab_r_.size()) - 1; }
  size_t size() const { return vocab_.size(); }
  bool byte_level() const { return byte_level_; }

 private:
  void merge_word(std::string_view w, std::vector<int32_t>& out) const;
  void cached_word(std::string_view w, std::vector<int32_t>& out) const;
  void initial_symbols(std::string_view w, std::vector<int32_t>& syms) const;
  int32_t unit_id(std::string_view unit) const;

  VocabMap vocab_;       // token string -> id, as in the file
  VocabMap unit_vocab_;  // byte-level: the same with tokens as raw bytes
  std::vector<std::string> vocab_r_;
  std::vector<char> has_id_;
  MergeMap merges_;
  BpeOptions opt_;
  bool byte_level_;
  bool simple_units_;  // no prefix/suffix: a unit's id is a table lookup
  std::array<int32_t, 256> byte_ids_{};      // byte-level: id of each single byte
  std::array<int32_t, 256> fallback_ids_{};  // "<0xXX>" tokens
  std::vector<int32_t> cp_ids_;              // otherwise: id of each code point < 0x30000
  int32_t unk_id_ = -1;
  // SentencePiece-style vocab where "▁" only ever follows "▁" inside a token: no merge can
  // cross the start of a "▁word", so a long piece is tokenized word by word (and cached).
  bool split_on_metaspace_ = false;
  uint64_t serial_;  // identifies this model's entries in the per-thread caches
};

// GPT-2's byte-to-unicode table: bytes_to_chars()[b] is the code point that stands for byte b.
const std::array<uint32_t, 256>& byte_level_chars();
int byte_level_char_to_byte(uint32_t cp);  // -1 when cp is not in the table

}  // namespace lowrank::tok
