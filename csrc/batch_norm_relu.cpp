// BatchNorm in training mode (batch statistics) fused with the ReLU after it, and with the
// residual add before that ReLU where there is one (ResNet's `relu(bn(x) + identity)`): one
// autograd function with its own CPU kernels, for float32 or bfloat16 (autocast) activations
// in NCHW or channels-last.
//
// libtorch runs these as up to four ops, each a pass over the activation in memory:
// statistics, normalise, `add_`, `relu_`; and in backward `threshold_backward` before the
// BatchNorm backward's two passes. Here the forward is two passes (statistics; normalise,
// add and clamp) and the backward two (sums; input gradient). Without a residual, the
// backward recomputes the ReLU mask from the input instead of reading the output.
//
// The maths is BatchNorm's: y = relu(w * (x - mean) * invstd + b [+ r]), biased variance for
// the normalisation, unbiased for `running_var`, both running buffers updated in place with
// `momentum` as torch.nn.BatchNorm2d does.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "guard.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A 4-D tensor as `outer` x C x `inner` values: NCHW is N x C x HW, channels-last NHW x C x 1.
struct Shape {
  int64_t outer, C, inner;
  at::MemoryFormat format;
  int64_t per_channel() const { return outer * inner; }
};

Shape shape_of(const at::Tensor &x) {
  TORCH_CHECK(x.dim() == 4, "batch_norm_relu: expected a 4-D input, got ", x.dim(), "-D");
  TORCH_CHECK(x.is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "batch_norm_relu: expected a float32 or bfloat16 CPU tensor, got ", x.toString());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.is_contiguous()) return {N, C, HW, at::MemoryFormat::Contiguous};
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "batch_norm_relu: the input is neither NCHW nor channels-last contiguous");
  return {N * HW, C, 1, at::MemoryFormat::ChannelsLast};
}

void check_channel_vector(const at::Tensor &t, const char *name, int64_t C) {
  TORCH_CHECK(t.is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == C &&
                  t.is_contiguous(),
              "batch_norm_relu: `", name, "` must be a contiguous float32 CPU vector of ", C,
              " values, got ", t.toString(), " ", t.sizes());
}

at::Tensor empty_like_layout(const at::Tensor &t, const Shape &s) {
  return at::empty(t.sizes(), t.options().memory_format(s.format));
}

// The kernels, compiled three times: for any x86-64 CPU (SSE2), for AVX2 and for AVX-512.
// Only the functions defined in the .inc get the wider instruction set; ATen's and the
// standard library's inline functions keep the build's baseline, so no copy of them that
// needs AVX-512 can be picked up by code that runs on a CPU without it.
namespace isa_default {
#include "batch_norm_relu_kernels.inc"
}  // namespace isa_default
#pragma GCC push_options
#pragma GCC target("avx2")
namespace isa_avx2 {
#include "batch_norm_relu_kernels.inc"
}  // namespace isa_avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
namespace isa_avx512 {
#include "batch_norm_relu_kernels.inc"
}  // namespace isa_avx512
#pragma GCC pop_options

// One instruction set for the process, chosen once: the widest the CPU has, or a narrower
// one named by HONDO_FUSED_BN_ISA (`sse2`, `avx2`, `avx512`: for benchmarks and tests; a
// wider one than the CPU has, or another value, is ignored). The forward and the backward
// always run the same compilation, so the backward's recomputed ReLU mask matches.
enum class Isa { Sse2 = 0, Avx2 = 1, Avx512 = 2 };

Isa isa() {
  static const Isa chosen = [] {
    __builtin_cpu_init();
    Isa best = Isa::Sse2;
    if (__builtin_cpu_supports("avx2")) best = Isa::Avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      best = Isa::Avx512;
    const char *env = std::getenv("HONDO_FUSED_BN_ISA");
    if (!env) return best;
    const std::string want(env);
    const Isa asked = want == "sse2" ? Isa::Sse2 : want == "avx2" ? Isa::Avx2
                      : want == "avx512" ? Isa::Avx512 : best;
    return static_cast<int>(asked) <= static_cast<int>(best) ? asked : best;
  }();
  return chosen;
}

const char *isa_name(Isa i) {
  return i == Isa::Avx512 ? "avx512" : i == Isa::Avx2 ? "avx2" : "sse2";
}

