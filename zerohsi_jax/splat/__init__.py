"""Differentiable tile-based 3D Gaussian splatting in pure JAX.

Data flows project -> bin -> composite; each stage has a plain twin the tests compare against:
gsplat's torch projection, and in `splat.reference` `bin_gaussians_dense`, `composite_autodiff`
(`composite` with `backward="autodiff"`) and the float64 brute-force `render_reference`.

Capacities. Binning writes tile-Gaussian pairs into buffers of static size: at most
`tile_capacity` Gaussians per tile and `pair_capacity` pairs per image. The contract:
- `RasterConfig()` leaves both at None. An eager `render` (concrete arrays, not under jit, vmap
  or grad) measures them on the scene, and with `overflow="grow"` (the default) redoes a render
  that would drop pairs with capacities that fit, with a warning naming them. An eager render
  never lacks a pair unless `overflow="drop"` asks for a fixed cost.
- Under a trace the capacities are array shapes and must be given: measure them outside with
  `fit_capacity(gaussians, cameras, config)` (a batch of cameras gives the largest need), or
  pass `RasterConfig(tile_capacity=..., pair_capacity=...)`. A None tile capacity there raises a
  ValueError saying so; a None pair capacity falls back to `pairs_per_gaussian * N`.
- A traced render returns `RenderOutput.overflow`, the pairs it dropped (0 when exact), with
  `max_tile_count` and `num_pairs`, which are exact whatever the capacities. A caller that can
  re-run (a fitting loop, a stage of the pipeline) reads them on the host after the step and, if
  any overflow is nonzero, re-runs the step with `grown_capacity(config, out)`: capacities that
  hold what was needed, with headroom (`out` may carry leading frame/seed/step axes). One re-run
  suffices for the same inputs; a later step whose Gaussians moved may need another.
- `overflow="error"` raises instead: `RasterOverflowError` in an eager render, an
  `equinox.error_if` runtime error under jit.

A static scene seen by a fixed camera (the per-frame HSI fit) is projected and binned once by
`bind_static`; `render_bound` then renders it with Gaussians that move, binning only those and
merging per-tile lists (`bound_scene`, which states how its results equal `render`'s).
"""

from .binning import TileBins, bin_gaussians
from .bound_scene import (
    BoundScene,
    bind_static,
    fit_bound_capacity,
    merge_pairs_into_tile_lists,
    render_bound,
    render_static,
)
from .camera import Camera, CameraFileError
from .composite import composite
from .config import RasterConfig
from .gaussians import Gaussians, eval_sh_colors, random_gaussians, rgb_to_sh0
from .ply import PlyFormatError, load_ply, save_ply
from .projection import Projected, project
from .reference import bin_gaussians_dense
from .render import (
    RasterOverflowError,
    RenderOutput,
    check_overflow,
    fit_capacity,
    grown_capacity,
    measure_capacity,
    render,
    render_projected,
    suggested_capacity,
)

__all__ = [
    "BoundScene",
    "Camera",
    "CameraFileError",
    "Gaussians",
    "PlyFormatError",
    "Projected",
    "RasterConfig",
    "RasterOverflowError",
    "RenderOutput",
    "TileBins",
    "bin_gaussians",
    "bin_gaussians_dense",
    "bind_static",
    "check_overflow",
    "composite",
    "eval_sh_colors",
    "fit_bound_capacity",
    "fit_capacity",
    "grown_capacity",
    "load_ply",
    "measure_capacity",
    "merge_pairs_into_tile_lists",
    "project",
    "random_gaussians",
    "render",
    "render_bound",
    "render_static",
    "render_projected",
    "rgb_to_sh0",
    "save_ply",
    "suggested_capacity",
]
