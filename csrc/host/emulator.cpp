// A SIMT emulator that runs the CUDA kernels of csrc/kernels on the host, for the tests
// (tests/ops/test_cuda_emulated.py). Build: g++ -std=c++17 -O2 -DBTOK_EMULATE -shared -fPIC.
//
// Each CUDA thread of a block is a fiber (its own stack; switched by a few instructions of
// assembly on x86-64, by ucontext elsewhere); blocks run one after the other. A fiber runs
// until it reaches a barrier or a warp collective (mma, ldmatrix, shuffle); the last of the
// 32 lanes to reach a collective computes it for the whole warp, and every lane reads its
// part. The launch itself goes through the same dispatchers (fwd.cuh, bwd.cuh) as the CUDA
// launch, so the tiles, grids and shared-memory sizes are the real ones.
#include "emulator.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../kernels/bwd.cuh"
#include "../kernels/fwd.cuh"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

btok::emu::Dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};

namespace btok {
namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;

// ---------------------------------------------------------------------------------------
// fibers
// ---------------------------------------------------------------------------------------
struct Fiber;
[[noreturn]] void fiber_main(Fiber* f);

#if defined(__x86_64__)
// switch_stack(&save, load): pushes the callee-saved registers, saves the stack pointer to
// *save, loads `load` and pops the registers saved there (System V x86-64 ABI).
extern "C" void btok_emu_switch_stack(void** save, void* load);
extern "C" void btok_emu_fiber_start();
asm(R"(
  .text
  .globl btok_emu_switch_stack
  .type btok_emu_switch_stack, @function
btok_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size btok_emu_switch_stack, .-btok_emu_switch_stack

  .globl btok_emu_fiber_start
  .type btok_emu_fiber_start, @function
btok_emu_fiber_start:
  movq %rbx, %rdi
  call btok_emu_fiber_entry
  ud2
  .size btok_emu_fiber_start, .-btok_emu_fiber_start
)");
#endif

struct PendingCopy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;
};

enum class FiberState { kRunnable, kWaiting, kDone, kAbandoned };

struct Fiber {
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  int tid = 0;
  FiberState state = FiberState::kRunnable;
  uint64_t collectives = 0;           // warp collectives this thread has joined
  std::vector<PendingCopy> pending;   // cp.async copies not landed yet (deferred mode)
  std::vector<size_t> group_ends;     // committed groups: end index into `pending`
};

struct Slot {  // one warp collective in flight
  int arrived = 0;
  int kind = -1;
  uint64_t seq = 0;
  uint32_t in[32][10];
  const uint16_t* ptr[32];
  uint32_t out[32][4];
};

struct Warp {
  Slot slot[2];  // collectives alternate slots: a lane reuses one only after all lanes left it
};

enum Kind { kShfl = 0, kLdmatrix = 1, kLdmatrixTrans = 2, kMmaF16 = 3, kMmaBF16 = 4 };
const char* kind_name(int k) {
  static const char* names[] = {"shfl", "ldmatrix", "ldmatrix.trans", "mma.f16", "mma.bf16"};
  return k >= 0 && k < 5 ? names[k] : "?";
}

struct Buffer {
  const char* lo;
  const char* hi;
  bool writable;
};

struct Emulator {
  // settings of the next launches
  bool deferred_copies = false;  // cp.async lands at cp.async.wait_group, not at issue
  bool shuffled = false;         // threads of a block run in a random order
  std::mt19937_64 rng{0};
  std::vector<Buffer> buffers;
  // the block being run
  std::function<void()> body;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<uint4> smem;  // 16-byte aligned
  size_t smem_bytes = 0;
  int threads = 0, alive = 0, barrier_arrived = 0;
  Fiber* current = nullptr;
#if defined(__x86_64__)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_ctx;
#endif
  std::string error;
};

Emulator g;

void to_scheduler() {
  Fiber* f = g.current;
#if defined(__x86_64__)
  btok_emu_switch_stack(&f->sp, g.scheduler_sp);
#else
  swapcontext(&f->ctx, &g.scheduler_ctx);
#endif
}

void run_fiber(Fiber& f) {
  g.current = &f;
  threadIdx = Dim3{static_cast<unsigned>(f.tid), 0, 0};
#if defined(__x86_64__)
  btok_emu_switch_stack(&g.scheduler_sp, f.sp);
#else
  swapcontext(&g.scheduler_ctx, &f.ctx);
#endif
}

