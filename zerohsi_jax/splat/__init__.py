"""Differentiable tile-based 3D Gaussian splatting in pure JAX.

Data flows project -> bin -> composite; each stage has a plain twin the tests compare against
(gsplat's torch projection, `bin_gaussians_dense`, `composite` with `backward="autodiff"`, and the
float64 brute-force `render_reference`).
"""

from .binning import TileBins, bin_gaussians, bin_gaussians_dense
from .camera import Camera
from .composite import composite
from .config import RasterConfig
from .gaussians import Gaussians, eval_sh_colors, quat_to_rotmat, random_gaussians, rgb_to_sh0
from .ply import PlyFormatError, load_ply, save_ply
from .projection import Projected, project
from .render import RenderOutput, check_overflow, fit_capacity, render, render_projected, suggested_capacity

__all__ = [
    "Camera",
    "Gaussians",
    "PlyFormatError",
    "Projected",
    "RasterConfig",
    "RenderOutput",
    "TileBins",
    "bin_gaussians",
    "bin_gaussians_dense",
    "check_overflow",
    "composite",
    "eval_sh_colors",
    "fit_capacity",
    "load_ply",
    "project",
    "quat_to_rotmat",
    "random_gaussians",
    "render",
    "render_projected",
    "rgb_to_sh0",
    "save_ply",
    "suggested_capacity",
]
