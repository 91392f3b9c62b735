"""Stage 1, camera tracking (section 3.3, eqs. 7-8): a relative rigid transform T of the scene
Gaussians, rendered from the camera of frame t-1, fitted to frame t on the static background.

Transforming the scene by T and rendering from T_{t-1} is rendering the scene from the
world-to-camera matrix V_{t-1} T, so the fit moves the camera instead of the Gaussians (exact for
positions and orientations, cheaper, and correct for view-dependent colour too). The result is
T_t = T*^-1 T_{t-1} in the paper's camera-to-world terms, i.e. V_t = V_{t-1} T*.

`pivot="camera"` (an option of ours) applies T in the camera frame of t-1 instead, V_t = T* V_{t-1}:
the rotation then turns about the camera, not about the world origin, so a small rotation does
not swing a camera far from the origin through metres.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from ..splat import Camera, Gaussians, RasterConfig, render
from .config import CameraTrackingConfig
from .gated_optim import scan_minimize
from .losses import CAMERA_TERMS, Objective
from .state import RasterCounts, relative_transform


class CameraFit(NamedTuple):
    """What tracking the camera over one frame gives."""

    viewmat: Float[Array, "4 4"]  # V_t
    losses: Float[Array, " iterations"]
    terms: dict[str, Float[Array, " iterations"]]  # each weighted term's value per iteration
    raster_counts: RasterCounts  # pairs dropped, and what the largest render needed


class CameraContext(NamedTuple):
    rendered_rgb: jax.Array
    frame: jax.Array
    background_mask: jax.Array
    kind: str


def track_camera(scene: Gaussians, camera: Camera, viewmat_prev, frame, background_mask, cfg: CameraTrackingConfig,
                 raster: RasterConfig, background, objective: Objective | None = None) -> CameraFit:
    """Fit T* for one frame (one `lax.scan` over the iterations). `objective` defaults to
    `CAMERA_TERMS` with the config's weights."""
    if objective is None:
        objective = Objective.of(CAMERA_TERMS, cfg.loss_weights)
    if not cfg.enabled or cfg.iterations == 0:
        zero = jnp.zeros((1,), frame.dtype)
        return CameraFit(viewmat_prev, zero, {k: zero for k in objective.names}, RasterCounts.zero())
    opt = optax.adam(cfg.learning_rate)

    def moved(delta):
        if cfg.pivot == "camera":
            return relative_transform(delta) @ viewmat_prev
        return viewmat_prev @ relative_transform(delta)

    def loss_fn(delta):
        cam = camera.with_viewmat(moved(delta))
        out = render(scene, cam, background, config=raster)
        ctx = CameraContext(out.rgb, frame, background_mask, cfg.loss)
        total, values = objective(ctx)
        return total, (values, RasterCounts.of(out))

    fit = scan_minimize(loss_fn, jnp.zeros((6,), frame.dtype), opt, cfg.iterations)
    values, counts = fit.aux
    return CameraFit(moved(fit.params), fit.losses, values, counts.largest())
