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
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "guard.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Work below this many values per task is not worth a thread.
constexpr int64_t kGrain = 32768;
// Values per channel summed in float before the sum moves to a double: kBlock in a plane
// (NCHW), kRowBlock rows (channels-last).
constexpr int64_t kBlock = 512;
constexpr int64_t kRowBlock = 64;

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

// Calls `f(i, c)` for every element: flat offset i, channel c. Rows (channels-last) run the
// inner loop over channels, planes (NCHW) over one channel's contiguous values.
template <class F>
void each(const Shape &s, const F &f) {
  if (s.inner == 1) {
    at::parallel_for(0, s.outer, std::max<int64_t>(1, kGrain / s.C), [&](int64_t b, int64_t e) {
      const F f_ = f;  // captures in registers, not reloaded through a reference
      for (int64_t r = b; r < e; r++) {
        const int64_t base = r * s.C;
#pragma omp simd
        for (int64_t c = 0; c < s.C; c++) f_(base + c, c);
      }
    });
  } else {
    at::parallel_for(0, s.outer * s.C, std::max<int64_t>(1, kGrain / s.inner),
                     [&](int64_t b, int64_t e) {
                       const F f_ = f;
                       for (int64_t p = b; p < e; p++) {
                         const int64_t c = p % s.C, base = p * s.inner;
#pragma omp simd
                         for (int64_t i = 0; i < s.inner; i++) f_(base + i, c);
                       }
                     });
  }
}

// Per-channel sums of the two values `f(i, c)` returns (a std::pair of floats), in double:
// float within blocks of kBlock values, so the inner loops vectorise.
template <class F>
std::pair<std::vector<double>, std::vector<double>> sums(const Shape &s, const F &f) {
  const int64_t C = s.C;
  std::vector<double> s1(C, 0.0), s2(C, 0.0);
  if (s.inner == 1) {
    // Rows split into one chunk per thread, each with its own accumulators.
    const int64_t T = std::max<int64_t>(
        1, std::min<int64_t>(at::get_num_threads(), s.outer * C / kGrain + 1));
    std::vector<double> acc(2 * T * C, 0.0);
    at::parallel_for(0, T, 1, [&](int64_t b, int64_t e) {
      const F f_ = f;
      std::vector<float> block(2 * C);
      float *f1 = block.data(), *f2 = f1 + C;
      for (int64_t t = b; t < e; t++) {
        const int64_t r0 = s.outer * t / T, r1 = s.outer * (t + 1) / T;
        double *d1 = &acc[2 * t * C], *d2 = d1 + C;
        for (int64_t r = r0; r < r1; r += kRowBlock) {
          std::fill(block.begin(), block.end(), 0.0f);
          const int64_t end = std::min(r1, r + kRowBlock);
          for (int64_t row = r; row < end; row++) {
            const int64_t base = row * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
              const auto v = f_(base + c, c);
              f1[c] += v.first;
              f2[c] += v.second;
            }
          }
          for (int64_t c = 0; c < C; c++) {
            d1[c] += f1[c];
            d2[c] += f2[c];
          }
        }
      }
    });
    for (int64_t t = 0; t < T; t++)
      for (int64_t c = 0; c < C; c++) {
        s1[c] += acc[2 * t * C + c];
        s2[c] += acc[2 * t * C + C + c];
      }
  } else {
    at::parallel_for(0, C, std::max<int64_t>(1, kGrain / s.per_channel()),
                     [&](int64_t b, int64_t e) {
                       const F f_ = f;
                       for (int64_t c = b; c < e; c++) {
                         double d1 = 0.0, d2 = 0.0;
                         for (int64_t o = 0; o < s.outer; o++) {
                           const int64_t base = (o * C + c) * s.inner;
                           for (int64_t i0 = 0; i0 < s.inner; i0 += kBlock) {
                             const int64_t i1 = std::min(s.inner, i0 + kBlock);
                             float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
                             for (int64_t i = i0; i < i1; i++) {
                               const auto v = f_(base + i, c);
                               a1 += v.first;
                               a2 += v.second;
                             }
                             d1 += a1;
                             d2 += a2;
                           }
                         }
                         s1[c] = d1;
                         s2[c] = d2;
                       }
                     });
  }
  return {std::move(s1), std::move(s2)};
}

