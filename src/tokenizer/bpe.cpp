// BPE: building the merge table, the per-thread word cache and the merge loop.
#include "bpe.h"

#include <algorithm>
#include <atomic>
#include <memory>

#include "lowrank/core/error.h"
#include "lowrank/tokenizer/unicode.h"

namespace lowrank::tok {

// ---- GPT-2 byte alphabet ----

const std::array<uint32_t, 256>& byte_level_chars() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? b : 256 + n++;
    }
    return t;
  }();
  return table;
}

int byte_level_char_to_byte(uint32_t cp) {
  static const std::array<int16_t, 324> inv = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    const auto& f = byte_level_chars();
    for (int b = 0; b < 256; ++b) t[f[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < inv.size() ? inv[cp] : -1;
}

// Converts a byte-alphabet token to raw bytes; false when it has other chars.
static bool byte_level_decode(std::string_view s, std::string& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    int b = byte_level_char_to_byte(unicode::next_cp(s, i));
    if (b < 0) return false;
    out.push_back(static_cast<char>(b));
  }
  return true;
}

// ---- merge map ----

void MergeMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  table_.assign(cap, Entry{});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  size_ = 0;
}

void MergeMap::insert_or_assign(int32_t a, int32_t b, Value v) {
  if ((size_ + 1) * 2 > table_.size()) {
    std::vector<Entry> old;
    old.swap(table_);
    reserve(std::max<size_t>(size_ + 1, old.size()));
    for (const Entry& e : old)
      if (e.key != kEmpty) insert_or_assign(static_cast<int32_t>(e.key >> 32),
                                            static_cast<int32_t>(e.key & 0xffffffffu), e.v);
  }
  uint64_t k = key(a, b);
  for (size_t i = slot(k);; i = (i + 1) & mask_) {
    Entry& e = table_[i];
    if (e.key == k) { e.v = v; return; }  // a repeated merge: the later rank wins, as in HF
    if (e.key == kEmpty) {
      e.key = k;
      e.v = v;
      ++size_;
      return;
    }
  }
}

// ---- model ----

static std::atomic<uint64_t> g_serial{1};

BpeModel::BpeModel(VocabMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions opt, bool byte_level)
    : vocab_(std::move(vocab)), opt_(std::move(opt)), byte_level_(byte_level),
      serial_(g_serial.fetch_add(1)) {
  int32_t max_id = -1;
  for (auto& [tok, id] : vocab_) {
    if (id < 0) throw error("model: negative id ", id, " for token \"", tok, "\"");
    max_id = std::max(max_id, id);
  }
  if (max_id > 50'000'000) throw error("model: token id ", max_id, " is implausibly large");
  vocab_r_.assign(max_id + 1, std::string());
  has_id_.assign(max_id + 1, 0);
  for (auto& [tok, id] : vocab_) {
    vocab_r_[id] = tok;
    has_id_[id] = 1;
  }
  if (byte_level_) {
    std::string raw;
    for (auto& [tok, id] : vocab_)
      if (byte_level_decode(tok, raw)) unit_vocab_.emplace(raw, id);
  }
  if (opt_.unk_token) {
    auto it = vocab_.find(*opt_.unk_token);
    // HF only fails when an unknown char actually needs the unk token; remember -2 for that.
    unk_id_ = it == vocab_.end() ? -2 : it->second;
  }
  const std::string& prefix = opt_.continuing_subword_prefix;
  std::string prefix_units = prefix, suffix_units = opt_.end_of_word_suffix;
  if (byte_level_ && (!byte_level_decode(prefix, prefix_units) ||
                      !byte_level_decode(opt_.end_of_word_suffix, suffix_units)))
    throw error("model: continuing_subword_prefix/end_of_word_suffix outside the byte alphabet");
  opt_.continuing_subword_prefix = prefix_units;
  opt_.end_of_word_suffix = suffix_units;
  simple_units_ = opt_.continuing_subword_prefix.empty() && opt_.end_of_word_suffix.empty();

  byte_ids_.fill(-1);
  fallback_ids_.fill(-1);
  const VocabMap& units = byte_level_ ? unit_vocab_ : vocab_;
  for (int b = 0; b < 256; ++b) {
    auto it = units.find(std::string(1, static_cast<char>(b)));
    if (it != units.end()) byte_ids_[b] = it->second;
    static const char* hex = "0123456789ABCDEF";
    std::string code = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
    auto f = vocab_.find(code);
    if (f != vocab_.end()) fallback_ids_[b] = f->second;
  }
  if (!byte_level_) {
    cp_ids_.assign(0x30000, -1);
    for (auto& [tok, id] : vocab_) {
      if (tok.empty() || unicode::find_invalid_utf8(tok) != std::string::npos) continue;
      size_t i = 0;
      uint32_t cp = unicode::next_cp(tok, i);
      if (i == tok.size() && cp < cp_ids_.size()) cp_ids_[cp] = id;
    }
  }

  static constexpr std::string_view kMeta = "\xE2\x96\x81";  // ▁
  if (!byte_level_ && !opt_.ignore_merges && simple_units_ && vocab_.count(std::string(kMeta))) {
    split_on_metaspace_ = true;
    for (auto& [tok, id] : vocab_) {
      for (size_t p = tok.find(kMeta, 1); p != std::string::npos; p = tok.find(kMeta, p + 1))
        if (p < kMeta.size() || tok.compare(p - kMeta.size(), kMeta.size(), kMeta) != 0) {
          split_on_metaspace_ = false;
          break;
        }
      if (!split_on_metaspace_) break;
    }
  }

  // Merges: (a, b) -> (rank, id of a + b without b's continuing prefix).
  merges_.reserve(merges.size());
  std::string merged;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end()) throw error("model: merge ", rank + 1, ": token \"", a, "\" is not in the vocab");
    if (ib == vocab_.end()) throw error("model: merge ", rank + 1, ": token \"", b, "\" is not in the vocab");
    if (b.size() < prefix.size()) throw error("model: merge ", rank + 1, ": \"", b, "\" is shorter than the prefix");
    merged.assign(a);
    merged.append(b, prefix.size(), std::string::npos);
    auto im = vocab_.find(merged);
    if (im == vocab_.end())
      throw error("model: merge ", rank + 1, ": merged token \"", merged, "\" is not in the vocab");
    merges_.insert_or_assign(ia->second, ib->second,
                             {static_cast<uint32_t>(rank), im->second});
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(vocab_r_.size()) || !has_id_[id]) return nullptr;
  return &vocab_r_[id];
}

