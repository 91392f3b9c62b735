// Backward of the rasterizer's front-to-back compositing: the per-(pixel, Gaussian) arithmetic,
// written once for the CPU driver (composite_backward_cpu.cc) and the CUDA kernel
// (composite_backward_cuda.cu).
//
// It reproduces zerohsi_jax.splat.composite.composite_backward (up to rounding):
//   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,   d = pixel - mean
//   alpha = min(alpha_max, o exp(-sigma)); a slot is skipped when sigma < 0 or alpha < alpha_min
//   only slots before the pixel's stop index contribute;
//   walking back to front from the final transmittance, T_j = T_{j+1} / (1 - alpha_j);
//   dL/dalpha_j = (g.f_j) T_j - (g.behind_j) / (1 - alpha_j), where behind_j is what the
//   later slots and the background add to the pixel;
//   the clamp alpha = alpha_max passes no gradient to the opacity or sigma.
//
// The per-pixel functions are templates over the pixel type `V`: a scalar (`Real`, one pixel: the
// CUDA kernel, one thread per pixel) or, on the host, a GCC vector of pixels (the CPU driver
// steps a pack of pixels through a slot at once). Per-slot values are scalars `Real` either way;
// a mask says which pixels the slot counts for (a bool for a scalar, a lane mask for a vector).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ZHSI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ZHSI_HOST_DEVICE inline
#endif

