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

from ..body import hand_vertex_ids
from .config import RefineConfig
from .losses import REFINE_TERMS, hand_object_contact_loss, weighted_sum
from .schedules import scan_minimize
from .state import HumanPose

NUM_BODY_JOINTS_WITH_ROOT = 22  # pelvis + 21 body joints: the joints the body pose drives


class RefineContext(NamedTuple):
    reference_joints: jax.Array  # (T, J, 3)
    joints: jax.Array  # (T, J, 3)
    body_poses: jax.Array  # (T, 63)
    contact_per_frame: jax.Array  # (T,)
    contact_weight: float
    smooth_weight: float
    human: HumanPose
    latents: jax.Array  # (T, 32)


def contact_points(obj_means, object_rotations, object_translations, max_points: int, seed: int = 0):
    """Object Gaussian centres mu_O^t of every frame (a fixed subsample of at most `max_points`)."""
    n = obj_means.shape[0]
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        obj_means = obj_means[idx]
    return jnp.einsum("tij,pj->tpi", object_rotations, obj_means) + object_translations[:, None, :]


def hand_vertices(body, max_vertices: int | None = None) -> np.ndarray:
    """H_t of eq. S1: the vertices of both hands, at most `max_vertices` (every k-th of each hand:
    the pairwise distances to the object are the refinement's largest cost)."""
    per_hand = []
    for side in ("left", "right"):
        ids = hand_vertex_ids(body, side)
        if max_vertices is not None and len(ids) > max_vertices // 2:
            ids = ids[np.linspace(0, len(ids) - 1, max_vertices // 2).round().astype(int)]
        per_hand.append(ids)
    return np.concatenate(per_hand)


def refine_sequence(hands_model, vposer, human: HumanPose, object_points, cfg: RefineConfig, dynamic: bool,
                    terms=REFINE_TERMS):
    """Refine one sequence. `hands_model` is `body.vertex_subset(hand_vertices(body))`: the skeleton
    and the hand vertices, all the refinement reads of the body; `human` holds (T, ...) stage-2
    poses; `object_points` (T, P, 3) object centres per frame or None. Returns (refined
    HumanPose, latents, loss per iteration, each term per iteration)."""
    reference = hands_model(human.global_orient, human.body_pose, human.transl)[0][:, :NUM_BODY_JOINTS_WITH_ROOT]
    latents0 = vposer.encode(human.body_pose)[0]
    smooth_weight = cfg.smooth_weight_dynamic if dynamic else cfg.smooth_weight_static
    opt = optax.adam(cfg.learning_rate)

    def decode(latents):
        return vposer.decode(latents).pose_body.reshape(latents.shape[0], 63)

    def loss_fn(params):
        body_pose = decode(params["latents"])
        joints, hand_verts = hands_model(params["global_orient"], body_pose, params["transl"])
        if object_points is None:
            contact = jnp.zeros((body_pose.shape[0],), body_pose.dtype)
        else:
            contact = jax.vmap(hand_object_contact_loss, in_axes=(0, 0, None))(
                hand_verts, object_points, cfg.contact_epsilon
            )
        ctx = RefineContext(reference, joints[:, :NUM_BODY_JOINTS_WITH_ROOT], body_pose, contact,
                            cfg.contact_weight, smooth_weight,
                            HumanPose(params["transl"], params["global_orient"], body_pose), params["latents"])
        return weighted_sum(terms, cfg.loss_weights, ctx)

    params = {"latents": latents0, "transl": human.transl, "global_orient": human.global_orient}
    params, losses, values = scan_minimize(loss_fn, params, opt, cfg.iterations)
    refined = HumanPose(params["transl"], params["global_orient"], decode(params["latents"]))
    return refined, params["latents"], losses, values
