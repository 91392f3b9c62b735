// CUDA launcher of the compositing backward: one block per tile, one thread per pixel.
//
// The block walks its tile's slots back to front in batches staged in shared memory (the
// scheme of the INRIA and gsplat backward kernels). Every thread steps its pixel back over each
// slot with the arithmetic of composite_backward.h; a warp then sums the slot's gradients over
// its 32 pixels with shuffles and one lane adds them to the Gaussian's gradients atomically.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "composite_backward.h"
#include "composite_backward_ffi.h"

namespace zerohsi {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kSharedBudget = 44 * 1024;  // under the 48 KiB every device grants without opt-in

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename Real>
__device__ __forceinline__ Real warp_sum(Real v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  return v;
}

// The shared-memory layout of one batch of slots.
template <typename Real>
struct SlotBatch {
  int32_t* id;  // -1 for ids outside [0, N)
  Real *mean_x, *mean_y, *conic_a, *conic_b, *conic_c, *opacity, *sigma_cutoff, *features;

  __device__ SlotBatch(void* shared, int capacity, int channels) {
    // Reals first so that doubles stay aligned.
    Real* r = reinterpret_cast<Real*>(shared);
    mean_x = r;
    mean_y = r + capacity;
    conic_a = r + 2 * capacity;
    conic_b = r + 3 * capacity;
    conic_c = r + 4 * capacity;
    opacity = r + 5 * capacity;
    sigma_cutoff = r + 6 * capacity;
    features = r + 7 * capacity;
    id = reinterpret_cast<int32_t*>(features + capacity * channels);
  }