[[noreturn]] void fail(const std::string& what) {
  if (g.error.empty()) {
    char where[96];
    std::snprintf(where, sizeof where, "block (%u, %u) thread %d: ", blockIdx.x, blockIdx.y, g.current ? g.current->tid : -1);
    g.error = where + what;
  }
  g.current->state = FiberState::kAbandoned;
  to_scheduler();
  __builtin_unreachable();  // an abandoned fiber is never resumed
}

void park() {
  g.current->state = FiberState::kWaiting;
  to_scheduler();
}

void init_fiber(Fiber& f, int tid) {
  f.tid = tid;
  f.state = FiberState::kRunnable;
  f.collectives = 0;
  f.pending.clear();
  f.group_ends.clear();
#if defined(__x86_64__)
  // the frame btok_emu_switch_stack pops: r15 r14 r13 r12 rbx(= the fiber) rbp, then the
  // return address; after the ret the stack pointer is 16-byte aligned, as at a call
  auto top = reinterpret_cast<uintptr_t>(f.stack.get() + kStackBytes) & ~uintptr_t{15};
  auto* frame = reinterpret_cast<void**>(top - 16 - 7 * sizeof(void*));
  for (int i = 0; i < 6; ++i) frame[i] = nullptr;
  frame[4] = &f;
  frame[6] = reinterpret_cast<void*>(&btok_emu_fiber_start);
  f.sp = frame;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.get();
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main), 1, &f);  // glibc passes a pointer-sized int
#endif
}

void land(const PendingCopy& c) {
  if (c.valid) std::memcpy(c.dst, c.src, c.bytes);
  else std::memset(c.dst, 0, c.bytes);
}

[[noreturn]] void fiber_main(Fiber* f) {
  g.body();
  if (!f->pending.empty()) fail("exits with cp.async copies it never waited for");
  f->state = FiberState::kDone;
  --g.alive;
  if (g.barrier_arrived > 0 && g.barrier_arrived == g.alive) {  // the others wait for this one no more
    g.barrier_arrived = 0;
    for (Fiber& other : g.fibers)
      if (other.state == FiberState::kWaiting) other.state = FiberState::kRunnable;
  }
  to_scheduler();
  __builtin_unreachable();
}

}  // namespace
}  // namespace emu
}  // namespace btok

extern "C" void btok_emu_fiber_entry(btok::emu::Fiber* f) { btok::emu::fiber_main(f); }

