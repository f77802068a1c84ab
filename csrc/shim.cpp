// The few libtorch calls tch does not bind: fused optimizer kernels, foreach ops and the
// autocast state. Tensors arrive as tch passes them (`at::Tensor*`, see torch-sys'
// torch_api.cpp); errors come back as in guard.h.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <optional>
#include <vector>

#include "guard.h"

namespace {

std::vector<at::Tensor> list(at::Tensor **ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; i++) v.push_back(*ts[i]);
  return v;
}

// The fused CPU optimizer kernels walk param, grad and state as one flat array each, so
// they need the same strides in all of them, and they begin with a `grad.contiguous()` that
// copies every channels-last gradient and is never used. Handing them 1-D views of dense
// tensors skips that copy (ResNet-50 channels-last: ~25M floats a step). Autograd gives a
// gradient its parameter's strides and hondo creates state buffers like their parameter;
// a tensor whose strides differ anyway is passed as it is.
std::vector<std::vector<at::Tensor>> flat_per_param(std::vector<std::vector<at::Tensor>> lists) {
  auto &params = lists[0];
  for (size_t i = 0; i < params.size(); i++) {
    const auto &p = params[i];
    if (!p.is_cpu() || p.dim() <= 1 || !p.is_non_overlapping_and_dense()) continue;
    bool same = true;
    for (size_t l = 1; l < lists.size(); l++) same = same && lists[l][i].strides() == p.strides();
    if (!same) continue;
    for (auto &list : lists) {
      auto &t = list[i];
      t = t.as_strided({t.numel()}, {1}, t.storage_offset());
    }
  }
  return lists;
}

std::optional<at::Tensor> maybe(at::Tensor *t) {
  if (t == nullptr) return std::nullopt;
  return *t;
}

}  // namespace

extern "C" {

void hondo_free_error(char *e) { std::free(e); }

// torch.optim.SGD(fused=True): one kernel over all tensors of a group. `found_inf`
// (a float scalar, may be NULL) non-zero skips the update on the device. `steps` (float
// scalars, counted for checkpoints only) are incremented unless skipped.
char *hondo_fused_sgd(at::Tensor **params, at::Tensor **grads, at::Tensor **bufs,
                      at::Tensor **steps, size_t n, double weight_decay, double momentum,
                      double lr, int nesterov, int first_step, at::Tensor *found_inf) {
  GUARD({
    auto s = list(steps, n);
    auto lists = momentum != 0.0 ? flat_per_param({list(params, n), list(grads, n), list(bufs, n)})
                                 : flat_per_param({list(params, n), list(grads, n)});
    std::vector<at::Tensor> b = momentum != 0.0 ? lists[2] : std::vector<at::Tensor>{};
    at::_fused_sgd_(lists[0], lists[1], b, weight_decay, momentum, lr, 0.0, nesterov != 0, false,
                    first_step != 0, std::nullopt, maybe(found_inf));
    at::_foreach_add_(s, 1.0);
    if (found_inf) at::_foreach_add_(s, *found_inf, -1.0);
  })
}

// torch.optim.Adam/AdamW(fused=True), with torch.optim's step bookkeeping: steps are float
// scalars incremented here, and decremented again where `found_inf` skipped the update.
char *hondo_fused_adam(at::Tensor **params, at::Tensor **grads, at::Tensor **exp_avgs,
                       at::Tensor **exp_avg_sqs, at::Tensor **steps, size_t n, double lr,
                       double beta1, double beta2, double weight_decay, double eps,
                       int decoupled, at::Tensor *found_inf) {
  GUARD({
    auto lists = flat_per_param(
        {list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n)});
    auto &p = lists[0];
    auto &g = lists[1];
    auto &m = lists[2];
    auto &v = lists[3];
    auto s = list(steps, n);
    at::_foreach_add_(s, 1.0);
    if (decoupled) {
      at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false,
                        std::nullopt, maybe(found_inf));
    } else {
      at::_fused_adam_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false,
                       std::nullopt, maybe(found_inf));
    }
    if (found_inf) at::_foreach_add_(s, *found_inf, -1.0);
  })
}

