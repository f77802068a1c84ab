// Data parallelism on libtorch's own engine: c10d's TCPStore rendezvous, ProcessGroupGloo,
// and DDP's C++ Reducer (bucketed gradient all-reduce during backward). Compiled against
// the wheel's c10d headers and Debian's gloo headers (scripts/setup.sh), never linking
// gloo: libtorch_cpu holds it, and c10d holds every gloo object by pointer. Every function
// catches C++ exceptions and returns them as messages (guard.h).

#include "guard.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#include <torch/csrc/autograd/custom_function.h>

#include <chrono>
#include <string>
#include <vector>

struct HondoGroup {
  // The TCPStore itself (keys that outlive a restarted attempt) and its prefixed view.
  c10::intrusive_ptr<c10d::Store> root;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};

// (A name without a comma: GUARD's argument is a macro argument.)
using ParamNames = std::unordered_map<size_t, std::string>;

struct HondoReducer {
  std::shared_ptr<c10d::Reducer> reducer;
};

static std::chrono::milliseconds ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

static std::vector<at::Tensor> list(at::Tensor **t, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*t[i]);
  return out;
}

extern "C" {

// Joins the group: a TCPStore at host:port (the server when `is_server`, which waits for
// `world` clients unless `wait_workers` is 0), under the key prefix `prefix`, and a Gloo
// process group on the interface `ifname` (empty: this host's default device, as PyTorch
// without GLOO_SOCKET_IFNAME). `timeout_s` bounds the rendezvous and every collective.
char *hondo_dist_init(const char *host, int port, int rank, int world, int is_server,
                      int wait_workers, double timeout_s, const char *prefix,
                      const char *ifname, HondoGroup **out) {
  GUARD({
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = is_server != 0;
    o.numWorkers = world;
    o.waitWorkers = wait_workers != 0;
    o.timeout = ms(timeout_s);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto opts = c10d::ProcessGroupGloo::Options::create(ms(timeout_s));
    std::string iface(ifname);
    opts->devices.push_back(iface.empty()
                                ? c10d::ProcessGroupGloo::createDefaultDevice()
                                : c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, backend);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    auto *group = new HondoGroup();
    group->root = tcp;
    group->store = store;
    group->pg = pg;
    *out = group;
  })
}

void hondo_dist_free(HondoGroup *g) { delete g; }

// Rank `root`'s values of `tensors` into every rank's, in place (DDP's start-up sync).
char *hondo_dist_broadcast(HondoGroup *g, at::Tensor **tensors, size_t n, int root) {
  GUARD({
    // In place into parameters that require grad: not an operation autograd records.
    at::NoGradGuard no_grad;
    auto t = list(tensors, n);
    c10d::broadcast_coalesced(g->pg, t, 256 * 1024 * 1024, root);
  })
}

// Sums `tensor` over the ranks, in place (`op` 0: sum, 1: max), and waits.
char *hondo_dist_allreduce(HondoGroup *g, at::Tensor *tensor, int op) {
  GUARD({
    std::vector<at::Tensor> t{*tensor};
    c10d::AllreduceOptions o;
    o.reduceOp = op == 1 ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    g->pg->allreduce(t, o)->wait();
  })
}

// Waits until every rank has arrived.
char *hondo_dist_barrier(HondoGroup *g) {
  GUARD({ g->pg->barrier()->wait(); })
}

// A sum over the ranks that autograd differentiates: the gradient of each rank's input is
// the sum of the ranks' output gradients (SyncBatchNorm's statistics).
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, at::Tensor x,
                            int64_t group) {
    ctx->saved_data["group"] = group;
    return sum_over_ranks(reinterpret_cast<HondoGroup *>(group), x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto *g = reinterpret_cast<HondoGroup *>(ctx->saved_data["group"].toInt());
    return {sum_over_ranks(g, grads[0]), at::Tensor()};
  }
  static at::Tensor sum_over_ranks(HondoGroup *g, const at::Tensor &x) {
    std::vector<at::Tensor> t{x.detach().clone(at::MemoryFormat::Contiguous)};
    g->pg->allreduce(t)->wait();
    return t[0];
  }
};