namespace btok {
namespace emu {
namespace {

// Runs one block to completion; false (and g.error) on a detected fault.
bool run_block(unsigned bx, unsigned by) {
  blockIdx = Dim3{bx, by, 0};
  for (int t = 0; t < g.threads; ++t) init_fiber(g.fibers[t], t);
  for (Warp& w : g.warps) w.slot[0].arrived = w.slot[1].arrived = 0;
  std::memset(g.smem.data(), 0xff, g.smem.size() * sizeof(uint4));  // NaN in every format
  g.alive = g.threads;
  g.barrier_arrived = 0;
  // Priority order: the first runnable thread in `order` always runs next, so a warp runs
  // ahead as far as the barriers let it, and the warps drift apart the most (a missing
  // barrier then shows as another warp's data changing under it). Shuffled: random warp
  // order and random lane order within each warp.
  std::vector<int> warps(g.threads / 32), order;
  for (size_t w = 0; w < warps.size(); ++w) warps[w] = static_cast<int>(w);
  if (g.shuffled) std::shuffle(warps.begin(), warps.end(), g.rng);
  for (int w : warps) {
    int lanes[32];
    for (int l = 0; l < 32; ++l) lanes[l] = 32 * w + l;
    if (g.shuffled) std::shuffle(lanes, lanes + 32, g.rng);
    order.insert(order.end(), lanes, lanes + 32);
  }
  while (g.error.empty()) {
    bool ran = false;
    for (int t : order) {
      Fiber& f = g.fibers[t];
      if (f.state != FiberState::kRunnable) continue;
      run_fiber(f);
      ran = true;
      break;
    }
    if (g.alive == 0) return g.error.empty();
    if (!ran && g.error.empty()) {
      int waiting = 0;
      for (const Fiber& f : g.fibers) waiting += f.state == FiberState::kWaiting;
      char msg[160];
      std::snprintf(msg, sizeof msg,
                    "block (%u, %u): deadlock: %d threads wait at a barrier or warp collective that the %d others "
                    "never reach",
                    bx, by, waiting, g.threads - waiting);
      g.error = msg;
    }
  }
  return false;
}

bool run_grid(const std::function<void()>& body, unsigned gx, unsigned gy, int threads, int smem_bytes) {
  if (threads % 32 != 0 || threads <= 0 || threads > 1024) {
    g.error = "launch with a block size that is not a multiple of 32 up to 1024";
    return false;
  }
  g.body = body;
  if (static_cast<int>(g.fibers.size()) < threads) g.fibers.resize(threads);
  g.threads = threads;
  g.warps.assign(threads / 32, Warp{});
  g.smem_bytes = static_cast<size_t>(smem_bytes);
  g.smem.assign((g.smem_bytes + 15) / 16 + 1, uint4{});
  for (unsigned y = 0; y < gy; ++y)
    for (unsigned x = 0; x < gx; ++x)
      if (!run_block(x, y)) return false;
  return true;
}

// The warp collective protocol: every lane posts its inputs; the last to arrive computes
// the outputs of all 32 lanes; each lane then reads its own.
template <typename Post, typename Compute>
Slot& collective(int kind, Post post, Compute compute) {
  Fiber& f = *g.current;
  const int lane = f.tid & 31;
  Slot& s = g.warps[f.tid >> 5].slot[f.collectives & 1];
  if (s.arrived == 0) {
    s.kind = kind;
    s.seq = f.collectives;
  } else if (s.kind != kind || s.seq != f.collectives) {
    fail(std::string("lanes of a warp diverge: ") + kind_name(kind) + " where others are at " + kind_name(s.kind));
  }
  post(s, lane);
  if (++s.arrived == 32) {
    compute(s);
    s.arrived = 0;
    const int first = (f.tid >> 5) * 32;
    for (int t = first; t < first + 32; ++t)
      if (g.fibers[t].state == FiberState::kWaiting) g.fibers[t].state = FiberState::kRunnable;
  } else {
    park();
  }
  ++f.collectives;
  return s;
}

void check_shared(const void* p, int bytes, int align, const char* what) {
  const char* lo = reinterpret_cast<const char*>(g.smem.data());
  const char* c = static_cast<const char*>(p);
  if (c < lo || c + bytes > lo + g.smem_bytes) fail(std::string(what) + ": address outside the block's shared memory");
  if (reinterpret_cast<uintptr_t>(c) % align) fail(std::string(what) + ": misaligned shared-memory address");
}

}  // namespace

void check_global(const void* p, int bytes, bool write) {
  const char* c = static_cast<const char*>(p);
  if (reinterpret_cast<uintptr_t>(c) % bytes) fail("misaligned global access");
  for (const Buffer& b : g.buffers)
    if (c >= b.lo && c + bytes <= b.hi) {
      if (write && !b.writable) fail("store into an input tensor");
      return;
    }
  fail(write ? "store outside every output tensor" : "load outside every tensor");
}

void mma(Elem e, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Slot& s = collective(
      e == Elem::kF16 ? kMmaF16 : kMmaBF16,
      [&](Slot& s, int lane) {
        for (int i = 0; i < 4; ++i) s.in[lane][i] = a[i];
        s.in[lane][4] = b0;
        s.in[lane][5] = b1;
        std::memcpy(&s.in[lane][6], d, 16);
      },
      [&](Slot& s) {
        auto cvt = [&](uint32_t w, int hi) {
          const uint16_t h = static_cast<uint16_t>(hi ? w >> 16 : w & 0xffffu);
          return e == Elem::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
        };
        float A[16][16], B[16][8], C[16][8];
        for (int lane = 0; lane < 32; ++lane) {
          const int r = lane >> 2, c = lane & 3;
          for (int h = 0; h < 2; ++h) {
            A[r][2 * c + h] = cvt(s.in[lane][0], h);
            A[r + 8][2 * c + h] = cvt(s.in[lane][1], h);
            A[r][2 * c + 8 + h] = cvt(s.in[lane][2], h);
            A[r + 8][2 * c + 8 + h] = cvt(s.in[lane][3], h);
            B[2 * c + h][r] = cvt(s.in[lane][4], h);
            B[2 * c + 8 + h][r] = cvt(s.in[lane][5], h);
          }
          float acc[4];
          std::memcpy(acc, &s.in[lane][6], 16);
          C[r][2 * c] = acc[0];
          C[r][2 * c + 1] = acc[1];
          C[r + 8][2 * c] = acc[2];
          C[r + 8][2 * c + 1] = acc[3];
        }
        for (int i = 0; i < 16; ++i)
          for (int j = 0; j < 8; ++j) {
            float sum = C[i][j];
            for (int k = 0; k < 16; ++k) sum += A[i][k] * B[k][j];
            C[i][j] = sum;
          }
        for (int lane = 0; lane < 32; ++lane) {
          const int r = lane >> 2, c = lane & 3;
          const float out[4] = {C[r][2 * c], C[r][2 * c + 1], C[r + 8][2 * c], C[r + 8][2 * c + 1]};
          std::memcpy(s.out[lane], out, 16);
        }
      });
  std::memcpy(d, s.out[g.current->tid & 31], 16);
}

void ldmatrix(uint32_t (&r)[4], const uint16_t* row, bool trans) {
  check_shared(row, 16, 16, "ldmatrix");
  Slot& s = collective(
      trans ? kLdmatrixTrans : kLdmatrix, [&](Slot& s, int lane) { s.ptr[lane] = row; },
      [&](Slot& s) {
        for (int lane = 0; lane < 32; ++lane) {
          const int gr = lane >> 2, c = lane & 3;
          for (int m = 0; m < 4; ++m) {
            uint16_t lo, hi;
            if (trans) {  // elements (2c, g) and (2c + 1, g) of matrix m
              lo = s.ptr[8 * m + 2 * c][gr];
              hi = s.ptr[8 * m + 2 * c + 1][gr];
            } else {  // elements (g, 2c) and (g, 2c + 1)
              lo = s.ptr[8 * m + gr][2 * c];
              hi = s.ptr[8 * m + gr][2 * c + 1];
            }
            s.out[lane][m] = lo | static_cast<uint32_t>(hi) << 16;
          }
        }
      });
  std::memcpy(r, s.out[g.current->tid & 31], 16);
}

float shfl_xor(float x, int lane_mask) {
  Slot& s = collective(
      kShfl, [&](Slot& s, int lane) { std::memcpy(&s.in[lane][0], &x, 4); },
      [&](Slot& s) {
        for (int lane = 0; lane < 32; ++lane) s.out[lane][0] = s.in[lane ^ lane_mask][0];
      });
  float y;
  std::memcpy(&y, &s.out[g.current->tid & 31][0], 4);
  return y;
}

uint16_t* dynamic_smem() { return reinterpret_cast<uint16_t*>(g.smem.data()); }

void cp_async(void* dst, const void* src, int bytes, bool valid) {
  check_shared(dst, bytes, bytes, "cp.async");
  if (valid) check_global(src, bytes, false);
  const PendingCopy c{dst, src, bytes, valid};
  if (g.deferred_copies) g.current->pending.push_back(c);
  else land(c);
}

void cp_async_commit() {
  Fiber& f = *g.current;
  f.group_ends.push_back(f.pending.size());
}

void cp_async_wait(int pending_groups) {
  Fiber& f = *g.current;
  const int groups = static_cast<int>(f.group_ends.size());
  if (groups <= pending_groups) return;
  const size_t done = f.group_ends[groups - pending_groups - 1];
  for (size_t i = 0; i < done; ++i) land(f.pending[i]);
  f.pending.erase(f.pending.begin(), f.pending.begin() + static_cast<std::ptrdiff_t>(done));
  f.group_ends.erase(f.group_ends.begin(), f.group_ends.begin() + (groups - pending_groups));
  for (size_t& end : f.group_ends) end -= done;
}

void block_sync() {
  if (++g.barrier_arrived == g.alive) {
    g.barrier_arrived = 0;
    for (Fiber& f : g.fibers)
      if (f.state == FiberState::kWaiting) f.state = FiberState::kRunnable;
  } else {
    park();
  }
}

namespace {

struct EmuRunner {
  using Status = int;
  Status ok() const { return 0; }
  Status invalid() const { return 1; }

