"""Stage 1, camera tracking (section 3.3, eqs. 7-8): a relative rigid transform T of the scene
Gaussians, rendered from the camera of frame t-1, fitted to frame t on the static background.

Transforming the scene by T and rendering from T_{t-1} is rendering the scene from the
world-to-camera matrix V_{t-1} T, so the fit moves the camera instead of the Gaussians (exact for
positions and orientations, cheaper, and correct for view-dependent colour too). The result is
T_t = T*^-1 T_{t-1} in the paper's camera-to-world terms, i.e. V_t = V_{t-1} T*.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..splat import Camera, Gaussians, RasterConfig, render
from .config import CameraTrackingConfig
from .losses import CAMERA_TERMS, weighted_sum
from .schedules import scan_minimize
from .state import relative_transform


class CameraContext(NamedTuple):
    rendered_rgb: jax.Array
    frame: jax.Array
    background_mask: jax.Array
    kind: str


def track_camera(scene: Gaussians, camera: Camera, viewmat_prev, frame, background_mask, cfg: CameraTrackingConfig,
                 raster: RasterConfig, background, terms=CAMERA_TERMS):
    """Fit T* for one frame (one `lax.scan` over the iterations) and return (V_t, total loss per
    iteration, each term's value per iteration, largest tile overflow)."""
    if not cfg.enabled or cfg.iterations == 0:
        zero = jnp.zeros((1,), frame.dtype)
        return viewmat_prev, zero, {k: zero for k in cfg.loss_weights}, jnp.int32(0)
    opt = optax.adam(cfg.learning_rate)

    def loss_fn(delta):
        cam = camera.with_viewmat(viewmat_prev @ relative_transform(delta))
        out = render(scene, cam, background, config=raster)
        ctx = CameraContext(out.rgb, frame, background_mask, cfg.loss)
        total, values = weighted_sum(terms, cfg.loss_weights, ctx)
        return total, (values, out.overflow)

    delta, losses, (values, overflow) = scan_minimize(loss_fn, jnp.zeros((6,), frame.dtype), opt, cfg.iterations)
    return viewmat_prev @ relative_transform(delta), losses, values, jnp.max(overflow)
