"""Stage 3, refinement in VPoser's latent space (section 3.4, eqs. 15-16, appendix D).

Over the whole sequence: VPoser latents z_t, root translations r_t and orientations phi_t fitted
to the stage-2 joints (eq. 15), plus lambda_physics times the hand-object contact (eqs. S1-S2)
and smoothness (eq. S3) losses (eq. S4). One `lax.scan` over the iterations.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from ..body import hand_vertex_ids
from .config import RefineConfig
from .gated_optim import scan_minimize
from .losses import REFINE_TERMS, Objective, hand_object_contact_loss
from .state import HumanPose

NUM_BODY_JOINTS_WITH_ROOT = 22  # pelvis + 21 body joints: the joints the body pose drives


class Refined(NamedTuple):
    """What refining one sequence gives."""

    human: HumanPose  # (T, ...) refined poses
    latents: Float[Array, "T latent"]
    losses: Float[Array, " iterations"]
    terms: dict[str, Float[Array, " iterations"]]  # each weighted term's value per iteration


class RefineContext(NamedTuple):
    reference_joints: jax.Array  # (T, J, 3)
    joints: jax.Array  # (T, J, 3)
    body_poses: jax.Array  # (T, 63)
    contact_per_frame: jax.Array  # (T,)
    contact_weight: float
    smooth_weight: float
    human: HumanPose
    latents: jax.Array  # (T, 32)
    fit_distance: str  # 'squared' or 'euclidean': how eq. 15's L2 is taken


def contact_points(obj_means, object_rotations, object_translations, max_points: int | None = None,
                   seed: int = 0):
    """Object Gaussian centres mu_O^t of every frame (T, P, 3): all of them (the paper's set), or a
    fixed random subsample of at most `max_points` (see `contact_pair_scale`)."""
    n = obj_means.shape[0]
    if max_points is not None and n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        obj_means = obj_means[idx]
    return jnp.einsum("tij,pj->tpi", object_rotations, obj_means) + object_translations[:, None, :]


def hand_vertices(body, max_vertices: int | None = None) -> np.ndarray:
    """H_t of eq. S1: the vertices of both hands (all of them, the paper's set), or at most
    `max_vertices` (every k-th of each hand)."""
    per_hand = []
    for side in ("left", "right"):
        ids = hand_vertex_ids(body, side)
        if max_vertices is not None and len(ids) > max_vertices // 2:
            ids = ids[np.linspace(0, len(ids) - 1, max_vertices // 2).round().astype(int)]
        per_hand.append(ids)
    return np.concatenate(per_hand)


def contact_pair_scale(body, num_object_gaussians: int, cfg: RefineConfig) -> float:
    """#(full hand-object pairs) / #(pairs the subsamples hold): the factor that turns a
    subsample's contact count into an estimate of the full sets' #C_t (1 without subsampling)."""
    full_hands = len(hand_vertices(body))
    used_hands = len(hand_vertices(body, cfg.max_hand_vertices))
    used_points = num_object_gaussians if cfg.max_contact_points is None else min(num_object_gaussians,
                                                                                 cfg.max_contact_points)
    return (full_hands * num_object_gaussians) / (used_hands * used_points)


def reference_joints(hands_model, human: HumanPose, betas=None):
    """J_hat_t of eq. 15: the stage-2 poses through the SMPL-X layer with the subject's shape."""
    return hands_model(human.global_orient, human.body_pose, human.transl, betas)[0][:, :NUM_BODY_JOINTS_WITH_ROOT]


def initial_latents(vposer, body_poses, how: str):
    """Where the VPoser latents start: the encoder's mean of the stage-2 poses, or zeros (VPoser's
    mean pose)."""
    if how == "zeros":
        return jnp.zeros((body_poses.shape[0], vposer.latent_dim), body_poses.dtype)
    return vposer.encode(body_poses)[0]


def refine_sequence(hands_model, vposer, human: HumanPose, object_points, cfg: RefineConfig, dynamic,
                    objective: Objective | None = None, betas=None, pair_scale: float = 1.0) -> Refined:
    """Refine one sequence. `hands_model` is `body.vertex_subset(hand_vertices(body))`: the skeleton
    and the hand vertices, all the refinement reads of the body; `human` holds (T, ...) stage-2
    poses; `object_points` (T, P, 3) object centres per frame or None; `dynamic` whether the
    object moves (eq. S4's smoothness weight); `betas` the subject's
    shape (the avatar's), with which every pose is posed; `pair_scale` from `contact_pair_scale`;
    `objective` defaults to `REFINE_TERMS` with the config's weights."""
    if objective is None:
        objective = Objective.of(REFINE_TERMS, cfg.loss_weights)
    reference = reference_joints(hands_model, human, betas)
    latents0 = initial_latents(vposer, human.body_pose, cfg.latent_init)
    smooth_weight = jnp.where(dynamic, cfg.smooth_weight_dynamic, cfg.smooth_weight_static)
    opt = optax.adam(cfg.learning_rate)

    def decode(latents):
        return vposer.decode(latents).pose_body.reshape(latents.shape[0], 63)

    def loss_fn(params):
        body_pose = decode(params["latents"])
        joints, hand_verts = hands_model(params["global_orient"], body_pose, params["transl"], betas)
        if object_points is None:
            contact = jnp.zeros((body_pose.shape[0],), body_pose.dtype)
        else:
            contact = jax.vmap(hand_object_contact_loss, in_axes=(0, 0, None, None, None))(
                hand_verts, object_points, cfg.contact_epsilon, pair_scale, cfg.contact_chunk
            )
        ctx = RefineContext(reference, joints[:, :NUM_BODY_JOINTS_WITH_ROOT], body_pose, contact,
                            cfg.contact_weight, smooth_weight,
                            HumanPose(params["transl"], params["global_orient"], body_pose), params["latents"],
                            cfg.fit_distance)
        return objective(ctx)

    params = {"latents": latents0, "transl": human.transl, "global_orient": human.global_orient}
    fit = scan_minimize(loss_fn, params, opt, cfg.iterations)
    params = fit.params
    refined = HumanPose(params["transl"], params["global_orient"], decode(params["latents"]))
    return Refined(refined, params["latents"], fit.losses, fit.aux)