// The forward and the backward of one compilation, for activations of type T.
template <class T>
struct Kernels {
  decltype(&isa_default::forward_impl<T>) forward;
  decltype(&isa_default::backward_impl<T>) backward;
};

template <class T>
Kernels<T> kernels() {
  switch (isa()) {
    case Isa::Avx512:
      return {isa_avx512::forward_impl<T>, isa_avx512::backward_impl<T>};
    case Isa::Avx2:
      return {isa_avx2::forward_impl<T>, isa_avx2::backward_impl<T>};
    default:
      return {isa_default::forward_impl<T>, isa_default::backward_impl<T>};
  }
}

struct BatchNormRelu : public torch::autograd::Function<BatchNormRelu> {
  // Saved: x, weight, then bias (no residual: the mask is recomputed from x) or the output
  // (residual: the mask is the output's sign), and `coef` = [mean, invstd, scale, shift].
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &input,
                            const at::Tensor &weight, const at::Tensor &bias,
                            const std::optional<at::Tensor> &residual, at::Tensor running_mean,
                            at::Tensor running_var, double momentum, double eps) {
    const Shape s = shape_of(input);
    const int64_t C = s.C;
    TORCH_CHECK(s.per_channel() > 1,
                "batch_norm_relu: expected more than 1 value per channel when training");
    check_channel_vector(weight, "weight", C);
    check_channel_vector(bias, "bias", C);
    check_channel_vector(running_mean, "running_mean", C);
    check_channel_vector(running_var, "running_var", C);
    const bool has_residual = residual.has_value() && residual->defined();
    at::Tensor r;
    if (has_residual) {
      TORCH_CHECK(residual->sizes() == input.sizes() &&
                      residual->scalar_type() == input.scalar_type() && residual->is_cpu(),
                  "batch_norm_relu: the residual must match the input's shape and dtype");
      r = residual->contiguous(s.format);
    }
    at::Tensor out;
    const at::Tensor *rp = has_residual ? &r : nullptr;
    const auto coef =
        input.scalar_type() == at::kBFloat16
            ? kernels<uint16_t>().forward(s, input, weight, bias, rp, running_mean,
                                          running_var, momentum, eps, out)
            : kernels<float>().forward(s, input, weight, bias, rp, running_mean, running_var,
                                       momentum, eps, out);
    ctx->save_for_backward({input, weight, has_residual ? out : bias, coef});
    ctx->saved_data["residual"] = has_residual;
    return out;
  }

  // `grads` by reference: the engine hands over its only reference, which can then move out.
  static variable_list backward(AutogradContext *ctx, variable_list &grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0];
    const bool has_residual = ctx->saved_data["residual"].toBool();
    const Shape s = shape_of(input);
    at::Tensor dout = std::move(grads[0]);
    if (dout.scalar_type() != input.scalar_type()) dout = dout.to(input.scalar_type());
    if (!dout.is_contiguous(s.format)) dout = dout.contiguous(s.format);
    return input.scalar_type() == at::kBFloat16
               ? kernels<uint16_t>().backward(s, std::move(dout), input, saved[1], saved[2],
                                              saved[3], has_residual)
               : kernels<float>().backward(s, std::move(dout), input, saved[1], saved[2],
                                           saved[3], has_residual);
  }
};

}  // namespace

extern "C" {

// `relu(batch_norm(input) [+ residual])` in training mode, differentiable; updates the running
// statistics in place. `residual` may be NULL. The result goes to `*out` (a new tensor).
char *hondo_batch_norm_relu(at::Tensor *input, at::Tensor *weight, at::Tensor *bias,
                            at::Tensor *residual, at::Tensor *running_mean,
                            at::Tensor *running_var, double momentum, double eps,
                            at::Tensor **out) {
  GUARD({
    std::optional<at::Tensor> r;
    if (residual) r = *residual;
    auto y = BatchNormRelu::apply(*input, *weight, *bias, r, *running_mean, *running_var,
                                  momentum, eps);
    *out = new at::Tensor(std::move(y));
  })
}

// The instruction set the fused kernels run with in this process: "avx512", "avx2" or
// "sse2" (static storage).
const char *hondo_fused_bn_isa() { return isa_name(isa()); }

}  // extern "C"
