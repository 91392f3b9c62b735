// What the CPU drivers of the compositing forward (composite_forward_cpu.cc) and backward
// (composite_backward_cpu.cc) share: the thread pool loop over tiles and the pixel packs.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "composite_backward.h"

namespace zerohsi {

// Calls fn(worker, i) for every i in [0, n), on up to `num_threads` threads that take items
// in turn (tiles differ widely in cost, so a static split would leave threads idle).
template <typename Fn>
void parallel_for(int64_t n, int num_threads, Fn&& fn) {
  const int workers = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, n)));
  std::atomic<int64_t> next{0};
  auto run = [&](int worker) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(worker, i);
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) threads.emplace_back(run, w);
  run(0);
  for (auto& th : threads) th.join();
}

// Pixels stepped together through a slot as one vector (composite_backward.h's lanes): a pack
// shares one bounding-box test per slot, which rejects most of a tile's slots for all of its
// pixels at once, and the arithmetic of the slots that remain runs on all lanes together.
template <typename Real>
struct PackTypes;
template <>
struct PackTypes<float> {
  using Lanes = FloatLanes;
  using Mask = FloatMask;
};
template <>
struct PackTypes<double> {
  using Lanes = DoubleLanes;
  using Mask = DoubleMask;
};

// One tile's slot parameters gathered contiguously (reused across tiles by a worker), with the
// box around each slot outside of which it adds nothing.
template <typename Real>
struct TileSlots {
  std::vector<Real> mean_x, mean_y, conic_a, conic_b, conic_c, opacity, sigma_cutoff, features;
  std::vector<Real> lo_x, hi_x, lo_y, hi_y;
  std::vector<char> nonfinite_features;  // a NaN or infinity among the slot's channels
  void resize(int64_t capacity, int64_t channels) {
    for (auto* v : {&mean_x, &mean_y, &conic_a, &conic_b, &conic_c, &opacity, &sigma_cutoff, &lo_x, &hi_x, &lo_y,
                    &hi_y})
      v->resize(capacity);
    features.resize(capacity * channels);
    nonfinite_features.resize(capacity);
  }

  // Gathers the first `count` slots of a tile (`ids`) of one batch element's Gaussians.
  void gather(const int32_t* ids, int64_t count, int64_t n, int64_t c, const Real* means2d, const Real* conics,
              const Real* opacities, const Real* features_in, Real alpha_min) {
    for (int64_t j = 0; j < count; ++j) {
      const int64_t id = ids[j];
      const bool usable = id >= 0 && id < n;
      const int64_t g = usable ? id : 0;
      mean_x[j] = means2d[2 * g];
      mean_y[j] = means2d[2 * g + 1];
      conic_a[j] = conics[3 * g];
      conic_b[j] = conics[3 * g + 1];
      conic_c[j] = conics[3 * g + 2];
      opacity[j] = opacities[g];
      sigma_cutoff[j] = usable ? sigma_cutoff_for(opacity[j], alpha_min) : Real(-1);
      Real half_x, half_y;
      if (contour_half_extents(conic_a[j], conic_b[j], conic_c[j], sigma_cutoff[j], half_x, half_y)) {
        lo_x[j] = mean_x[j] - half_x;
        hi_x[j] = mean_x[j] + half_x;
        lo_y[j] = mean_y[j] - half_y;
        hi_y[j] = mean_y[j] + half_y;
      } else {  // an empty box
        lo_x[j] = lo_y[j] = Real(INFINITY);
        hi_x[j] = hi_y[j] = -Real(INFINITY);
      }
      std::copy(features_in + g * c, features_in + (g + 1) * c, &features[j * c]);
      bool finite = true;
      for (int64_t ch = 0; ch < c; ++ch) finite = finite && std::isfinite(features[j * c + ch]);
      nonfinite_features[j] = !finite;
    }
  }

  bool misses(int64_t j, Real box_lo_x, Real box_hi_x, Real box_lo_y, Real box_hi_y) const {
    return hi_x[j] < box_lo_x || lo_x[j] > box_hi_x || hi_y[j] < box_lo_y || lo_y[j] > box_hi_y;
  }
};

}  // namespace zerohsi