// Activations are float32, or bfloat16 under CPU autocast (the parameters and statistics stay
// float32, as in libtorch's mixed-type BatchNorm). bfloat16 values are read and written as
// their bits, so that the loops vectorise; the arithmetic is float32 throughout.
inline float load(const float *p, int64_t i) { return p[i]; }
inline float load(const uint16_t *p, int64_t i) {
  const uint32_t u = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline void store(float *p, int64_t i, float v) { p[i] = v; }
// Round to nearest even, NaN kept a (quiet) NaN: c10::BFloat16's conversion.
inline void store(uint16_t *p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  p[i] = static_cast<uint16_t>(v != v ? 0x7FC0u : rounded);
}

template <class T>
const T *data(const at::Tensor &t) {
  return static_cast<const T *>(t.const_data_ptr());
}
const float *floats(const at::Tensor &t) { return data<float>(t); }
template <class T>
T *mutable_data(at::Tensor &t) {
  return static_cast<T *>(t.mutable_data_ptr());
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

// Batch statistics, running-statistics update and the output. Returns `coef` =
// [mean, invstd, scale, shift] (float32, one row of C each).
template <class T>
at::Tensor forward_impl(const Shape &s, const at::Tensor &input, const at::Tensor &weight,
                        const at::Tensor &bias, const at::Tensor *residual,
                        at::Tensor &running_mean, at::Tensor &running_var, double momentum,
                        double eps, at::Tensor &out) {
  const int64_t C = s.C, M = s.per_channel();
  // Statistics, shifted by one sample per channel so that a large mean costs no precision.
  const T *x = data<T>(input);
  std::vector<float> shift(C);
  for (int64_t c = 0; c < C; c++) shift[c] = load(x, c * s.inner);
  const float *k = shift.data();
  auto [sum, sq] = sums(s, [x, k](int64_t i, int64_t c) {
    const float d = load(x, i) - k[c];
    return std::make_pair(d, d * d);
  });

  auto coef = at::empty({4, C}, weight.options());
  float *mean = coef.data_ptr<float>(), *invstd = mean + C, *scale = mean + 2 * C,
        *offset = mean + 3 * C;
  const float *w = floats(weight), *b = floats(bias);
  float *rm = running_mean.data_ptr<float>(), *rv = running_var.data_ptr<float>();
  for (int64_t c = 0; c < C; c++) {
    const double d = sum[c] / M, mu = shift[c] + d;
    const double var = std::max(sq[c] / M - d * d, 0.0);
    const double is = 1.0 / std::sqrt(var + eps);
    mean[c] = static_cast<float>(mu);
    invstd[c] = static_cast<float>(is);
    scale[c] = static_cast<float>(w[c] * is);
    offset[c] = static_cast<float>(b[c] - mu * w[c] * is);
    rm[c] = static_cast<float>((1.0 - momentum) * rm[c] + momentum * mu);
    rv[c] = static_cast<float>((1.0 - momentum) * rv[c] +
                               momentum * var * static_cast<double>(M) / (M - 1));
  }

  out = empty_like_layout(input, s);
  T *y = mutable_data<T>(out);
  const float *a = scale, *o = offset;
  if (residual) {
    const T *rp = data<T>(*residual);
    each(s, [=](int64_t i, int64_t c) {
      const float v = load(x, i) * a[c] + o[c] + load(rp, i);
      store(y, i, v < 0.0f ? 0.0f : v);
    });
  } else {
    each(s, [=](int64_t i, int64_t c) {
      const float v = load(x, i) * a[c] + o[c];
      store(y, i, v < 0.0f ? 0.0f : v);
    });
  }
  return coef;
}

// Gradients of input, weight, bias and residual (undefined without one). `saved` is the
// output with a residual, else the bias (the mask is then recomputed from the input).
template <class T>
variable_list backward_impl(const Shape &s, at::Tensor dout, const at::Tensor &input,
                            const at::Tensor &weight, const at::Tensor &saved,
                            const at::Tensor &coef, bool has_residual) {
  const int64_t C = s.C, M = s.per_channel();
  // A gradient nothing else holds is overwritten elementwise (by the residual gradient, or
  // else by the input gradient) instead of allocating another activation-sized buffer:
  // libtorch's unfused ops hold at most two such buffers at once, and so does this.
  const bool reuse = dout.use_count() == 1 && dout.storage().use_count() == 1;
  const T *dy = data<T>(dout), *x = data<T>(input);
  const float *mean = floats(coef), *a = mean + 2 * C, *o = mean + 3 * C;
  const float *invstd = mean + C;

  // The gradient behind the ReLU: into the residual as it is, and into BatchNorm.
  at::Tensor dres;
  std::pair<std::vector<double>, std::vector<double>> sg;
  if (has_residual) {
    const T *y = data<T>(saved);
    dres = reuse ? dout : empty_like_layout(input, s);
    T *g = mutable_data<T>(dres);
    sg = sums(s, [=](int64_t i, int64_t c) {
      const float d = load(dy, i);  // loaded unconditionally, so the loop vectorises
      const float gi = load(y, i) <= 0.0f ? 0.0f : d;
      store(g, i, gi);
      return std::make_pair(gi, gi * (load(x, i) - mean[c]));
    });
  } else {
    sg = sums(s, [=](int64_t i, int64_t c) {
      const float d = load(dy, i), xi = load(x, i);
      const float gi = xi * a[c] + o[c] <= 0.0f ? 0.0f : d;
      return std::make_pair(gi, gi * (xi - mean[c]));
    });
  }

  // dbias = sum(g), dweight = sum(g * xhat); dx = k1 * g + k2 * (x - mean) + k3.
  auto dweight = at::empty({C}, weight.options());
  auto dbias = at::empty({C}, weight.options());
  auto k = at::empty({3, C}, weight.options());
  float *dw = dweight.data_ptr<float>(), *db = dbias.data_ptr<float>();
  float *k1 = k.data_ptr<float>(), *k2 = k1 + C, *k3 = k1 + 2 * C;
  const float *w = floats(weight);
  for (int64_t c = 0; c < C; c++) {
    const double is = invstd[c], gsum = sg.first[c], gxhat = sg.second[c] * is;
    dw[c] = static_cast<float>(gxhat);
    db[c] = static_cast<float>(gsum);
    const double scale = w[c] * is;
    k1[c] = static_cast<float>(scale);
    k2[c] = static_cast<float>(-scale * is * gxhat / M);
    k3[c] = static_cast<float>(-scale * gsum / M);
  }
  if (has_residual) dout.reset();  // read through `dres` from here on
  auto dinput = reuse && !has_residual ? dout : empty_like_layout(input, s);
  T *dx = mutable_data<T>(dinput);
  const float *q1 = k1, *q2 = k2, *q3 = k3;
  if (has_residual) {
    const T *g = data<T>(dres);
    each(s, [=](int64_t i, int64_t c) {
      store(dx, i, load(g, i) * q1[c] + (load(x, i) - mean[c]) * q2[c] + q3[c]);
    });
  } else {
    each(s, [=](int64_t i, int64_t c) {
      const float d = load(dy, i), xi = load(x, i);
      const float gi = xi * a[c] + o[c] <= 0.0f ? 0.0f : d;
      store(dx, i, gi * q1[c] + (xi - mean[c]) * q2[c] + q3[c]);
    });
  }
  return {dinput, dweight, dbias, dres, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
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
            ? forward_impl<uint16_t>(s, input, weight, bias, rp, running_mean, running_var,
                                     momentum, eps, out)
            : forward_impl<float>(s, input, weight, bias, rp, running_mean, running_var,
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
               ? backward_impl<uint16_t>(s, std::move(dout), input, saved[1], saved[2],
                                         saved[3], has_residual)
               : backward_impl<float>(s, std::move(dout), input, saved[1], saved[2], saved[3],
                                      has_residual);
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

}  // extern "C"
