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


def hand_vertices(body) -> np.ndarray:
    """H_t of eq. S1: the vertices of both hands (computed once, outside any jit)."""
    return np.concatenate([hand_vertex_ids(body, "left"), hand_vertex_ids(body, "right")])


def refine_sequence(body, vposer, human: HumanPose, object_points, hands, cfg: RefineConfig, dynamic: bool,
                    terms=REFINE_TERMS):
    """Refine one sequence. `human` holds (T, ...) stage-2 poses; `object_points` (T, P, 3) object
    centres per frame or None; `hands` the hand vertex ids (`hand_vertices(body)`). Returns
    (refined HumanPose, latents, loss trace, term traces)."""
    beta = jnp.zeros((body.num_betas,), human.transl.dtype)
    reference = body(betas=beta, global_orient=human.global_orient, body_pose=human.body_pose,
                     transl=human.transl).joints[:, :NUM_BODY_JOINTS_WITH_ROOT]
    latents0 = vposer.encode(human.body_pose)[0]
    smooth_weight = cfg.smooth_weight_dynamic if dynamic else cfg.smooth_weight_static
    opt = optax.adam(cfg.learning_rate)

    def decode(latents):
        return vposer.decode(latents).pose_body.reshape(latents.shape[0], 63)

    def loss_fn(params):
        body_pose = decode(params["latents"])
        out = body(betas=beta, global_orient=params["global_orient"], body_pose=body_pose, transl=params["transl"])
        if object_points is None:
            contact = jnp.zeros((body_pose.shape[0],), body_pose.dtype)
        else:
            contact = jax.vmap(hand_object_contact_loss, in_axes=(0, 0, None))(
                out.vertices[:, hands], object_points, cfg.contact_epsilon
            )
        ctx = RefineContext(reference, out.joints[:, :NUM_BODY_JOINTS_WITH_ROOT], body_pose, contact,
                            cfg.contact_weight, smooth_weight,
                            HumanPose(params["transl"], params["global_orient"], body_pose), params["latents"])
        return weighted_sum(terms, cfg.loss_weights, ctx)

    def step(carry, _):
        params, opt_state = carry
        (loss, values), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, values)

    params = {"latents": latents0, "transl": human.transl, "global_orient": human.global_orient}
    (params, _), (losses, values) = jax.lax.scan(step, (params, opt.init(params)), None, length=cfg.iterations)
    refined = HumanPose(params["transl"], params["global_orient"], decode(params["latents"]))
    return refined, params["latents"], losses, values