namespace zerohsi {

// Gradients per Gaussian, in this order, in every scratch and accumulation buffer: mean x, y;
// conic a, b, c; opacity; then the C feature channels.
constexpr int kGeomGrads = 6;

// ---- Lane helpers: the scalar versions, then (host only) the vector ones. ----

ZHSI_HOST_DEVICE bool any_lane(bool mask) { return mask; }

ZHSI_HOST_DEVICE double exp_of(double x) { return exp(x); }
ZHSI_HOST_DEVICE float exp_of(float x) {
#if defined(__CUDA_ARCH__)
  // Not the fast __expf: slot decisions at alpha_min should match XLA's exp closely.
  return expf(x);
#else
  return std::exp(x);
#endif
}

#if !defined(__CUDACC__)
constexpr int kLanes = 8;
typedef float FloatLanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t FloatMask __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef double DoubleLanes __attribute__((vector_size(kLanes * sizeof(double))));
typedef int64_t DoubleMask __attribute__((vector_size(kLanes * sizeof(int64_t))));

inline bool any_lane(FloatMask mask) {
  int32_t any = 0;
  for (int l = 0; l < kLanes; ++l) any |= mask[l];
  return any != 0;
}
inline bool any_lane(DoubleMask mask) {
  int64_t any = 0;
  for (int l = 0; l < kLanes; ++l) any |= mask[l];
  return any != 0;
}

// exp for x <= 0 (sigma >= 0 is all that is ever exponentiated) to within a few ulp, branch free:
// x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor series to r^7 (truncation < 1e-8),
// times 2^n assembled in the exponent bits. Inputs below -87 give ~1e-38 instead of a denormal.
inline FloatLanes exp_of(FloatLanes x) {
  x = x < -87.0f ? FloatLanes{} - 87.0f : x;
  x = x > 0.0f ? FloatLanes{} : x;
  const float round_shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const FloatLanes n = (x * 1.44269504088896341f + round_shift) - round_shift;
  const FloatLanes r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 split in two parts
  FloatLanes p = FloatLanes{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const FloatMask bits = (__builtin_convertvector(n, FloatMask) + 127) << 23;
  return p * reinterpret_cast<const FloatLanes&>(bits);
}

inline DoubleLanes exp_of(DoubleLanes x) {
  DoubleLanes out;
  for (int l = 0; l < kLanes; ++l) out[l] = std::exp(x[l]);
  return out;
}

template <typename V>
inline auto lane_sum(V v) {
  auto total = v[0];
  for (int l = 1; l < kLanes; ++l) total += v[l];
  return total;
}
#endif

// ---- Per-slot preparation (scalars) ----

// A sigma beyond which opacity exp(-sigma) is certainly below alpha_min. The margin keeps the
// exact test in `evaluate_alpha` in charge of every borderline slot, so the shortcut never
// changes which slots count.
template <typename Real>
ZHSI_HOST_DEVICE Real sigma_cutoff_for(Real opacity, Real alpha_min) {
  if (!(opacity > Real(0))) return Real(-1);  // never contributes
  const double cutoff = log(double(opacity) / double(alpha_min));
  return Real(cutoff + 1e-3 * (fabs(cutoff) + 1.0));
}

// Half extents, around the mean, of a box outside of which the slot cannot pass alpha_min:
// the ellipse sigma <= cutoff, i.e. d^T Q d <= 2 cutoff with Q = [[a, b], [b, c]], spans
// sqrt(2 cutoff (Q^-1)_xx) by sqrt(2 cutoff (Q^-1)_yy). The cutoff is inflated well past the
// rounding error of sigma in `Real` (which grows with the conic's condition number; too
// elongated conics get no box), so a pixel outside the box always has a computed sigma above
// the cutoff: the box only skips work that `evaluate_alpha` would skip. Returns false when the
// slot contributes nowhere.
template <typename Real>
ZHSI_HOST_DEVICE bool contour_half_extents(Real conic_a, Real conic_b, Real conic_c, Real sigma_cutoff,
                                           Real& half_x, Real& half_y) {
  if (!(sigma_cutoff >= Real(0))) return false;
  const double a = conic_a, b = conic_b, c = conic_c;
  const double det = a * c - b * b;
  if (!(a > 0) || !(c > 0) || !(det > 1e-2 * a * c)) {
    half_x = half_y = Real(INFINITY);
    return true;
  }
  const double bound = 2.0 * (double(sigma_cutoff) * 1.01 + 0.01);
  half_x = Real(sqrt(bound * c / det) + 0.01);
  half_y = Real(sqrt(bound * a / det) + 0.01);
  return true;
}

// ---- Per-pixel arithmetic (V: one pixel or a pack of pixels) ----

template <typename Real>
struct CompositeConstants {
  Real alpha_max;
  Real alpha_min;
};

// One Gaussian as seen from the pixel(s).
template <typename V>
struct SlotAlpha {
  V dx, dy;    // pixel - mean
  V exp_neg;   // exp(-sigma)
  V vis;       // opacity exp(-sigma), before the clamp
  V alpha;     // min(alpha_max, vis)
};

// Which of the `active` pixels the slot counts for (sigma >= 0 and alpha >= alpha_min), and its
// alpha there. When no pixel is left the fields of `s` are not set. `sigma_cutoff` lets the
// exponential be skipped for pixels far outside the alpha_min contour.
template <typename V, typename Real, typename Mask>
ZHSI_HOST_DEVICE Mask evaluate_alpha(Mask active, V px, V py, Real mean_x, Real mean_y, Real conic_a, Real conic_b,
                                     Real conic_c, Real opacity, Real sigma_cutoff,
                                     const CompositeConstants<Real>& k, SlotAlpha<V>& s) {
  s.dx = px - mean_x;
  s.dy = py - mean_y;
  // Same association as the JAX code so that both round alike.
  const V sigma = Real(0.5) * (conic_a * s.dx * s.dx + conic_c * s.dy * s.dy) + conic_b * s.dx * s.dy;
  Mask mask = active & (sigma >= Real(0)) & (sigma <= sigma_cutoff);
  if (!any_lane(mask)) return mask;
  // Lanes outside the mask may hold any sigma; keep every lane finite.
  s.exp_neg = exp_of(-(sigma > Real(0) ? sigma : V{}));
  s.vis = opacity * s.exp_neg;
  s.alpha = s.vis < k.alpha_max ? s.vis : V{} + k.alpha_max;
  return mask & (s.alpha >= k.alpha_min);
}

// What walking back to front carries per pixel.
template <typename V>
struct PixelBackwardState {
  V trans;        // transmittance in front of the slot visited last (T_final at the start)
  V grad_behind;  // g . (colour added by the slots already visited and the background)
};

template <typename V>
ZHSI_HOST_DEVICE PixelBackwardState<V> start_pixel(V final_trans, V grad_dot_background) {
  return PixelBackwardState<V>{final_trans, final_trans * grad_dot_background};
}

// The pixel(s)' share of one slot's gradients. The feature gradient is g * weight.
template <typename V>
struct SlotGradient {
  V mean[2];
  V conic[3];
  V opacity;
  V weight;  // alpha_j T_j
};

// Steps the pixels of `mask` back over one slot (`s` from `evaluate_alpha`) and returns the
// slot's gradients there (zero elsewhere). `grad_dot_feature` is g . f_j for each pixel's
// cotangent g.
template <typename V, typename Real, typename Mask>
ZHSI_HOST_DEVICE SlotGradient<V> backward_through_slot(Mask mask, const SlotAlpha<V>& s, Real conic_a, Real conic_b,
                                                       Real conic_c, V grad_dot_feature,
                                                       const CompositeConstants<Real>& k,
                                                       PixelBackwardState<V>& state) {
  const V alpha = mask ? s.alpha : V{};
  const V one_minus = Real(1) - alpha;
  const V trans = state.trans / one_minus;
  const V weight = alpha * trans;
  const V grad_alpha = mask ? trans * grad_dot_feature - state.grad_behind / one_minus : V{};
  state.grad_behind += weight * grad_dot_feature;
  state.trans = trans;
  // Past the clamp alpha is constant in the opacity and in sigma.
  const V grad_vis = s.vis < k.alpha_max ? grad_alpha : V{};
  const V grad_sigma = -grad_vis * s.vis;
  SlotGradient<V> out;
  out.opacity = grad_vis * s.exp_neg;
  out.conic[0] = grad_sigma * Real(0.5) * s.dx * s.dx;
  out.conic[1] = grad_sigma * s.dx * s.dy;
  out.conic[2] = grad_sigma * Real(0.5) * s.dy * s.dy;
  out.mean[0] = -grad_sigma * (conic_a * s.dx + conic_b * s.dy);
  out.mean[1] = -grad_sigma * (conic_b * s.dx + conic_c * s.dy);
  out.weight = weight;
  return out;
}

// Shapes of one call, shared by both drivers. Every array may carry leading batch dimensions
// (vmap); `batch` is their product.
struct CompositeShapes {
  int64_t batch;
  int64_t num_gaussians;  // N
  int64_t channels;       // C
  int64_t num_tiles;      // T
  int64_t capacity;       // K, slots per tile
  int64_t tile_pixels;    // P
};

// Pointers to one call's arguments and results, in the FFI signature's order
// (composite_backward_ffi.h), shared by both drivers; each may span several batch elements.
template <typename Real>
struct Arguments {
  const Real* means2d;
  const Real* conics;
  const Real* opacities;
  const Real* features;
  const Real* background;
  const int32_t* ids;
  const int32_t* counts;
  const Real* pix;
  const Real* final_trans;
  const int32_t* stop;
  const Real* grad_out;
};

template <typename Real>
struct Gradients {
  Real* means2d;
  Real* conics;
  Real* opacities;
  Real* features;
  Real* background;
};

}  // namespace zerohsi
