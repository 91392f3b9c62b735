// CPU driver of the compositing backward: threads over tiles, then a deterministic reduction
// per Gaussian.
//
// Pass 1 walks every tile's pixels back to front (composite_backward.h) and sums each slot's
// gradients over the tile's pixels into a row of its own, so no two threads ever write the same
// memory. Pass 2 adds, for every Gaussian, the rows of the slots that hold it, in tile order.
// The result does not depend on the number of threads, and no thread needs a private copy of
// all N gradients.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "composite_backward.h"
#include "composite_backward_ffi.h"
#include "composite_cpu.h"

namespace zerohsi {
namespace {

// One tile's slot parameters gathered contiguously, and per-lane gradient sums; reused across
// tiles by a worker.
template <typename Real>
struct TileWorkspace {
  using V = typename PackTypes<Real>::Lanes;
  TileSlots<Real> slots;
  std::vector<V> lane_grads;  // (slot, 6 + C): sums over packs, one per lane
  std::vector<V> grad_lanes;  // (C): the pack's cotangents, channel-major
  void resize(int64_t capacity, int64_t channels) {
    slots.resize(capacity, channels);
    lane_grads.resize(capacity * (kGeomGrads + channels));
    grad_lanes.resize(channels);
  }
};

// Sums the gradients of tile `tile` of batch element `b` over its pixels: row j of `slot_grads`
// (count x (6 + C)) receives slot j's; `background_grad` (C) receives sum_p g_p T_final,p.
template <typename Real>
void tile_backward(const Arguments<Real>& in, const CompositeShapes& sh, const CompositeConstants<Real>& k,
                   int64_t b, int64_t tile, Real* slot_grads, Real* background_grad, TileWorkspace<Real>& ws) {
  using V = typename PackTypes<Real>::Lanes;
  using Mask = typename PackTypes<Real>::Mask;
  const int64_t n = sh.num_gaussians, c = sh.channels, p_count = sh.tile_pixels, width = kGeomGrads + c;
  const int64_t bt = b * sh.num_tiles + tile;
  const int32_t* ids = in.ids + bt * sh.capacity;
  const int64_t count = std::clamp<int64_t>(in.counts[bt], 0, sh.capacity);
  const Real* means2d = in.means2d + b * n * 2;
  const Real* conics = in.conics + b * n * 3;
  const Real* opacities = in.opacities + b * n;
  const Real* features = in.features + b * n * c;
  const Real* background = in.background + b * c;

  TileSlots<Real>& sl = ws.slots;
  sl.gather(ids, count, n, c, means2d, conics, opacities, features, k.alpha_min);
  std::fill(ws.lane_grads.begin(), ws.lane_grads.begin() + count * width, V{});
  std::fill(background_grad, background_grad + c, Real(0));
  V* grad = ws.grad_lanes.data();

  for (int64_t p0 = 0; p0 < p_count; p0 += kLanes) {
    const int lanes = int(std::min<int64_t>(kLanes, p_count - p0));
    // Lanes past the tile's pixels get a zero cotangent and no slots.
    V px{}, py{}, final_trans{}, last{};
    for (int64_t ch = 0; ch < c; ++ch) grad[ch] = V{};
    int64_t pack_last = 0;
    Real box_lo_x = Real(INFINITY), box_hi_x = -Real(INFINITY), box_lo_y = Real(INFINITY), box_hi_y = -Real(INFINITY);
    for (int l = 0; l < lanes; ++l) {
      const int64_t bp = bt * p_count + p0 + l;
      const Real* g = in.grad_out + bp * c;
      bool any_grad = false;
      for (int64_t ch = 0; ch < c; ++ch) {
        grad[ch][l] = g[ch];
        any_grad |= g[ch] != Real(0);
      }
      px[l] = in.pix[2 * bp];
      py[l] = in.pix[2 * bp + 1];
      final_trans[l] = in.final_trans[bp];
      // A zero cotangent gives every slot exactly zero gradient (padding pixels, masked losses).
      const int64_t pixel_last = any_grad ? std::min<int64_t>(count, in.stop[bp]) : 0;
      last[l] = Real(pixel_last);
      if (pixel_last > 0) {
        pack_last = std::max(pack_last, pixel_last);
        box_lo_x = std::min(box_lo_x, px[l]);
        box_hi_x = std::max(box_hi_x, px[l]);
        box_lo_y = std::min(box_lo_y, py[l]);
        box_hi_y = std::max(box_hi_y, py[l]);
      }
    }
    V grad_dot_background{};
    for (int64_t ch = 0; ch < c; ++ch) {
      background_grad[ch] += lane_sum(grad[ch] * final_trans);
      grad_dot_background += grad[ch] * background[ch];
    }
    PixelBackwardState<V> state = start_pixel(final_trans, grad_dot_background);

    for (int64_t j = pack_last - 1; j >= 0; --j) {
      if (sl.misses(j, box_lo_x, box_hi_x, box_lo_y, box_hi_y)) continue;
      SlotAlpha<V> s;
      const Mask active = Real(j) < last;
      const Mask mask = evaluate_alpha(active, px, py, sl.mean_x[j], sl.mean_y[j], sl.conic_a[j], sl.conic_b[j],
                                       sl.conic_c[j], sl.opacity[j], sl.sigma_cutoff[j], k, s);
      if (!any_lane(mask)) continue;
      const Real* f = &sl.features[j * c];
      V grad_dot_feature{};
      for (int64_t ch = 0; ch < c; ++ch) grad_dot_feature += grad[ch] * f[ch];
      const SlotGradient<V> sg =
          backward_through_slot(mask, s, sl.conic_a[j], sl.conic_b[j], sl.conic_c[j], grad_dot_feature, k, state);
      V* row = &ws.lane_grads[j * width];
      row[0] += sg.mean[0];
      row[1] += sg.mean[1];
      row[2] += sg.conic[0];
      row[3] += sg.conic[1];
      row[4] += sg.conic[2];
      row[5] += sg.opacity;
      for (int64_t ch = 0; ch < c; ++ch) row[kGeomGrads + ch] += grad[ch] * sg.weight;
    }
  }
  for (int64_t q = 0; q < count * width; ++q) slot_grads[q] = lane_sum(ws.lane_grads[q]);
}

template <typename Real>
void composite_backward_cpu(const Arguments<Real>& in, const Gradients<Real>& out, const CompositeShapes& sh,
                            const CompositeConstants<Real>& k, int num_threads) {
  const int64_t n = sh.num_gaussians, c = sh.channels, t_count = sh.num_tiles, width = kGeomGrads + c;
  const int64_t tiles = sh.batch * t_count;

  // Row offsets of every (batch, tile): tiles only get rows for the slots they use.
  std::vector<int64_t> row_start(tiles + 1, 0);
  for (int64_t bt = 0; bt < tiles; ++bt)
    row_start[bt + 1] = row_start[bt] + std::clamp<int64_t>(in.counts[bt], 0, sh.capacity);
  std::vector<Real> slot_grads(row_start[tiles] * width);
  std::vector<Real> background_partial(tiles * c);

  std::vector<TileWorkspace<Real>> workspaces(std::max(1, num_threads));
  for (auto& ws : workspaces) ws.resize(sh.capacity, c);
  parallel_for(tiles, num_threads, [&](int worker, int64_t bt) {
    tile_backward(in, sh, k, bt / t_count, bt % t_count, slot_grads.data() + row_start[bt] * width,
                  background_partial.data() + bt * c, workspaces[worker]);
  });

  for (int64_t b = 0; b < sh.batch; ++b) {
    Real* g_background = out.background + b * c;
    std::fill(g_background, g_background + c, Real(0));
    for (int64_t t = 0; t < t_count; ++t)
      for (int64_t ch = 0; ch < c; ++ch) g_background[ch] += background_partial[(b * t_count + t) * c + ch];
  }

  // Which rows hold each Gaussian, in (tile, slot) order: a counting sort of the slot ids.
  std::vector<int64_t> gaussian_start(sh.batch * n + 1, 0);
  for (int64_t bt = 0; bt < tiles; ++bt) {
    const int32_t* ids = in.ids + bt * sh.capacity;
    const int64_t base = (bt / t_count) * n;
    for (int64_t j = 0, used = row_start[bt + 1] - row_start[bt]; j < used; ++j)
      if (ids[j] >= 0 && ids[j] < n) ++gaussian_start[base + ids[j] + 1];
  }
  for (int64_t i = 0; i < sh.batch * n; ++i) gaussian_start[i + 1] += gaussian_start[i];
  std::vector<int64_t> rows_of_gaussian(gaussian_start.back());
  {
    std::vector<int64_t> fill(gaussian_start.begin(), gaussian_start.end() - 1);
    for (int64_t bt = 0; bt < tiles; ++bt) {
      const int32_t* ids = in.ids + bt * sh.capacity;
      const int64_t base = (bt / t_count) * n;
      for (int64_t j = 0, used = row_start[bt + 1] - row_start[bt]; j < used; ++j)
        if (ids[j] >= 0 && ids[j] < n) rows_of_gaussian[fill[base + ids[j]]++] = row_start[bt] + j;
    }
  }

  const int64_t block = 4096;
  const int64_t gaussians = sh.batch * n;
  parallel_for((gaussians + block - 1) / block, num_threads, [&](int, int64_t chunk) {
    std::vector<Real> sum(width);
    for (int64_t i = chunk * block, end = std::min(gaussians, i + block); i < end; ++i) {
      std::fill(sum.begin(), sum.end(), Real(0));
      for (int64_t r = gaussian_start[i]; r < gaussian_start[i + 1]; ++r) {
        const Real* row = slot_grads.data() + rows_of_gaussian[r] * width;
        for (int64_t q = 0; q < width; ++q) sum[q] += row[q];
      }
      out.means2d[2 * i] = sum[0];
      out.means2d[2 * i + 1] = sum[1];
      out.conics[3 * i] = sum[2];
      out.conics[3 * i + 1] = sum[3];
      out.conics[3 * i + 2] = sum[4];
      out.opacities[i] = sum[5];
      for (int64_t ch = 0; ch < c; ++ch) out.features[i * c + ch] = sum[kGeomGrads + ch];
    }
  });
}

template <typename Real>
void run(ffi::AnyBuffer means2d, ffi::AnyBuffer conics, ffi::AnyBuffer opacities, ffi::AnyBuffer features,
         ffi::AnyBuffer background, ffi::AnyBuffer ids, ffi::AnyBuffer counts, ffi::AnyBuffer pix,
         ffi::AnyBuffer final_trans, ffi::AnyBuffer stop, ffi::AnyBuffer grad_out, ffi::AnyBuffer g_means2d,
         ffi::AnyBuffer g_conics, ffi::AnyBuffer g_opacities, ffi::AnyBuffer g_features,
         ffi::AnyBuffer g_background, const CompositeShapes& shapes, double alpha_max, double alpha_min,
         int num_threads) {
  const Arguments<Real> in{
      means2d.typed_data<Real>(),    conics.typed_data<Real>(), opacities.typed_data<Real>(),
      features.typed_data<Real>(),   background.typed_data<Real>(), ids.typed_data<int32_t>(),
      counts.typed_data<int32_t>(),  pix.typed_data<Real>(),    final_trans.typed_data<Real>(),
      stop.typed_data<int32_t>(),    grad_out.typed_data<Real>()};
  const Gradients<Real> out{g_means2d.typed_data<Real>(), g_conics.typed_data<Real>(),
                            g_opacities.typed_data<Real>(), g_features.typed_data<Real>(),
                            g_background.typed_data<Real>()};
  composite_backward_cpu(in, out, shapes, CompositeConstants<Real>{Real(alpha_max), Real(alpha_min)}, num_threads);
}

ffi::Error CompositeBackwardCpuImpl(ffi::AnyBuffer means2d, ffi::AnyBuffer conics, ffi::AnyBuffer opacities,
                                    ffi::AnyBuffer features, ffi::AnyBuffer background, ffi::AnyBuffer ids,
                                    ffi::AnyBuffer counts, ffi::AnyBuffer pix, ffi::AnyBuffer final_trans,
                                    ffi::AnyBuffer stop, ffi::AnyBuffer grad_out,
                                    ffi::Result<ffi::AnyBuffer> g_means2d, ffi::Result<ffi::AnyBuffer> g_conics,
                                    ffi::Result<ffi::AnyBuffer> g_opacities,
                                    ffi::Result<ffi::AnyBuffer> g_features,
                                    ffi::Result<ffi::AnyBuffer> g_background, double alpha_max, double alpha_min,
                                    int64_t tile_size, int64_t num_threads) {
  CompositeShapes shapes;
  std::string error = check_arguments(means2d, conics, opacities, features, background, ids, counts, pix,
                                      final_trans, stop, grad_out, tile_size, shapes);
  if (error.empty()) error = check_results(means2d, *g_means2d, "means2d");
  if (error.empty()) error = check_results(conics, *g_conics, "conics");
  if (error.empty()) error = check_results(opacities, *g_opacities, "opacities");
  if (error.empty()) error = check_results(features, *g_features, "features");
  if (error.empty()) error = check_results(background, *g_background, "background");
  if (!error.empty()) return ffi::Error::InvalidArgument(error);

  int threads = int(num_threads);
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  if (features.element_type() == ffi::DataType::F64)
    run<double>(means2d, conics, opacities, features, background, ids, counts, pix, final_trans, stop, grad_out,
                *g_means2d, *g_conics, *g_opacities, *g_features, *g_background, shapes, alpha_max, alpha_min,
                threads);
  else
    run<float>(means2d, conics, opacities, features, background, ids, counts, pix, final_trans, stop, grad_out,
               *g_means2d, *g_conics, *g_opacities, *g_features, *g_background, shapes, alpha_max, alpha_min,
               threads);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace zerohsi

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZerohsiCompositeBackwardCpu, zerohsi::CompositeBackwardCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // means2d
                                  .Arg<xla::ffi::AnyBuffer>()  // conics
                                  .Arg<xla::ffi::AnyBuffer>()  // opacities
                                  .Arg<xla::ffi::AnyBuffer>()  // features
                                  .Arg<xla::ffi::AnyBuffer>()  // background
                                  .Arg<xla::ffi::AnyBuffer>()  // ids
                                  .Arg<xla::ffi::AnyBuffer>()  // counts
                                  .Arg<xla::ffi::AnyBuffer>()  // pix
                                  .Arg<xla::ffi::AnyBuffer>()  // final_trans
                                  .Arg<xla::ffi::AnyBuffer>()  // stop
                                  .Arg<xla::ffi::AnyBuffer>()  // grad_out
                                  .Ret<xla::ffi::AnyBuffer>()  // d means2d
                                  .Ret<xla::ffi::AnyBuffer>()  // d conics
                                  .Ret<xla::ffi::AnyBuffer>()  // d opacities
                                  .Ret<xla::ffi::AnyBuffer>()  // d features
                                  .Ret<xla::ffi::AnyBuffer>()  // d background
                                  .Attr<double>("alpha_max")
                                  .Attr<double>("alpha_min")
                                  .Attr<int64_t>("tile_size")
                                  .Attr<int64_t>("num_threads"));