  static size_t bytes(int capacity, int channels) {
    return size_t(capacity) * ((7 + channels) * sizeof(Real) + sizeof(int32_t));
  }
};

// kMaxChannels > 0 keeps the pixel's cotangent in registers; 0 reads it from global memory
// (any channel count).
template <typename Real, int kMaxChannels>
__global__ void composite_backward_kernel(Arguments<Real> in, Gradients<Real> out, CompositeShapes sh,
                                          CompositeConstants<Real> k, int batch_slots) {
  extern __shared__ unsigned char shared_bytes[];
  __shared__ int block_last;
  const int c = int(sh.channels);
  SlotBatch<Real> batch(shared_bytes, batch_slots, c);
  const int64_t n = sh.num_gaussians;
  const int64_t tile = blockIdx.x;
  const int lane = threadIdx.x % kWarp;

  for (int64_t b = blockIdx.y; b < sh.batch; b += gridDim.y) {
    const int64_t bt = b * sh.num_tiles + tile;
    const int64_t count = min64(max64(in.counts[bt], 0), sh.capacity);
    const int32_t* ids = in.ids + bt * sh.capacity;
    // Threads past the tile's pixels (the block is a whole number of warps) stand in as pixels
    // with a zero cotangent so that every lane takes part in the shuffles.
    const bool is_pixel = threadIdx.x < sh.tile_pixels;
    const int64_t bp = bt * sh.tile_pixels + (is_pixel ? threadIdx.x : 0);
    const Real* g_global = in.grad_out + bp * c;
    Real g_local[kMaxChannels > 0 ? kMaxChannels : 1];
#pragma unroll
    for (int ch = 0; ch < (kMaxChannels > 0 ? kMaxChannels : 1); ++ch)
      g_local[ch] = (ch < c && is_pixel) ? g_global[ch] : Real(0);
    auto grad = [&](int ch) -> Real { return kMaxChannels > 0 ? g_local[ch] : (is_pixel ? g_global[ch] : Real(0)); };

    const Real final_trans = is_pixel ? in.final_trans[bp] : Real(0);
    Real grad_dot_background = 0;
    bool any_grad = false;
    const Real* background = in.background + b * c;
    for (int ch = 0; ch < c; ++ch) {
      const Real gc = grad(ch);
      grad_dot_background += gc * background[ch];
      any_grad |= gc != Real(0);
      const Real partial = warp_sum(gc * final_trans);
      if (lane == 0 && partial != Real(0)) atomicAdd(out.background + b * c + ch, partial);
    }
    const int64_t last = (is_pixel && any_grad) ? min64(count, in.stop[bp]) : 0;
    const Real px = is_pixel ? in.pix[2 * bp] : Real(0), py = is_pixel ? in.pix[2 * bp + 1] : Real(0);
    PixelBackwardState<Real> state = start_pixel(final_trans, grad_dot_background);

    if (threadIdx.x == 0) block_last = 0;
    __syncthreads();
    if (last > 0) atomicMax(&block_last, int(last));
    __syncthreads();
    const int64_t end = block_last;

    const Real* means2d = in.means2d + b * n * 2;
    const Real* conics = in.conics + b * n * 3;
    const Real* opacities = in.opacities + b * n;
    const Real* features = in.features + b * n * c;
    for (int64_t batch_end = end; batch_end > 0; batch_end -= batch_slots) {
      const int64_t batch_begin = max64(0, batch_end - batch_slots);
      const int size = int(batch_end - batch_begin);
      __syncthreads();  // the previous batch is no longer read
      for (int i = threadIdx.x; i < size; i += blockDim.x) {
        const int32_t id = ids[batch_begin + i];
        const bool usable = id >= 0 && id < n;
        const int64_t gid = usable ? id : 0;
        batch.id[i] = usable ? id : -1;
        batch.mean_x[i] = means2d[2 * gid];
        batch.mean_y[i] = means2d[2 * gid + 1];
        batch.conic_a[i] = conics[3 * gid];
        batch.conic_b[i] = conics[3 * gid + 1];
        batch.conic_c[i] = conics[3 * gid + 2];
        batch.opacity[i] = opacities[gid];
        batch.sigma_cutoff[i] = usable ? sigma_cutoff_for(opacities[gid], k.alpha_min) : Real(-1);
      }
      for (int i = threadIdx.x; i < size * c; i += blockDim.x) {
        const int slot = i / c;
        const int32_t id = ids[batch_begin + slot];
        const int64_t gid = (id >= 0 && id < n) ? id : 0;
        batch.features[i] = features[gid * c + i % c];
      }
      __syncthreads();

      for (int i = size - 1; i >= 0; --i) {
        const int64_t j = batch_begin + i;
        SlotAlpha<Real> s;
        const bool contributes =
            evaluate_alpha(j < last, px, py, batch.mean_x[i], batch.mean_y[i], batch.conic_a[i], batch.conic_b[i],
                           batch.conic_c[i], batch.opacity[i], batch.sigma_cutoff[i], k, s);
        if (!__any_sync(kFullMask, contributes)) continue;
        SlotGradient<Real> sg{};
        if (contributes) {
          const Real* f = batch.features + i * c;
          Real grad_dot_feature = 0;
          for (int ch = 0; ch < c; ++ch) grad_dot_feature += grad(ch) * f[ch];
          sg = backward_through_slot(true, s, batch.conic_a[i], batch.conic_b[i], batch.conic_c[i], grad_dot_feature, k,
                                     state);
        }
        const int32_t id = batch.id[i];
        const Real geom[kGeomGrads] = {sg.mean[0], sg.mean[1], sg.conic[0], sg.conic[1], sg.conic[2], sg.opacity};
        const int64_t gb = b * n + id;
#pragma unroll
        for (int q = 0; q < kGeomGrads; ++q) {
          const Real total = warp_sum(geom[q]);
          if (lane == 0 && id >= 0) {
            Real* target = q < 2 ? out.means2d + 2 * gb + q : q < 5 ? out.conics + 3 * gb + (q - 2) : out.opacities + gb;
            atomicAdd(target, total);
          }
        }
        for (int ch = 0; ch < c; ++ch) {
          const Real total = warp_sum(grad(ch) * sg.weight);
          if (lane == 0 && id >= 0) atomicAdd(out.features + gb * c + ch, total);
        }
      }
    }
    __syncthreads();  // block_last is reset for the next batch element
  }
}

template <typename Real, int kMaxChannels>
cudaError_t launch(const Arguments<Real>& in, const Gradients<Real>& out, const CompositeShapes& sh,
                   const CompositeConstants<Real>& k, cudaStream_t stream) {
  const int threads = int((sh.tile_pixels + kWarp - 1) / kWarp * kWarp);
  const size_t per_slot = SlotBatch<Real>::bytes(1, int(sh.channels));
  const int batch_slots = int(std::max<size_t>(1, std::min<size_t>(threads, kSharedBudget / per_slot)));
  const dim3 grid(unsigned(sh.num_tiles), unsigned(std::min<int64_t>(sh.batch, 65535)));
  composite_backward_kernel<Real, kMaxChannels>
      <<<grid, threads, SlotBatch<Real>::bytes(batch_slots, int(sh.channels)), stream>>>(in, out, sh, k, batch_slots);
  return cudaGetLastError();
}

template <typename Real>
cudaError_t dispatch_channels(const Arguments<Real>& in, const Gradients<Real>& out, const CompositeShapes& sh,
                              const CompositeConstants<Real>& k, cudaStream_t stream) {
  if (sh.channels <= 8) return launch<Real, 8>(in, out, sh, k, stream);
  if (sh.channels <= 32) return launch<Real, 32>(in, out, sh, k, stream);
  return launch<Real, 0>(in, out, sh, k, stream);
}

template <typename Real>
cudaError_t run(ffi::AnyBuffer* args, ffi::AnyBuffer* grads, const CompositeShapes& sh, double alpha_max,
                double alpha_min, cudaStream_t stream) {
  const Arguments<Real> in{args[0].typed_data<Real>(),    args[1].typed_data<Real>(),  args[2].typed_data<Real>(),
                           args[3].typed_data<Real>(),    args[4].typed_data<Real>(),  args[5].typed_data<int32_t>(),
                           args[6].typed_data<int32_t>(), args[7].typed_data<Real>(),  args[8].typed_data<Real>(),
                           args[9].typed_data<int32_t>(), args[10].typed_data<Real>()};
  const Gradients<Real> out{grads[0].typed_data<Real>(), grads[1].typed_data<Real>(), grads[2].typed_data<Real>(),
                            grads[3].typed_data<Real>(), grads[4].typed_data<Real>()};
  for (int i = 0; i < 5; ++i) {
    cudaError_t err = cudaMemsetAsync(grads[i].untyped_data(), 0, grads[i].size_bytes(), stream);
    if (err != cudaSuccess) return err;
  }
  if (sh.batch == 0 || sh.num_tiles == 0) return cudaSuccess;
  return dispatch_channels(in, out, sh, CompositeConstants<Real>{Real(alpha_max), Real(alpha_min)}, stream);
}

ffi::Error CompositeBackwardCudaImpl(cudaStream_t stream, ffi::AnyBuffer means2d, ffi::AnyBuffer conics,
                                     ffi::AnyBuffer opacities, ffi::AnyBuffer features, ffi::AnyBuffer background,
                                     ffi::AnyBuffer ids, ffi::AnyBuffer counts, ffi::AnyBuffer pix,
                                     ffi::AnyBuffer final_trans, ffi::AnyBuffer stop, ffi::AnyBuffer grad_out,
                                     ffi::Result<ffi::AnyBuffer> g_means2d, ffi::Result<ffi::AnyBuffer> g_conics,
                                     ffi::Result<ffi::AnyBuffer> g_opacities,
                                     ffi::Result<ffi::AnyBuffer> g_features,
                                     ffi::Result<ffi::AnyBuffer> g_background, double alpha_max, double alpha_min,
                                     int64_t tile_size, int64_t /*num_threads: CPU only*/) {
  CompositeShapes shapes;
  std::string error = check_arguments(means2d, conics, opacities, features, background, ids, counts, pix,
                                      final_trans, stop, grad_out, tile_size, shapes);
  if (error.empty()) error = check_results(means2d, *g_means2d, "means2d");
  if (error.empty()) error = check_results(conics, *g_conics, "conics");
  if (error.empty()) error = check_results(opacities, *g_opacities, "opacities");
  if (error.empty()) error = check_results(features, *g_features, "features");
  if (error.empty()) error = check_results(background, *g_background, "background");
  if (error.empty() && shapes.tile_pixels > 1024)
    error = "composite backward: the CUDA kernel handles tiles of at most 1024 pixels";
  if (!error.empty()) return ffi::Error::InvalidArgument(error);

  ffi::AnyBuffer args[] = {means2d, conics, opacities, features, background, ids, counts, pix, final_trans, stop,
                           grad_out};
  ffi::AnyBuffer grads[] = {*g_means2d, *g_conics, *g_opacities, *g_features, *g_background};
  const cudaError_t err = features.element_type() == ffi::DataType::F64
                              ? run<double>(args, grads, shapes, alpha_max, alpha_min, stream)
                              : run<float>(args, grads, shapes, alpha_max, alpha_min, stream);
  if (err != cudaSuccess)
    return ffi::Error::Internal(std::string("composite backward: CUDA error: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

__global__ void probe_kernel() {}

}  // namespace
}  // namespace zerohsi

// Launches an empty kernel: a library built by an nvcc newer than the driver, or for another
// architecture, loads fine and only fails at its first launch. Python calls this before
// registering the handler so that such a build falls back instead of failing mid-training.
extern "C" int ZerohsiCompositeBackwardCudaProbe(char* message, int capacity) {
  zerohsi::probe_kernel<<<1, 1>>>();
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  if (err == cudaSuccess) return 0;
  snprintf(message, capacity, "%s", cudaGetErrorString(err));
  return 1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZerohsiCompositeBackwardCuda, zerohsi::CompositeBackwardCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
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
