"""Stage 2, the per-frame HSI fit (section 3.3, eqs. 9-14).

Parameters per frame: root translation r_t and global orientation phi_t (from frame t-1), body
pose Theta_t (from a per-frame estimate when one is given, else from frame t-1), the object's
relative 6-DoF pose to frame t-1, and the avatar's colour net (fine-tuned every k-th step).
The loss is `HSI_TERMS` weighted by the config: L_rgb (eq. 10) + 1e-3 L_center (eq. 11) +
1e-3 L_depth (eq. 13). One `lax.scan` over the iterations; Optax state in the carry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Int

from ..avatar.model import NETWORKS, AvatarMaps
from ..splat import Camera, Gaussians, RasterConfig, RenderOutput, render
from ..splat.bound_scene import bind_static, render_bound, render_static
from .config import HSIFitConfig
from .gated_optim import after, every, labelled_adam, restart_gates, scan_minimize
from .losses import HSI_TERMS, Objective
from .state import (
    NUM_GROUPS,
    OBJECT_GROUP,
    SCENE_GROUP,
    HumanPose,
    ObjectPose,
    RasterCounts,
    compose_gaussians,
    moving_gaussians,
)


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


def scene_renderer(scene: Gaussians, camera: Camera, raster: RasterConfig, background, bind: bool
                   ) -> tuple[Callable[[Gaussians], RenderOutput], Int[Array, ""]]:
    """Eq. 9's renderer for a fixed camera, as a function of the moving Gaussians (avatar and
    object, groups 0 and 1), and the scene's share of a render's tile-Gaussian pairs. With `bind`,
    the static scene is projected, coloured, binned and rendered alone here, once; each render then
    merges the moving Gaussians into the tile lists they reach and composites those tiles only,
    the others keeping the scene's render (`bind_static`, `render_static`, `render_bound`; equal
    to the full render up to round-off, and so is the pose gradient), the moving pairs in a buffer
    of `raster.dynamic_pair_capacity` (default: the whole render's pair capacity); without, the
    scene is rendered with them every time (and its share counted as 0)."""
    scene = scene.with_group(SCENE_GROUP)
    if not bind:
        full = lambda moving: render(Gaussians.concatenate([moving, scene]), camera, background,  # noqa: E731
                                     num_groups=NUM_GROUPS, config=raster)
        return full, jnp.zeros((), jnp.int32)
    bound = bind_static(scene, camera, raster)
    # Tiles the avatar and object do not reach show the scene alone: rendered here, once.
    static = render_static(bound, background, num_groups=NUM_GROUPS, config=raster)
    merged = lambda moving: render_bound(bound, moving, camera, background, num_groups=NUM_GROUPS,  # noqa: E731
                                         config=raster, static=static)
    return merged, bound.num_pairs


# What an HSI iteration evaluates of the avatar's networks (`network_step_kind`).
ALL_NETWORKS, COLOR_NET_ONLY, HELD_OUTPUTS = 0, 1, 2


def network_step_kind(step: Int[Array, ""], cfg: HSIFitConfig, xp=jnp) -> Int[Array, ""]:
    """Which networks iteration `step` of a frame evaluates: all of them every `network_every`-th
    step (0: the first step only), else the colour net alone on its fine-tuning steps (every
    `color_every`-th, so that its gradient is the paper's), else none (outputs held). `xp=numpy`
    evaluates the schedule on the host (`reachable_step_kinds`)."""
    every = cfg.network_every
    refresh = step == 0 if every == 0 else step % every == 0
    color = step % cfg.color_every == 0 if cfg.color_every > 0 else xp.zeros((), bool)
    return xp.where(refresh, ALL_NETWORKS, xp.where(color, COLOR_NET_ONLY, HELD_OUTPUTS))


def reachable_step_kinds(cfg: HSIFitConfig) -> list[int]:
    """The kinds (`network_step_kind`) the iterations of a frame reach, in increasing order."""
    return sorted({int(k) for k in np.atleast_1d(network_step_kind(np.arange(cfg.iterations), cfg, xp=np))})


def amortised_avatar(avatar, human: HumanPose, camera_position, held: AvatarMaps, kind: int, cfg: HSIFitConfig
                     ) -> tuple[Gaussians, AvatarMaps]:
    """The avatar's Gaussians on an iteration of `kind` (`network_step_kind`): its networks
    evaluated (all, or the colour net alone) or their `held` outputs used (then only skinning and
    the root transform depend on the pose), and the outputs to hold for the next iteration."""
    pose = (human.global_orient, human.body_pose, human.transl)
    nets = {ALL_NETWORKS: NETWORKS, COLOR_NET_ONLY: ("color",), HELD_OUTPUTS: ()}[kind]
    maps = held.replace(avatar.network_maps(*pose, camera_position, nets=nets, dtype=cfg.network_dtype)) \
        if nets else held
    return avatar.pose_gaussians(maps, *pose), maps


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
    to `HSI_TERMS` with the config's weights. The levers of the config (`network_every`,
    `network_dtype`, `bind_scene`, whose buffer of moving pairs `raster.dynamic_pair_capacity`
    sizes) change how each iteration is computed, not what it optimises."""
    if objective is None:
        objective = Objective.of(HSI_TERMS, cfg.loss_weights)
    opt = hsi_optimizer(cfg, obj is not None)
    params = frame_parameters(human_init, color, frame.dtype)
    if opt_state is not None:
        opt_state = restart_gates(opt_state)
    render_moving, scene_pairs = scene_renderer(scene, camera, raster, background, cfg.bind_scene)
    amortised = cfg.network_every != 1

    def loss_fn(p, held=None, kind: int = ALL_NETWORKS):
        avatar = eqx.combine(p["color"], avatar_rest)
        human = HumanPose(p["root"]["transl"], p["root"]["global_orient"], p["pose"])
        object_pose = object_prev.compose_relative(p["object"])
        if amortised:
            human_g, held = amortised_avatar(avatar, human, camera.position, held, kind, cfg)
        else:
            human_g = avatar(human.global_orient, human.body_pose, human.transl, camera.position,
                             dtype=cfg.network_dtype)
        out = render_moving(moving_gaussians(human_g, obj, object_pose))
        ctx = HSIContext(out, frame, human_mask, object_mask, out.group_masks[..., OBJECT_GROUP],
                         object_depth0, cfg.ssim_weight, human, object_pose, cfg.l2_kind)
        total, values = objective(ctx)
        # The render's pairs less the scene's: what the bound render's moving-pair buffer had to hold.
        aux = (values, RasterCounts.of(out, out.num_pairs - scene_pairs if cfg.bind_scene else None))
        return (total, (aux, held)) if amortised else (total, aux)

    if amortised:
        avatar0 = eqx.combine(color, avatar_rest)
        shapes = jax.eval_shape(lambda: avatar0.network_maps(human_init.global_orient, human_init.body_pose,
                                                             human_init.transl, camera.position))
        held = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        # Only the kinds the schedule reaches are compiled (each is a differentiated avatar): with
        # network_every 0 and no colour fine-tuning, say, the colour-net-only branch never runs.
        kinds = reachable_step_kinds(cfg)
        position = jnp.asarray([kinds.index(k) if k in kinds else 0 for k in range(3)], jnp.int32)
        branches = [functools.partial(loss_fn, kind=k) for k in kinds]
        fit = scan_minimize(branches, params, opt, cfg.iterations, opt_state=opt_state, held=held,
                            branch=lambda step: position[network_step_kind(step, cfg)])
    else:
        fit = scan_minimize(loss_fn, params, opt, cfg.iterations, opt_state=opt_state)
    params, (values, counts) = fit.params, fit.aux
    human = HumanPose(params["root"]["transl"], params["root"]["global_orient"], params["pose"])
    return FrameFit(human, object_prev.compose_relative(params["object"]), params["color"], fit.opt_state,
                    fit.losses, values, counts.largest())
