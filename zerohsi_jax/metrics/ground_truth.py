"""Errors against a known ground truth (the demo and the synthetic benchmark)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..geometry import axis_angle_to_matrix

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


def body_joints(body, transl, global_orient, body_pose, betas=None):
    """The 22 joints the body pose drives, posed with the subject's shape `betas` (None: zeros)."""
    return body(betas=betas, global_orient=global_orient, body_pose=body_pose, transl=transl).joints[
        ..., :BODY_JOINTS, :]


def _betas(x):
    return None if x is None else jnp.asarray(x)


def human_errors(body, human, truth, betas=None, first_frame: int = 1) -> dict:
    """MPJPE (mm), root translation (mm) and orientation (deg) of (S, T) poses against the truth,
    over frames first_frame..T-1, averaged over seeds. `betas`: the shape the poses are posed
    with (the reconstruction's subject); the truth uses its own."""
    sl = slice(first_frame, None)
    gt = truth.human
    gt_joints = body_joints(body, gt.transl[sl], gt.global_orient[sl], gt.body_pose[sl], _betas(truth.betas))
    pred = body_joints(body, jnp.asarray(human.transl)[:, sl], jnp.asarray(human.global_orient)[:, sl],
                       jnp.asarray(human.body_pose)[:, sl], _betas(betas))
    return {
        "mpjpe_mm": 1000 * float(mpjpe(pred, gt_joints[None])),
        "root_translation_mm": 1000 * float(jnp.mean(jnp.linalg.norm(jnp.asarray(human.transl)[:, sl] - gt.transl[sl],
                                                                       axis=-1))),
        "root_orientation_deg": float(jnp.mean(rotation_angle_deg(
            axis_angle_to_matrix(jnp.asarray(human.global_orient)[:, sl]),
            axis_angle_to_matrix(gt.global_orient[sl])))),
    }


def ground_truth_errors(body, result, truth, estimates=None, first_frame: int = 1) -> dict:
    """Errors of a `Reconstruction` (S seeds) against a `GroundTruth`, over frames first_frame..T-1,
    averaged over seeds: MPJPE (mm), root translation (mm) and orientation (deg) of the refined
    poses, the same of the stage-2 poses (`*_stage2_*`, what the paper scores), camera rotation
    (deg) and centre (mm), object translation (mm) and rotation (deg). With `estimates` (S, T, 63),
    also the MPJPE of ground-truth roots with the estimated body poses: what the fit started from.
    Poses are posed with `result.betas`, the subject's shape."""
    sl = slice(first_frame, None)
    betas = getattr(result, "betas", None)
    out = human_errors(body, result.human, truth, betas, first_frame)
    stage2 = human_errors(body, result.human_stage2, truth, betas, first_frame)
    out.update({
        "mpjpe_stage2_mm": stage2["mpjpe_mm"],
        "root_translation_stage2_mm": stage2["root_translation_mm"],
        "root_orientation_stage2_deg": stage2["root_orientation_deg"],
    })
    gt = truth.human
    if estimates is not None:
        n = np.asarray(estimates).shape[0]
        est = with_body_poses(gt, estimates, n)
        out["mpjpe_estimate_mm"] = human_errors(body, est, truth, betas, first_frame)["mpjpe_mm"]
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


def with_body_poses(truth_human, body_poses, seeds: int):
    """The truth's roots with other body poses: (S, T) poses a pose estimator's output would give."""
    from ..reconstruct.state import HumanPose

    shape = (seeds,) + tuple(np.shape(truth_human.transl))
    return HumanPose(np.broadcast_to(np.asarray(truth_human.transl), shape),
                     np.broadcast_to(np.asarray(truth_human.global_orient), shape), np.asarray(body_poses))


def per_frame_joint_errors_mm(body, human, truth, betas=None) -> np.ndarray:
    """(S, T) MPJPE per frame, for plots."""
    gt = body_joints(body, truth.human.transl, truth.human.global_orient, truth.human.body_pose, _betas(truth.betas))
    pred = body_joints(body, jnp.asarray(human.transl), jnp.asarray(human.global_orient), jnp.asarray(human.body_pose),
                       _betas(betas))
    return 1000 * np.asarray(jnp.mean(jnp.linalg.norm(pred - gt[None], axis=-1), axis=-1))
