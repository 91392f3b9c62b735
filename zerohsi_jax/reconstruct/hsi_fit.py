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
from .losses import HSI_TERMS, weighted_sum
from .schedules import after, every, labelled_adam, scan_minimize
from .state import NUM_GROUPS, OBJECT_GROUP, HumanPose, ObjectPose, compose_gaussians


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


def fit_frame(avatar_rest, color, human_init: HumanPose, object_prev: ObjectPose, obj: Gaussians | None,
              scene: Gaussians, camera: Camera, frame, human_mask, object_mask, object_depth0,
              cfg: HSIFitConfig, raster: RasterConfig, background, terms=HSI_TERMS):
    """Fit frame t. Returns (human pose, object pose, colour net, loss per iteration, each term
    per iteration, largest tile overflow)."""
    opt = hsi_optimizer(cfg, obj is not None)
    params = {
        "root": {"transl": human_init.transl, "global_orient": human_init.global_orient},
        "pose": human_init.body_pose,
        "object": jnp.zeros((6,), frame.dtype),
        "color": color,
    }

    def loss_fn(p):
        avatar = eqx.combine(p["color"], avatar_rest)
        human = HumanPose(p["root"]["transl"], p["root"]["global_orient"], p["pose"])
        object_pose = object_prev.compose_relative(p["object"])
        out = render_frame(avatar, human, obj, object_pose, scene, camera, raster, background)
        ctx = HSIContext(out, frame, human_mask, object_mask, out.group_masks[..., OBJECT_GROUP],
                         object_depth0, cfg.ssim_weight, human, object_pose)
        total, values = weighted_sum(terms, cfg.loss_weights, ctx)
        return total, (values, out.overflow)

    params, losses, (values, overflow) = scan_minimize(loss_fn, params, opt, cfg.iterations)
    human = HumanPose(params["root"]["transl"], params["root"]["global_orient"], params["pose"])
    return human, object_prev.compose_relative(params["object"]), params["color"], losses, values, jnp.max(overflow)
