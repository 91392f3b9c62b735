// The XLA FFI signature of the compositing backward and the checks of its buffers, shared by the
// CPU and CUDA handlers.
//
// Arguments (every one may carry the same leading batch dimensions, from vmap):
//   means2d (N,2) conics (N,3) opacities (N) features (N,C) background (C)  -- float32 or float64
//   ids (T,K) int32, counts (T) int32, pix (T,P,2) float, final_trans (T,P) float,
//   stop (T,P) int32, grad_out (T,P,C) float
// Results: gradients of means2d, conics, opacities, features, background (their input shapes).
// Attributes: alpha_max, alpha_min (f64), tile_size, num_threads (i64; the CPU's thread count,
// 0 for one per hardware thread).
#pragma once

#include <string>
#include <vector>

#include "composite_backward.h"
#include "xla/ffi/api/ffi.h"

namespace zerohsi {

namespace ffi = xla::ffi;

// Checks that `buffer` has the leading dimensions `batch_dims` followed by `trailing`
// (entries < 0 are read from the buffer and returned through `trailing`); `what` names the
// kernel in the error.
inline bool match_shape(const ffi::AnyBuffer& buffer, const char* name, const std::vector<int64_t>& batch_dims,
                        std::vector<int64_t>& trailing, std::string& error,
                        const char* what = "composite backward") {
  auto dims = buffer.dimensions();
  const size_t rank = batch_dims.size() + trailing.size();
  bool ok = dims.size() == rank;
  for (size_t i = 0; ok && i < batch_dims.size(); ++i) ok = dims[i] == batch_dims[i];
  for (size_t i = 0; ok && i < trailing.size(); ++i) {
    const int64_t d = dims[batch_dims.size() + i];
    if (trailing[i] < 0) trailing[i] = d;
    ok = trailing[i] == d;
  }
  if (!ok) {
    error = std::string(what) + ": unexpected shape of " + name + " (rank " +
            std::to_string(dims.size()) + ")";
    for (size_t i = 0; i < dims.size(); ++i) error += (i ? "," : " [") + std::to_string(dims[i]);
    error += dims.size() ? "]" : "";
  }
  return ok;
}

// Reads N, C, T, K, P and the batch size from the arguments and checks every buffer's shape
// and dtype. Returns an empty string when they are consistent.
inline std::string check_arguments(const ffi::AnyBuffer& means2d, const ffi::AnyBuffer& conics,
                                   const ffi::AnyBuffer& opacities, const ffi::AnyBuffer& features,
                                   const ffi::AnyBuffer& background, const ffi::AnyBuffer& ids,
                                   const ffi::AnyBuffer& counts, const ffi::AnyBuffer& pix,
                                   const ffi::AnyBuffer& final_trans, const ffi::AnyBuffer& stop,
                                   const ffi::AnyBuffer& grad_out, int64_t tile_size, CompositeShapes& shapes) {
  auto mean_dims = means2d.dimensions();
  if (mean_dims.size() < 2) return "composite backward: means2d must have shape (..., N, 2)";
  std::vector<int64_t> batch_dims(mean_dims.begin(), mean_dims.end() - 2);
  std::string error;
  std::vector<int64_t> m{-1, 2}, cn{-1, 3}, op{-1}, f{-1, -1}, bg{-1}, id{-1, -1}, ct{-1}, px{-1, -1, 2}, tr{-1, -1},
      st{-1, -1}, g{-1, -1, -1};
  if (!match_shape(means2d, "means2d", batch_dims, m, error)) return error;
  const int64_t n = m[0];
  cn[0] = op[0] = f[0] = n;
  if (!match_shape(conics, "conics", batch_dims, cn, error) ||
      !match_shape(opacities, "opacities", batch_dims, op, error) ||
      !match_shape(features, "features", batch_dims, f, error))
    return error;
  const int64_t c = f[1];
  bg[0] = c;
  if (!match_shape(background, "background", batch_dims, bg, error) ||
      !match_shape(ids, "ids", batch_dims, id, error))
    return error;
  const int64_t t = id[0], k = id[1];
  ct[0] = px[0] = tr[0] = st[0] = g[0] = t;
  if (!match_shape(counts, "counts", batch_dims, ct, error) || !match_shape(pix, "pix", batch_dims, px, error))
    return error;
  const int64_t p = px[1];
  tr[1] = st[1] = g[1] = p;
  g[2] = c;
  if (!match_shape(final_trans, "final_trans", batch_dims, tr, error) ||
      !match_shape(stop, "stop", batch_dims, st, error) || !match_shape(grad_out, "grad_out", batch_dims, g, error))
    return error;
  if (p != tile_size * tile_size)
    return "composite backward: pix holds " + std::to_string(p) + " pixels per tile, tile_size is " +
           std::to_string(tile_size);

  const ffi::DataType real = features.element_type();
  if (real != ffi::DataType::F32 && real != ffi::DataType::F64)
    return "composite backward: features must be float32 or float64";
  for (const ffi::AnyBuffer* b : {&means2d, &conics, &opacities, &background, &pix, &final_trans, &grad_out})
    if (b->element_type() != real) return "composite backward: all float arguments must share one dtype";
  for (const ffi::AnyBuffer* b : {&ids, &counts, &stop})
    if (b->element_type() != ffi::DataType::S32) return "composite backward: ids, counts and stop must be int32";

  int64_t batch = 1;
  for (int64_t d : batch_dims) batch *= d;
  shapes = CompositeShapes{batch, n, c, t, k, p};
  return "";
}

inline std::string check_results(const ffi::AnyBuffer& arg, const ffi::AnyBuffer& result, const char* name) {
  auto a = arg.dimensions(), r = result.dimensions();
  bool ok = a.size() == r.size() && arg.element_type() == result.element_type();
  for (size_t i = 0; ok && i < a.size(); ++i) ok = a[i] == r[i];
  return ok ? "" : std::string("composite backward: the gradient of ") + name + " must match its shape and dtype";
}

}  // namespace zerohsi