  template <typename Params>
  Status launch(void (*kernel)(Params), Grid grid, int threads, int smem_bytes, const Params& p) {
    return run_grid([&] { kernel(p); }, grid.x, grid.y, threads, smem_bytes) ? 0 : 2;
  }
};

const char* finish(int status) {
  if (status == 1) g.error = "no kernel instance for this head dim";
  return g.error.empty() ? nullptr : g.error.c_str();
}

AttnParams attn(const void* q, const void* k, const void* v, const int64_t* strides, const int32_t* cu_seqlens,
                const int32_t* btok_start, const int32_t* target_start, int n_seqs, int total, int hq, int hkv, int d,
                float scale, int causal) {
  AttnParams a{};
  a.q = {q, strides[0], strides[1]};
  a.k = {k, strides[2], strides[3]};
  a.v = {v, strides[4], strides[5]};
  a.cu_seqlens = cu_seqlens;
  a.btok_start = btok_start;
  a.target_start = target_start;
  a.n_seqs = n_seqs;
  a.total = total;
  a.hq = hq;
  a.hkv = hkv;
  a.d = d;
  a.scale = scale;
  a.causal = causal != 0;
  return a;
}

}  // namespace
}  // namespace emu
}  // namespace btok

// ---------------------------------------------------------------------------------------
// C ABI for ctypes. Strides count elements; every output is contiguous. A launch returns
// NULL, or what went wrong.
// ---------------------------------------------------------------------------------------
extern "C" {

// mode bit 0: cp.async lands at the wait (else at issue); bit 1: threads run in a random
// order, seeded. Buffers: the memory the kernels may touch (outputs writable).
void btok_emu_configure(int mode, uint64_t seed) {
  using btok::emu::g;
  g.deferred_copies = mode & 1;
  g.shuffled = mode & 2;
  g.rng.seed(seed);
  g.buffers.clear();
  g.error.clear();
}

void btok_emu_add_buffer(const void* p, int64_t bytes, int writable) {
  const char* lo = static_cast<const char*>(p);
  btok::emu::g.buffers.push_back({lo, lo + bytes, writable != 0});
}

const char* btok_emu_fwd(const void* q, const void* k, const void* v, const int64_t* strides, const int32_t* cu_seqlens,
                         const int32_t* btok_start, const int32_t* target_start, int n_seqs, int total, int hq, int hkv,
                         int d, float scale, int causal, int bf16, void* out, float* lse) {
  using namespace btok;
  FwdParams p{};
  p.a = emu::attn(q, k, v, strides, cu_seqlens, btok_start, target_start, n_seqs, total, hq, hkv, d, scale, causal);
  p.out = {out, static_cast<int64_t>(hq) * d, d};
  p.lse = lse;
  p.lse_head = total;
  emu::EmuRunner run;
  return emu::finish(dispatch_fwd(p, bf16 ? DType::kBF16 : DType::kF16, run));
}

// strides: q, k, v (row, head), then out, dout (row, head)
const char* btok_emu_bwd(const void* dout, const void* q, const void* k, const void* v, const void* out,
                         const float* lse, const int64_t* strides, const int32_t* cu_seqlens, const int32_t* btok_start,
                         const int32_t* target_start, int n_seqs, int total, int hq, int hkv, int d, float scale,
                         int causal, int bf16, float* delta, void* dq, void* dk, void* dv) {
  using namespace btok;
  BwdParams p{};
  p.a = emu::attn(q, k, v, strides, cu_seqlens, btok_start, target_start, n_seqs, total, hq, hkv, d, scale, causal);
  p.out = {out, strides[6], strides[7]};
  p.dout = {dout, strides[8], strides[9]};
  p.lse = lse;
  p.lse_head = total;
  p.delta = delta;
  p.dq = {dq, static_cast<int64_t>(hq) * d, d};
  p.dk = {dk, static_cast<int64_t>(hkv) * d, d};
  p.dv = {dv, static_cast<int64_t>(hkv) * d, d};
  emu::EmuRunner run;
  return emu::finish(dispatch_bwd(p, bf16 ? DType::kBF16 : DType::kF16, run));
}

// the conversions, for the tests to compare with torch's
void btok_emu_convert(const float* x, int n, int bf16, uint16_t* bits, float* back) {
  using namespace btok::emu;
  for (int i = 0; i < n; ++i) {
    bits[i] = bf16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
    back[i] = bf16 ? bf16_to_f32(bits[i]) : f16_to_f32(bits[i]);
  }
}

}  // extern "C"