// `dst[i] += weight * (src[i] - dst[i])` for all i (weight EMA).
char *hondo_foreach_lerp(at::Tensor **dst, at::Tensor **src, size_t n, double weight) {
  GUARD({
    auto d = list(dst, n);
    auto s = list(src, n);
    at::_foreach_lerp_(d, s, at::Scalar(weight));
  })
}

// optimizer.zero_grad(set_to_none=True): drops the gradients, so their memory is free
// through the next forward and backward writes the new gradient without an add.
char *hondo_set_grads_to_none(at::Tensor **params, size_t n) {
  GUARD({
    for (size_t i = 0; i < n; i++) params[i]->mutable_grad().reset();
  })
}

// Scales `grads` so that their global L2 norm is at most `max_norm`, without a host sync;
// writes the norm before clipping (a new tensor) to `*total`.
char *hondo_clip_grad_norm(at::Tensor **grads, size_t n, double max_norm, at::Tensor **total) {
  GUARD({
    auto g = list(grads, n);
    auto norms = at::_foreach_norm(g, 2);
    auto t = at::linalg_vector_norm(at::stack(norms), 2);
    auto coef = at::clamp_max(max_norm / (t + 1e-6), 1.0);
    at::_foreach_mul_(g, coef);
    *total = new at::Tensor(t);
  })
}

// GradScaler.unscale_: grads *= inv_scale, found_inf = 1 if any is NaN or infinite.
char *hondo_amp_unscale(at::Tensor **grads, size_t n, at::Tensor *found_inf,
                        at::Tensor *inv_scale) {
  GUARD({
    auto g = list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(g, *found_inf, *inv_scale);
  })
}

// torch.autocast.__enter__ for `device` (0 CPU, 1 CUDA) and `dtype` (a c10::ScalarType);
// the previous state goes to `prev` (enabled, dtype, cache enabled) for the exit.
char *hondo_autocast_enter(int device, int dtype, int *prev) {
  GUARD({
    at::DeviceType d = device == 1 ? at::kCUDA : at::kCPU;
    prev[0] = at::autocast::is_autocast_enabled(d);
    prev[1] = static_cast<int>(at::autocast::get_autocast_dtype(d));
    prev[2] = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_enabled(d, true);
    at::autocast::set_autocast_dtype(d, static_cast<at::ScalarType>(dtype));
    at::autocast::increment_nesting();
    at::autocast::set_autocast_cache_enabled(true);
  })
}

// torch.autocast.__exit__: restores what hondo_autocast_enter saved.
char *hondo_autocast_exit(int device, const int *prev) {
  GUARD({
    at::DeviceType d = device == 1 ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(d, prev[0] != 0);
    at::autocast::set_autocast_dtype(d, static_cast<at::ScalarType>(prev[1]));
    at::autocast::set_autocast_cache_enabled(prev[2] != 0);
  })
}

// Whether `t` is laid out channels-last (NHWC strides).
int hondo_is_channels_last(at::Tensor *t) {
  try {
    return t->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// Whether every element that `t`'s sizes, strides and storage offset address lies inside
// its storage (a tensor read from a crafted archive may claim otherwise; reading it would
// touch memory past the end).
int hondo_view_fits_storage(at::Tensor *t) {
  try {
    if (!t->defined() || !t->has_storage() || t->numel() == 0) return 1;
    int64_t last = t->storage_offset();
    if (last < 0) return 0;
    for (int64_t d = 0; d < t->dim(); ++d) {
      int64_t stride = t->stride(d), reach = 0;
      if (stride < 0) return 0;
      if (__builtin_mul_overflow(t->size(d) - 1, stride, &reach) ||
          __builtin_add_overflow(last, reach, &last)) {
        return 0;
      }
    }
    int64_t need = 0;
    if (__builtin_add_overflow(last, int64_t(1), &need) ||
        __builtin_mul_overflow(need, int64_t(t->element_size()), &need)) {
      return 0;
    }
    return uint64_t(need) <= uint64_t(t->storage().nbytes()) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

}  // extern "C"