int32_t BpeModel::unit_id(std::string_view unit) const {
  const VocabMap& units = byte_level_ ? unit_vocab_ : vocab_;
  auto it = units.find(unit);
  return it == units.end() ? -1 : it->second;
}

// The initial symbols of a word: one per unit (byte, or char), with byte fallback and unk.
void BpeModel::initial_symbols(std::string_view w, std::vector<int32_t>& syms) const {
  syms.clear();
  int32_t unk = -1;  // pending unk (fused or not)
  std::string unit;
  for (size_t i = 0; i < w.size();) {
    size_t b = i;
    int32_t id;
    if (byte_level_) {
      ++i;
    } else {
      i += unicode::utf8_len(static_cast<unsigned char>(w[b]));
    }
    if (simple_units_) {
      if (byte_level_) {
        id = byte_ids_[static_cast<unsigned char>(w[b])];
      } else {
        size_t k = b;
        uint32_t cp = unicode::next_cp(w, k);
        id = cp < cp_ids_.size() ? cp_ids_[cp] : unit_id(w.substr(b, i - b));
      }
    } else {
      unit.clear();
      if (b != 0) unit += opt_.continuing_subword_prefix;
      unit.append(w.substr(b, i - b));
      if (i == w.size()) unit += opt_.end_of_word_suffix;
      id = unit_id(unit);
    }
    if (id >= 0) {
      if (unk >= 0) {
        syms.push_back(unk);
        unk = -1;
      }
      syms.push_back(id);
      continue;
    }
    if (opt_.byte_fallback) {
      // The unit (with any prefix/suffix) as <0xXX> tokens, if all of them exist.
      std::string_view bytes = w.substr(b, i - b);
      std::string tmp;
      if (!simple_units_) {
        tmp.clear();
        if (b != 0) tmp += opt_.continuing_subword_prefix;
        tmp.append(bytes);
        if (i == w.size()) tmp += opt_.end_of_word_suffix;
        bytes = tmp;
      }
      bool all = true;
      for (char c : bytes) all = all && fallback_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : bytes) syms.push_back(fallback_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (opt_.unk_token) {
      if (unk_id_ == -2) throw error("model: unk_token \"", *opt_.unk_token, "\" is not in the vocab");
      if (unk >= 0 && !opt_.fuse_unk) syms.push_back(unk);
      unk = unk_id_;
    }
    // No unk token: HF drops the unit silently.
  }
  if (unk >= 0) syms.push_back(unk);
}

namespace {
struct Symbol {
  int32_t id;
  int32_t prev, next;
  bool alive;
};
struct QItem {
  uint32_t rank;
  uint32_t pos;
  int32_t new_id;
  // std::push_heap builds a max-heap: "less" means lower priority = higher (rank, pos).
  bool operator<(const QItem& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};
}  // namespace

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  thread_local std::vector<int32_t> ids;
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<QItem> heap;
  initial_symbols(w, ids);
  size_t n = ids.size();
  if (n <= 1) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  if (n == 2) {
    if (const MergeMap::Value* m = merges_.find(ids[0], ids[1]))
      out.push_back(m->id);
    else
      out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  sym.resize(n);
  heap.clear();
  for (size_t i = 0; i < n; ++i)
    sym[i] = {ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1, true};
  for (size_t i = 0; i + 1 < n; ++i)
    if (const MergeMap::Value* m = merges_.find(ids[i], ids[i + 1]))
      heap.push_back({m->rank, static_cast<uint32_t>(i), m->id});
  std::make_heap(heap.begin(), heap.end());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    QItem top = heap.back();
    heap.pop_back();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[left.next];
    const MergeMap::Value* m = merges_.find(left.id, right.id);
    if (!m || m->id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = static_cast<int32_t>(top.pos);
    if (left.prev >= 0) {
      if (const MergeMap::Value* p = merges_.find(sym[left.prev].id, left.id)) {
        heap.push_back({p->rank, static_cast<uint32_t>(left.prev), p->id});
        std::push_heap(heap.begin(), heap.end());
      }
    }
    if (left.next >= 0) {
      if (const MergeMap::Value* p = merges_.find(left.id, sym[left.next].id)) {
        heap.push_back({p->rank, top.pos, p->id});
        std::push_heap(heap.begin(), heap.end());
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

namespace {
// Per-thread cache of piece -> ids for one model; ids live in one arena vector.
struct WordCache {
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, StringHash, std::equal_to<>> map;
  std::vector<int32_t> arena;
};
constexpr size_t kCacheEntries = 1 << 18;
constexpr size_t kCacheMaxPiece = 256;

WordCache& thread_cache(uint64_t serial) {
  thread_local std::unordered_map<uint64_t, std::unique_ptr<WordCache>> caches;
  thread_local uint64_t last_serial = 0;
  thread_local WordCache* last = nullptr;
  if (serial == last_serial && last) return *last;
  auto it = caches.find(serial);
  if (it == caches.end()) {
    if (caches.size() >= 8) caches.clear();  // models come and go (tests): bound the memory
    it = caches.emplace(serial, std::make_unique<WordCache>()).first;
  }
  last_serial = serial;
  last = it->second.get();
  return *last;
}
}  // namespace

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (opt_.ignore_merges) {
    int32_t id = unit_id(piece);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (split_on_metaspace_ && piece.size() >= kCacheMaxPiece) {
    // Cut before each "▁" that follows another char than "▁" (see split_on_metaspace_).
    static constexpr std::string_view kMeta = "\xE2\x96\x81";
    size_t start = 0;
    for (size_t p = piece.find(kMeta, 1); p != std::string_view::npos;
         p = piece.find(kMeta, p + kMeta.size())) {
      if (p >= kMeta.size() && piece.compare(p - kMeta.size(), kMeta.size(), kMeta) == 0) continue;
      cached_word(piece.substr(start, p - start), out);
      start = p;
    }
    cached_word(piece.substr(start), out);
    return;
  }
  cached_word(piece, out);
}

void BpeModel::cached_word(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() >= kCacheMaxPiece) {
    merge_word(piece, out);
    return;
  }
  WordCache& c = thread_cache(serial_);
  auto it = c.map.find(piece);
  if (it != c.map.end()) {
    out.insert(out.end(), c.arena.begin() + it->second.first,
               c.arena.begin() + it->second.first + it->second.second);
    return;
  }
  size_t before = out.size();
  merge_word(piece, out);
  if (c.map.size() >= kCacheEntries) {
    c.map.clear();
    c.arena.clear();
  }
  uint32_t off = static_cast<uint32_t>(c.arena.size());
  c.arena.insert(c.arena.end(), out.begin() + before, out.end());
  c.map.emplace(std::string(piece), std::pair<uint32_t, uint32_t>{off, static_cast<uint32_t>(out.size() - before)});
}

}  // namespace lowrank::tok
