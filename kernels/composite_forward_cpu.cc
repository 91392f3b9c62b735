// CPU driver of the compositing forward: threads over tiles, each tile's pixels in packs stepped
// front to back through its slots.
//
// It reproduces zerohsi_jax.splat.composite's forward (up to rounding; the slot test is
// composite_backward.h's `evaluate_alpha`, the same as the compiled backward's):
//   a slot counts for a pixel when sigma >= 0 and alpha >= alpha_min;
//   the pixel stops at the first counted slot after which T would fall to transmittance_min
//   (that slot excluded), recording its index; C = sum_j f_j alpha_j T_j + T_final background.
// Results per (tile, pixel): the composited channels, the final transmittance and the stop index
// (the tile's capacity K where the pixel never stops): what the backward walks back from.
//
// XLA runs the same steps as a while loop over chunks of slots on every (tile, pixel) at once;
// crowded tiles then loop many times over few pixels. Here each pack of pixels leaves its slot
// loop when all of its pixels have stopped, and a box test per slot skips the slots that do not
// reach the pack.
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "composite_backward.h"
#include "composite_backward_ffi.h"
#include "composite_cpu.h"

namespace zerohsi {
namespace {

template <typename Real>
struct ForwardResults {
  Real* out;        // (T, P, C)
  Real* trans;      // (T, P)
  int32_t* stop;    // (T, P)
};

template <typename Mask>
inline bool all_lanes(Mask mask) {
  for (int l = 0; l < kLanes; ++l)
    if (!mask[l]) return false;
  return true;
}

template <typename Real>
struct ForwardWorkspace {
  using V = typename PackTypes<Real>::Lanes;
  TileSlots<Real> slots;
  std::vector<V> acc;  // (C): the pack's accumulated channels
  void resize(int64_t capacity, int64_t channels) {
    slots.resize(capacity, channels);
    acc.resize(channels);
  }
};

template <typename Real>
void tile_forward(const Arguments<Real>& in, const ForwardResults<Real>& res, const CompositeShapes& sh,
                  const CompositeConstants<Real>& k, Real transmittance_min, int64_t b, int64_t tile,
                  ForwardWorkspace<Real>& ws) {
  using V = typename PackTypes<Real>::Lanes;
  using Mask = typename PackTypes<Real>::Mask;
  const int64_t n = sh.num_gaussians, c = sh.channels, p_count = sh.tile_pixels;
  const int64_t bt = b * sh.num_tiles + tile;
  const int32_t* ids = in.ids + bt * sh.capacity;
  const int64_t count = std::clamp<int64_t>(in.counts[bt], 0, sh.capacity);
  const Real* background = in.background + b * c;
  TileSlots<Real>& sl = ws.slots;
  sl.gather(ids, count, n, c, in.means2d + b * n * 2, in.conics + b * n * 3, in.opacities + b * n,
            in.features + b * n * c, k.alpha_min);
  V* acc = ws.acc.data();

  for (int64_t p0 = 0; p0 < p_count; p0 += kLanes) {
    const int lanes = int(std::min<int64_t>(kLanes, p_count - p0));
    V px{}, py{}, trans = V{} + Real(1);
    Mask done{};
    int32_t stop[kLanes];
    Real box_lo_x = Real(INFINITY), box_hi_x = -Real(INFINITY), box_lo_y = Real(INFINITY), box_hi_y = -Real(INFINITY);
    for (int l = 0; l < kLanes; ++l) {
      stop[l] = int32_t(sh.capacity);
      if (l >= lanes) {  // past the tile's pixels: nothing to composite
        done[l] = -1;
        continue;
      }
      const int64_t bp = bt * p_count + p0 + l;
      px[l] = in.pix[2 * bp];
      py[l] = in.pix[2 * bp + 1];
      box_lo_x = std::min(box_lo_x, px[l]);
      box_hi_x = std::max(box_hi_x, px[l]);
      box_lo_y = std::min(box_lo_y, py[l]);
      box_hi_y = std::max(box_hi_y, py[l]);
    }
    for (int64_t ch = 0; ch < c; ++ch) acc[ch] = V{};

    for (int64_t j = 0; j < count; ++j) {
      if (sl.nonfinite_features[j]) {
        // XLA's loop adds weight * f to every pixel of the tile, 0 where the slot does not count,
        // so a NaN or infinite channel of a listed Gaussian turns the tile's pixels NaN there: a
        // diverged fit shows in the loss instead of hiding behind skipped slots. Do the same.
        const Real* f = &sl.features[j * c];
        for (int64_t ch = 0; ch < c; ++ch) acc[ch] += V{} * f[ch];
      }
      if (sl.misses(j, box_lo_x, box_hi_x, box_lo_y, box_hi_y)) continue;
      SlotAlpha<V> s;
      const Mask keep = evaluate_alpha(~done, px, py, sl.mean_x[j], sl.mean_y[j], sl.conic_a[j], sl.conic_b[j],
                                       sl.conic_c[j], sl.opacity[j], sl.sigma_cutoff[j], k, s);
      if (!any_lane(keep)) continue;
      // Same association as the JAX forward so that both round alike.
      const V next_trans = trans * (Real(1) - s.alpha);
      const Mask fail = keep & (next_trans <= transmittance_min);
      const Mask use = keep & ~fail;
      const V weight = use ? s.alpha * trans : V{};
      const Real* f = &sl.features[j * c];
      for (int64_t ch = 0; ch < c; ++ch) acc[ch] += weight * f[ch];
      trans = use ? next_trans : trans;
      if (any_lane(fail)) {
        for (int l = 0; l < kLanes; ++l)
          if (fail[l]) stop[l] = int32_t(j);
        done |= fail;
        if (all_lanes(done)) break;
      }
    }
    for (int l = 0; l < lanes; ++l) {
      const int64_t bp = bt * p_count + p0 + l;
      Real* out = res.out + bp * c;
      for (int64_t ch = 0; ch < c; ++ch) out[ch] = acc[ch][l] + trans[l] * background[ch];
      res.trans[bp] = trans[l];
      res.stop[bp] = stop[l];
    }
  }
}

template <typename Real>
void composite_forward_cpu(const Arguments<Real>& in, const ForwardResults<Real>& res,
                           const CompositeShapes& sh, const CompositeConstants<Real>& k, Real transmittance_min,
                           int num_threads) {
  std::vector<ForwardWorkspace<Real>> workspaces(std::max(1, num_threads));
  for (auto& ws : workspaces) ws.resize(sh.capacity, sh.channels);
  parallel_for(sh.batch * sh.num_tiles, num_threads, [&](int worker, int64_t bt) {
    tile_forward(in, res, sh, k, transmittance_min, bt / sh.num_tiles, bt % sh.num_tiles, workspaces[worker]);
  });
}

// Reads N, C, T, K, P and the batch size from the arguments and checks every buffer's shape and
// dtype, the results' too. Returns an empty string when they are consistent.
std::string check_forward(const ffi::AnyBuffer& means2d, const ffi::AnyBuffer& conics,
                          const ffi::AnyBuffer& opacities, const ffi::AnyBuffer& features,
                          const ffi::AnyBuffer& background, const ffi::AnyBuffer& ids, const ffi::AnyBuffer& counts,
                          const ffi::AnyBuffer& pix, const ffi::AnyBuffer& out, const ffi::AnyBuffer& trans,
                          const ffi::AnyBuffer& stop, int64_t tile_size, CompositeShapes& shapes) {
  const char* what = "composite forward";
  auto mean_dims = means2d.dimensions();
  if (mean_dims.size() < 2) return "composite forward: means2d must have shape (..., N, 2)";
  std::vector<int64_t> batch_dims(mean_dims.begin(), mean_dims.end() - 2);
  std::string error;
  std::vector<int64_t> m{-1, 2}, cn{-1, 3}, op{-1}, f{-1, -1}, bg{-1}, id{-1, -1}, ct{-1}, px{-1, -1, 2};
  if (!match_shape(means2d, "means2d", batch_dims, m, error, what)) return error;
  cn[0] = op[0] = f[0] = m[0];
  if (!match_shape(conics, "conics", batch_dims, cn, error, what) ||
      !match_shape(opacities, "opacities", batch_dims, op, error, what) ||
      !match_shape(features, "features", batch_dims, f, error, what))
    return error;
  bg[0] = f[1];
  if (!match_shape(background, "background", batch_dims, bg, error, what) ||
      !match_shape(ids, "ids", batch_dims, id, error, what))
    return error;
  ct[0] = px[0] = id[0];
  if (!match_shape(counts, "counts", batch_dims, ct, error, what) ||
      !match_shape(pix, "pix", batch_dims, px, error, what))
    return error;
  std::vector<int64_t> o{id[0], px[1], f[1]}, tr{id[0], px[1]}, st{id[0], px[1]};
  if (!match_shape(out, "out", batch_dims, o, error, what) || !match_shape(trans, "trans", batch_dims, tr, error, what) ||
      !match_shape(stop, "stop", batch_dims, st, error, what))
    return error;
  if (px[1] != tile_size * tile_size)
    return "composite forward: pix holds " + std::to_string(px[1]) + " pixels per tile, tile_size is " +
           std::to_string(tile_size);
  const ffi::DataType real = features.element_type();
  if (real != ffi::DataType::F32 && real != ffi::DataType::F64)
    return "composite forward: features must be float32 or float64";
  for (const ffi::AnyBuffer* b : {&means2d, &conics, &opacities, &background, &pix, &out, &trans})
    if (b->element_type() != real) return "composite forward: all float arguments and results must share one dtype";
  for (const ffi::AnyBuffer* b : {&ids, &counts, &stop})
    if (b->element_type() != ffi::DataType::S32) return "composite forward: ids, counts and stop must be int32";
  int64_t batch = 1;
  for (int64_t d : batch_dims) batch *= d;
  shapes = CompositeShapes{batch, m[0], f[1], id[0], id[1], px[1]};
  return "";
}

template <typename Real>
void run(ffi::AnyBuffer means2d, ffi::AnyBuffer conics, ffi::AnyBuffer opacities, ffi::AnyBuffer features,
         ffi::AnyBuffer background, ffi::AnyBuffer ids, ffi::AnyBuffer counts, ffi::AnyBuffer pix,
         ffi::AnyBuffer out, ffi::AnyBuffer trans, ffi::AnyBuffer stop, const CompositeShapes& shapes,
         double alpha_max, double alpha_min, double transmittance_min, int num_threads) {
  // The backward's argument list; the forward has no residuals or cotangent yet.
  const Arguments<Real> in{means2d.typed_data<Real>(),    conics.typed_data<Real>(),
                           opacities.typed_data<Real>(),  features.typed_data<Real>(),
                           background.typed_data<Real>(), ids.typed_data<int32_t>(),
                           counts.typed_data<int32_t>(),  pix.typed_data<Real>(),
                           nullptr,                       nullptr,
                           nullptr};
  const ForwardResults<Real> res{out.typed_data<Real>(), trans.typed_data<Real>(), stop.typed_data<int32_t>()};
  composite_forward_cpu(in, res, shapes, CompositeConstants<Real>{Real(alpha_max), Real(alpha_min)},
                        Real(transmittance_min), num_threads);
}

ffi::Error CompositeForwardCpuImpl(ffi::AnyBuffer means2d, ffi::AnyBuffer conics, ffi::AnyBuffer opacities,
                                   ffi::AnyBuffer features, ffi::AnyBuffer background, ffi::AnyBuffer ids,
                                   ffi::AnyBuffer counts, ffi::AnyBuffer pix, ffi::Result<ffi::AnyBuffer> out,
                                   ffi::Result<ffi::AnyBuffer> trans, ffi::Result<ffi::AnyBuffer> stop,
                                   double alpha_max, double alpha_min, double transmittance_min, int64_t tile_size,
                                   int64_t num_threads) {
  CompositeShapes shapes;
  const std::string error = check_forward(means2d, conics, opacities, features, background, ids, counts, pix, *out,
                                          *trans, *stop, tile_size, shapes);
  if (!error.empty()) return ffi::Error::InvalidArgument(error);
  int threads = int(num_threads);
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  if (features.element_type() == ffi::DataType::F64)
    run<double>(means2d, conics, opacities, features, background, ids, counts, pix, *out, *trans, *stop, shapes,
                alpha_max, alpha_min, transmittance_min, threads);
  else
    run<float>(means2d, conics, opacities, features, background, ids, counts, pix, *out, *trans, *stop, shapes,
               alpha_max, alpha_min, transmittance_min, threads);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace zerohsi

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZerohsiCompositeForwardCpu, zerohsi::CompositeForwardCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // means2d
                                  .Arg<xla::ffi::AnyBuffer>()  // conics
                                  .Arg<xla::ffi::AnyBuffer>()  // opacities
                                  .Arg<xla::ffi::AnyBuffer>()  // features
                                  .Arg<xla::ffi::AnyBuffer>()  // background
                                  .Arg<xla::ffi::AnyBuffer>()  // ids
                                  .Arg<xla::ffi::AnyBuffer>()  // counts
                                  .Arg<xla::ffi::AnyBuffer>()  // pix
                                  .Ret<xla::ffi::AnyBuffer>()  // composited channels (T, P, C)
                                  .Ret<xla::ffi::AnyBuffer>()  // final transmittance (T, P)
                                  .Ret<xla::ffi::AnyBuffer>()  // stop index (T, P)
                                  .Attr<double>("alpha_max")
                                  .Attr<double>("alpha_min")
                                  .Attr<double>("transmittance_min")
                                  .Attr<int64_t>("tile_size")
                                  .Attr<int64_t>("num_threads"));
