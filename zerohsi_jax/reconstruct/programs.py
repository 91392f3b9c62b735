"""The compiled programs of the pipeline, each vmapped over seeds (and over frames in the
frame-parallel fit), with typed arguments: what every seed shares (`Shared`), the per-seed arrays
of a call (a batch), and its settings (a module of static fields: the stage's config, the
rasterizer's, the background and the stage's `Objective`). Settings are static, so every
`reconstruct` call with the same shapes and settings reuses one compilation.

The rasterizer config a program gets counts what does not fit (overflow 'drop'); the pipeline
acts on the counts each program returns (`raster_counts`) on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..splat import Camera, Gaussians, RasterConfig
from .camera_tracking import CameraFit, track_camera
from .config import CameraTrackingConfig, HSIFitConfig, RefineConfig
from .hsi_fit import fit_frame, render_frame
from .losses import Objective, mean_masked_depth
from .refinement import Refined, refine_sequence
from .state import FrameState, HumanPose, RasterCounts


class Shared(eqx.Module):
    """The arrays every seed and frame reads: the programs' non-batched argument."""

    scene: Gaussians
    object: Gaussians | None
    avatar_rest: eqx.Module
    """The avatar less its colour net (which each seed's `FrameState.color` holds)."""
    camera: Camera
    """Intrinsics and the initial camera; each call's viewmat replaces the latter."""


class RenderSettings(eqx.Module):
    """What a render needs besides its inputs."""

    raster: RasterConfig = eqx.field(static=True)
    background: tuple[float, float, float] = eqx.field(static=True)

    def background_array(self) -> Float[Array, "3"]:
        return jnp.asarray(self.background, jnp.float32)


class CameraSettings(eqx.Module):
    """Stage 1's static settings."""

    cfg: CameraTrackingConfig = eqx.field(static=True)
    render: RenderSettings
    objective: Objective = eqx.field(static=True)


class HSISettings(eqx.Module):
    """Stage 2's static settings; `use_estimates` starts each frame's body pose from its estimate."""

    cfg: HSIFitConfig = eqx.field(static=True)
    render: RenderSettings
    objective: Objective = eqx.field(static=True)
    use_estimates: bool = eqx.field(static=True)


class RefineSettings(eqx.Module):
    """Stage 3's static settings; `pair_scale` from `refinement.contact_pair_scale`."""

    cfg: RefineConfig = eqx.field(static=True)
    pair_scale: float = eqx.field(static=True)
    objective: Objective = eqx.field(static=True)


class CameraBatch(eqx.Module):
    """Stage 1's per-seed arrays for one frame."""

    viewmat: Float[Array, "S 4 4"]
    """V_{t-1}, where the fit starts."""
    frame: Float[Array, "S H W 3"]
    background_mask: Float[Array, "S H W"]


class HSIBatch(eqx.Module):
    """Stage 2's per-seed (and per-frame, fitted in parallel) arrays: leading axes *b."""

    state: FrameState
    """What the fit starts from (frame t-1's state)."""
    viewmat: Float[Array, "*b 4 4"]
    """V_t from camera tracking."""
    frame: Float[Array, "*b H W 3"]
    human_mask: Float[Array, "*b H W"]
    object_mask: Float[Array, "*b H W"]
    estimate: Float[Array, "*b 63"]
    """A body-pose estimate of the frame (zeros unless `HSISettings.use_estimates`)."""


class RefineBatch(eqx.Module):
    """Stage 3's inputs: the stage-2 sequences of every seed, and the body parts it reads."""

    hands_model: eqx.Module
    """`body.vertex_subset(hand_vertices(body))`."""
    vposer: eqx.Module
    human: HumanPose
    """(S, T, ...) stage-2 poses."""
    points: Float[Array, "S T P 3"] | None
    """Object centres of every frame, None without an object."""
    betas: Float[Array, " B"]
    dynamic: Bool[Array, " S"]
    """Whether each seed's object moves (eq. S4's smoothness weight)."""


class FittedFrame(NamedTuple):
    """What stage 2 gives for one frame."""

    state: FrameState
    losses: Float[Array, "*b iterations"]
    terms: dict[str, Float[Array, "*b iterations"]]
    raster_counts: RasterCounts


class InitialDepth(NamedTuple):
    """D_O^0 of every seed and what its render needed."""

    depth: Float[Array, " S"]
    raster_counts: RasterCounts


@eqx.filter_jit
def camera_program(shared: Shared, batch: CameraBatch, settings: CameraSettings) -> CameraFit:
    """Stage 1 for one frame of every seed."""
    def one(b: CameraBatch):
        return track_camera(shared.scene, shared.camera, b.viewmat, b.frame, b.background_mask, settings.cfg,
                            settings.render.raster, settings.render.background_array(), settings.objective)

    return eqx.filter_vmap(one)(batch)


def _fit_one(shared: Shared, b: HSIBatch, settings: HSISettings) -> FittedFrame:
    state = b.state
    init = state.human
    if settings.use_estimates:
        init = HumanPose(init.transl, init.global_orient, b.estimate)
    cfg = settings.cfg
    carry = cfg.adam_state == "carry"
    fit = fit_frame(
        shared.avatar_rest, state.color, init, state.object, shared.object, shared.scene,
        shared.camera.with_viewmat(b.viewmat), b.frame, b.human_mask, b.object_mask, state.object_depth0, cfg,
        settings.render.raster, settings.render.background_array(), settings.objective,
        state.opt_state if carry else None,
    )  # fmt: skip
    state = FrameState(b.viewmat, fit.human, fit.object_pose, fit.color, state.object_depth0,
                       fit.opt_state if carry else None)
    return FittedFrame(state, fit.losses, fit.terms, fit.raster_counts)


@eqx.filter_jit
def hsi_program(shared: Shared, batch: HSIBatch, settings: HSISettings) -> FittedFrame:
    """Stage 2 for one frame of every seed."""
    return eqx.filter_vmap(lambda b: _fit_one(shared, b, settings))(batch)


@eqx.filter_jit
def initial_depth_program(shared: Shared, states: FrameState, object_masks: Float[Array, "S H W"],
                          settings: RenderSettings) -> InitialDepth:
    """D_O^0 (eq. 12): mean rendered depth of frame 0 inside the object's mask, per seed."""
    def one(state: FrameState, mask):
        avatar = eqx.combine(state.color, shared.avatar_rest)
        out = render_frame(avatar, state.human, shared.object, state.object, shared.scene,
                           shared.camera.with_viewmat(state.viewmat), settings.raster, settings.background_array())
        return InitialDepth(mean_masked_depth(out.depth, mask), RasterCounts.of(out))

    return eqx.filter_vmap(one)(states, object_masks)


@eqx.filter_jit
def refine_program(batch: RefineBatch, settings: RefineSettings) -> Refined:
    """Stage 3 for every seed."""
    def one(h, p, d):
        return refine_sequence(batch.hands_model, batch.vposer, h, p, settings.cfg, d, settings.objective,
                               batch.betas, settings.pair_scale)

    in_axes = (0, 0 if batch.points is not None else None, 0)
    return eqx.filter_vmap(one, in_axes=in_axes)(batch.human, batch.points, batch.dynamic)


__all__ = [
    "CameraBatch",
    "CameraSettings",
    "FittedFrame",
    "HSIBatch",
    "HSISettings",
    "InitialDepth",
    "RefineBatch",
    "RefineSettings",
    "RenderSettings",
    "Shared",
    "camera_program",
    "hsi_program",
    "initial_depth_program",
    "refine_program",
]
