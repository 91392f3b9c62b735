"""Stage 2, the per-frame HSI fit (section 3.3, eqs. 9-14).

Parameters per frame: root translation r_t and global orientation phi_t (from frame t-1), body
pose Theta_t (from a per-frame estimate when one is given, else from frame t-1), the object's
relative 6-DoF pose to frame t-1, and the avatar's colour net (fine-tuned every k-th step).
The loss is `HSI_TERMS` weighted by the config: L_rgb (eq. 10) + 1e-3 L_center (eq. 11) +
1e-3 L_depth (eq. 13). One `lax.scan` over the iterations; Optax state in the carry.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ..splat import Camera, Gaussians, RasterConfig, RenderOutput, render
from .config import HSIFitConfig
from .gated_optim import after, every, labelled_adam, restart_gates, scan_minimize
from .losses import HSI_TERMS, Objective
from .state import NUM_GROUPS, OBJECT_GROUP, HumanPose, ObjectPose, RasterCounts, compose_gaussians


class HSIContext(NamedTuple):
    """What an HSI loss term may read."""

    render: RenderOutput
    frame: jax.Array
    human_mask: jax.Array
    object_mask: jax.Array
    rendered_object_mask: jax.Array
    object_depth0: jax.Array
    ssim_weight: float
    human: HumanPose
    object_pose: ObjectPose
    l2_kind: str  # 'squared' or 'euclidean': how eqs. 11 and 13 take their L2


def hsi_optimizer(cfg: HSIFitConfig, has_object: bool) -> optax.GradientTransformation:
    """Adam per parameter group: body pose frozen for the root-only warm-up, colour net on every
    k-th step at its own rate, object pose from the first step."""
    lrs = {
        "root": cfg.learning_rate,
        "pose": cfg.learning_rate if cfg.fit_body_pose else 0.0,
        "object": cfg.learning_rate if (cfg.fit_object and has_object) else 0.0,
        "color": cfg.color_learning_rate if cfg.color_every > 0 else 0.0,
    }
    schedules = {
        "pose": lambda opt: after(opt, cfg.root_only_iterations),
        "color": lambda opt: every(opt, cfg.color_every),
    }
    transforms = labelled_adam(lrs, schedules)
    labels = {"root": "root", "pose": "pose", "object": "object", "color": "color"}
    return optax.multi_transform(transforms, labels)


def render_frame(avatar, human: HumanPose, obj: Gaussians | None, object_pose: ObjectPose, scene: Gaussians,
                 camera: Camera, raster: RasterConfig, background) -> RenderOutput:
    """I_hat_t = R(A(r, phi, Theta; T_t), G_O(P_t), G_S; T_t), eq. 9, with group masks."""
    g = compose_gaussians(avatar, human, obj, object_pose, scene, camera.position)
    return render(g, camera, background, num_groups=NUM_GROUPS, config=raster)


class FrameFit(NamedTuple):
    """What fitting one frame gives."""

    human: HumanPose
    object_pose: ObjectPose
    color: eqx.Module
    opt_state: optax.OptState
    losses: jax.Array  # (iterations,)
    terms: dict  # name -> (iterations,)
    raster_counts: RasterCounts  # pairs dropped, and what the largest render needed


def frame_parameters(human: HumanPose, color, dtype=jnp.float32) -> dict:
    """The HSI fit's parameters: root, body pose, the object's relative pose, the colour net."""
    return {
        "root": {"transl": human.transl, "global_orient": human.global_orient},
        "pose": human.body_pose,
        "object": jnp.zeros((6,), dtype),
        "color": color,
    }


def fit_frame(avatar_rest, color, human_init: HumanPose, object_prev: ObjectPose, obj: Gaussians | None,
              scene: Gaussians, camera: Camera, frame, human_mask, object_mask, object_depth0,
              cfg: HSIFitConfig, raster: RasterConfig, background, objective: Objective | None = None,
              opt_state=None) -> FrameFit:
    """Fit frame t, with a fresh Adam, or continuing `opt_state` (the previous frame's, when
    `cfg.adam_state` is 'carry'; its warm-up and colour schedules restart). `objective` defaults
    to `HSI_TERMS` with the config's weights."""
    if objective is None:
        objective = Objective.of(HSI_TERMS, cfg.loss_weights)
    opt = hsi_optimizer(cfg, obj is not None)
    params = frame_parameters(human_init, color, frame.dtype)
    if opt_state is not None:
        opt_state = restart_gates(opt_state)

    def loss_fn(p):
        avatar = eqx.combine(p["color"], avatar_rest)
        human = HumanPose(p["root"]["transl"], p["root"]["global_orient"], p["pose"])
        object_pose = object_prev.compose_relative(p["object"])
        out = render_frame(avatar, human, obj, object_pose, scene, camera, raster, background)
        ctx = HSIContext(out, frame, human_mask, object_mask, out.group_masks[..., OBJECT_GROUP],
                         object_depth0, cfg.ssim_weight, human, object_pose, cfg.l2_kind)
        total, values = objective(ctx)
        return total, (values, RasterCounts.of(out))

    fit = scan_minimize(loss_fn, params, opt, cfg.iterations, opt_state=opt_state)
    params, (values, counts) = fit.params, fit.aux
    human = HumanPose(params["root"]["transl"], params["root"]["global_orient"], params["pose"])
    return FrameFit(human, object_prev.compose_relative(params["object"]), params["color"], fit.opt_state,
                    fit.losses, values, counts.largest())