// `*out` = the sum of `input` over the ranks, differentiable (see AllReduceSum).
char *hondo_dist_allreduce_autograd(HondoGroup *g, at::Tensor *input, at::Tensor **out) {
  GUARD({
    auto r = AllReduceSum::apply(*input, reinterpret_cast<int64_t>(g));
    *out = new at::Tensor(r);
  })
}

// Sets `key` in the store itself (no attempt prefix) to `n` bytes of `value`.
char *hondo_dist_store_set(HondoGroup *g, const char *key, const uint8_t *value, size_t n) {
  GUARD({ g->root->set(std::string(key), std::vector<uint8_t>(value, value + n)); })
}

// `key`'s value in the store itself: `*found` 0 when it is not set (nothing waits for it);
// else the bytes in `*out` (malloc'ed: free with hondo_free_error) and their count in `*n`.
char *hondo_dist_store_get(HondoGroup *g, const char *key, int *found, char **out,
                           size_t *n) {
  GUARD({
    std::string k(key);
    *found = 0;
    if (!g->root->check({k})) return nullptr;
    auto v = g->root->get(k);
    char *buf = static_cast<char *>(std::malloc(v.size() + 1));
    if (!buf) throw std::bad_alloc();
    std::memcpy(buf, v.data(), v.size());
    *out = buf;
    *n = v.size();
    *found = 1;
  })
}

// DDP's Reducer over `params` (those that receive gradients), buckets of `bucket_mib`
// (the first one 1 MiB) assigned in reverse order, as torch.nn.parallel.DDP does.
char *hondo_reducer_new(HondoGroup *g, at::Tensor **params, size_t n, double bucket_mib,
                        HondoReducer **out) {
  GUARD({
    auto p = list(params, n);
    // Gradients arrive last layer first: assign buckets over the reversed list.
    std::vector<at::Tensor> reversed(p.rbegin(), p.rend());
    const size_t cap = static_cast<size_t>(bucket_mib * 1024 * 1024);
    std::vector<size_t> limits;
    limits.push_back(1024 * 1024);
    limits.push_back(cap);
    auto assigned = c10d::compute_bucket_assignment_by_size(reversed, limits);
    std::vector<std::vector<size_t>> buckets = std::get<0>(assigned);
    for (auto &b : buckets)
      for (auto &i : b) i = n - 1 - i;
    std::vector<int64_t> caps(std::get<1>(assigned).begin(), std::get<1>(assigned).end());
    auto r = std::make_shared<c10d::Reducer>(
        p, buckets, g->pg, std::vector<bool>(n, false), static_cast<int64_t>(cap),
        /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/false,
        ParamNames(), /*first_bucket_bytes_cap=*/1024 * 1024,
        /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false, caps);
    auto *reducer = new HondoReducer();
    reducer->reducer = r;
    *out = reducer;
  })
}

void hondo_reducer_free(HondoReducer *r) { delete r; }

// Before a forward pass whose backward should all-reduce (not for accumulation-only steps).
char *hondo_reducer_prepare(HondoReducer *r) {
  GUARD({
    r->reducer->prepare_for_forward();
    r->reducer->prepare_for_backward({});
  })
}

// After the first synchronised backward: buckets re-formed in the order gradients arrived.
char *hondo_reducer_rebuild(HondoReducer *r, int *rebuilt) {
  GUARD({ *rebuilt = r->reducer->rebuild_buckets() ? 1 : 0; })
}

// Nanoseconds of the last backward spent waiting on communication (the Reducer's own
// timers: [forward compute, backward compute, comm, compute overlapped with comm]).
char *hondo_reducer_stats(HondoReducer *r, int64_t *stats, size_t n) {
  GUARD({
    auto s = r->reducer->get_backward_stats();
    for (size_t i = 0; i < n && i < s.size(); ++i) stats[i] = s[i];
  })
}

}  // extern "C"
