"""Errors against a known ground truth (the demo and the synthetic benchmark)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..body import axis_angle_to_matrix

BODY_JOINTS = 22  # pelvis and the 21 joints the body pose drives


def mpjpe(pred: Float[Array, "... J 3"], truth: Float[Array, "... J 3"]) -> Float[Array, ""]:
    """Mean per-joint position error, in the inputs' unit (global: no root alignment)."""
    return jnp.mean(jnp.linalg.norm(pred - truth, axis=-1))


def rotation_angle_deg(r_pred: Float[Array, "... 3 3"], r_truth: Float[Array, "... 3 3"]) -> Float[Array, "..."]:
    """Geodesic angle between rotations, in degrees."""
    rel = jnp.einsum("...ji,...jk->...ik", r_pred, r_truth)
    cos = (jnp.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def camera_centers(viewmats: Float[Array, "... 4 4"]) -> Float[Array, "... 3"]:
    r, t = viewmats[..., :3, :3], viewmats[..., :3, 3]
    return -jnp.einsum("...ji,...j->...i", r, t)


def body_joints(body, transl, global_orient, body_pose):
    return body(global_orient=global_orient, body_pose=body_pose, transl=transl).joints[..., :BODY_JOINTS, :]


def ground_truth_errors(body, result, truth, estimates=None, first_frame: int = 1) -> dict:
    """Errors of a `Reconstruction` (S seeds) against a `GroundTruth`, over frames first_frame..T-1,
    averaged over seeds: MPJPE of the refined and of the stage-2 poses (mm), root translation (mm)
    and orientation (deg), camera rotation (deg) and centre (mm), object translation (mm) and
    rotation (deg). With `estimates` (S, T, 63), also the MPJPE of ground-truth roots with the
    estimated body poses: what the fit started from."""
    sl = slice(first_frame, None)
    gt = truth.human
    gt_joints = body_joints(body, gt.transl[sl], gt.global_orient[sl], gt.body_pose[sl])

    def joints_of(h):
        return body_joints(body, jnp.asarray(h.transl)[:, sl], jnp.asarray(h.global_orient)[:, sl],
                           jnp.asarray(h.body_pose)[:, sl])

    out = {
        "mpjpe_mm": 1000 * float(mpjpe(joints_of(result.human), gt_joints[None])),
        "mpjpe_stage2_mm": 1000 * float(mpjpe(joints_of(result.human_stage2), gt_joints[None])),
    }
    if estimates is not None:
        est = body_joints(body, gt.transl[sl][None], gt.global_orient[sl][None], jnp.asarray(estimates)[:, sl])
        out["mpjpe_estimate_mm"] = 1000 * float(mpjpe(est, gt_joints[None]))
    h = result.human
    out["root_translation_mm"] = 1000 * float(jnp.mean(jnp.linalg.norm(jnp.asarray(h.transl)[:, sl] - gt.transl[sl],
                                                                          axis=-1)))
    out["root_orientation_deg"] = float(jnp.mean(rotation_angle_deg(
        axis_angle_to_matrix(jnp.asarray(h.global_orient)[:, sl]), axis_angle_to_matrix(gt.global_orient[sl]))))
    v_pred, v_gt = jnp.asarray(result.viewmats)[:, sl], jnp.asarray(truth.viewmats)[sl]
    out["camera_rotation_deg"] = float(jnp.mean(rotation_angle_deg(v_pred[..., :3, :3], v_gt[..., :3, :3])))
    out["camera_translation_mm"] = 1000 * float(jnp.mean(jnp.linalg.norm(camera_centers(v_pred) - camera_centers(v_gt),
                                                                            axis=-1)))
    o_pred = jnp.asarray(result.object_poses)[:, sl]
    out["object_translation_mm"] = 1000 * float(jnp.mean(jnp.linalg.norm(
        o_pred[..., :3, 3] - truth.object_poses.translation[sl], axis=-1)))
    out["object_rotation_deg"] = float(jnp.mean(rotation_angle_deg(o_pred[..., :3, :3],
                                                                   truth.object_poses.rotation[sl])))
    return {k: round(v, 3) for k, v in out.items()}


def per_frame_joint_errors_mm(body, human, truth) -> np.ndarray:
    """(S, T) MPJPE per frame, for plots."""
    gt = body_joints(body, truth.human.transl, truth.human.global_orient, truth.human.body_pose)
    pred = body_joints(body, jnp.asarray(human.transl), jnp.asarray(human.global_orient), jnp.asarray(human.body_pose))
    return 1000 * np.asarray(jnp.mean(jnp.linalg.norm(pred - gt[None], axis=-1), axis=-1))
