// hondo's CPU tensor allocator: large buffers are cached for reuse instead of going back
// to the kernel (see src/allocator.rs for why and the measurements).
//
// Every block carries a 64-byte header in front of the data (so the data stays 64-byte
// aligned, as c10's default allocator guarantees) holding its size and kind. The data
// pointer is also the DataPtr's context, so `raw_deleter` and `is_simple_data_ptr` work.
// - Small blocks (< 1 MiB) come from c10::alloc_cpu (glibc malloc) and go back to it.
// - Large blocks are page-rounded anonymous mappings; from 2 MiB on they start on a 2 MiB
//   boundary and, once huge pages are on (src/allocator.rs says when), are advised as
//   transparent huge pages (MADV_HUGEPAGE). On free they are kept in a size-keyed
//   pool and handed out again for any request between 80% and 100% of their size. Idle
//   pooled bytes never exceed twice the peak bytes ever in use: a training loop's pool
//   settles at one step's working set (plus blocks no request fits) and stops growing.
//   (Capping at once the peak unmapped and re-mapped a 32 MiB block every few
//   allocations on the small CNN: the pool also holds blocks of sizes not wanted then.)
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace {

constexpr size_t kHeader = 64;
constexpr size_t kLarge = size_t(1) << 20;
constexpr size_t kPage = 4096;
constexpr size_t kHuge = size_t(2) << 20;
constexpr uint64_t kSmall = 0x736d616c6c484e44ull;  // tags in the header, checked on free
constexpr uint64_t kBig = 0x6c61726765484e44ull;

struct Header {
  uint64_t kind;
  size_t bytes;  // the whole block, header included
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};
    char *base = n < kLarge ? small(n) : large(n);
    void *data = base + kHeader;
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void *dest, const void *src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Whether new large blocks are advised as transparent huge pages: HONDO_HUGEPAGES=1 from
  // the start, =0 never, otherwise from set_huge_pages(true) on (the trainer's choice).
  static bool huge_pages() { return huge_.load(std::memory_order_relaxed); }

  static bool set_huge_pages(bool on) {
    if (forced() < 0) huge_.store(on, std::memory_order_relaxed);
    return huge_pages();
  }

  // 1 or 0 when HONDO_HUGEPAGES says so, -1 otherwise.
  static int forced() {
    static const int f = [] {
      const char *v = std::getenv("HONDO_HUGEPAGES");
      if (v && std::strcmp(v, "1") == 0) return 1;
      if (v && std::strcmp(v, "0") == 0) return 0;
      return -1;
    }();
    return f;
  }

  static CachingCpuAllocator &get() {
    static auto *instance = new CachingCpuAllocator();  // never destroyed: frees at exit
    return *instance;
  }

  void stats(size_t *in_use, size_t *cached, size_t *peak) {
    std::lock_guard<std::mutex> lock(mu_);
    *in_use = in_use_;
    *cached = cached_;
    *peak = peak_;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto &[bytes, base] : pool_) munmap(base, bytes);
    pool_.clear();
    cached_ = 0;
  }

 private:
  static char *small(size_t n) {
    auto *base = static_cast<char *>(c10::alloc_cpu(n + kHeader));
    *reinterpret_cast<Header *>(base) = {kSmall, n + kHeader};
    return base;
  }

  // `want` bytes of fresh anonymous memory; from 2 MiB on, 2 MiB-aligned and advised as
  // transparent huge pages (a 2 MiB page takes one fault instead of 512).
  static void *map(size_t want) {
    if (!huge_pages() || want < kHuge) {
      return mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    size_t over = want + kHuge;
    void *p = mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return p;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    uintptr_t start = (a + kHuge - 1) & ~(uintptr_t(kHuge) - 1);
    if (start > a) munmap(p, start - a);
    size_t tail = (a + over) - (start + want);
    if (tail > 0) munmap(reinterpret_cast<void *>(start + want), tail);
    madvise(reinterpret_cast<void *>(start), want, MADV_HUGEPAGE);  // advice: failure is harmless
    return reinterpret_cast<void *>(start);
  }

  char *large(size_t n) {
    size_t want = (n + kHeader + kPage - 1) / kPage * kPage;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pool_.lower_bound(want);
      if (it != pool_.end() && it->first - want <= it->first / 5) {
        char *base = it->second;
        size_t bytes = it->first;
        pool_.erase(it);
        cached_ -= bytes;
        in_use_ += bytes;
        peak_ = std::max(peak_, in_use_);
        return base;
      }
    }
    void *p = map(want);
    if (p == MAP_FAILED) {
      empty_cache();
      p = map(want);
    }
    TORCH_CHECK_WITH(OutOfMemoryError, p != MAP_FAILED, "hondo CPU allocator: out of memory allocating ", n, " bytes");
    auto *base = static_cast<char *>(p);
    *reinterpret_cast<Header *>(base) = {kBig, want};
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ += want;
    peak_ = std::max(peak_, in_use_);
    return base;
  }

  static void release(void *data) {
    if (data == nullptr) return;
    char *base = static_cast<char *>(data) - kHeader;
    Header h = *reinterpret_cast<Header *>(base);
    if (h.kind == kSmall) {
      c10::free_cpu(base);
    } else {
      TORCH_INTERNAL_ASSERT(h.kind == kBig, "hondo CPU allocator: freeing a foreign pointer");
      get().recycle(base, h.bytes);
    }
  }

  void recycle(char *base, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ -= bytes;
    if (cached_ + bytes > 2 * peak_) {
      munmap(base, bytes);
      return;
    }
    pool_.emplace(bytes, base);
    cached_ += bytes;
  }

  static inline std::atomic<bool> huge_{forced() == 1};
  std::mutex mu_;
  std::multimap<size_t, char *> pool_;
  size_t in_use_ = 0, cached_ = 0, peak_ = 0;  // large blocks only
};

}  // namespace

extern "C" {

// Makes the caching allocator libtorch's CPU allocator (above the default's priority 0).
void hondo_cpu_allocator_install() { c10::SetCPUAllocator(&CachingCpuAllocator::get(), 1); }

void hondo_cpu_allocator_stats(size_t *in_use, size_t *cached, size_t *peak) {
  CachingCpuAllocator::get().stats(in_use, cached, peak);
}

void hondo_cpu_allocator_empty_cache() { CachingCpuAllocator::get().empty_cache(); }

bool hondo_cpu_allocator_huge_pages() { return CachingCpuAllocator::huge_pages(); }

bool hondo_cpu_allocator_set_huge_pages(bool on) { return CachingCpuAllocator::set_huge_pages(on); }

int hondo_cpu_allocator_huge_pages_forced() { return CachingCpuAllocator::forced(); }

}  // extern "C"
