"""SMPL-X kinematics and linear blend skinning of the avatar's points and Gaussians.

The avatar needs only the skeleton of its SMPL-X body: the joint locations of the shaped rest
mesh (`joints_rest`, from the avatar's betas) and the kinematic tree. The joints' rigid
transforms do not depend on pose blend shapes, so skinning needs no mesh at run time.

Conventions are the official code's (its fork of smplx returns `A` with the translation):
`A_j` maps rest-pose coordinates to posed ones; the canonical space of the avatar is the
SMPL-X mesh in the canonical pose (left hip +25 deg about z, right hip -25 deg), and a point
is posed by `sum_j w_j A_live_j A_cano_j^-1`. The pose map and the Gaussians are skinned
without the root ('woRoot': no global orientation, no translation); the root transform
`x -> R_phi (x - J_0) + J_0 + r` then gives world coordinates, which is exactly the official
`cano2live_jnt_mats` with the root included, since that transform is rigid.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..body import lbs
from ..body.joint_names import NUM_BODY_JOINTS, NUM_HAND_JOINTS
from ..geometry import axis_angle_to_matrix, rigid

# The official canonical pose (config.py): axis-angle z of the left and right hips, +-25 degrees.
CANONICAL_BODY_POSE = np.zeros((NUM_BODY_JOINTS, 3), np.float32)
CANONICAL_BODY_POSE[0, 2] = math.radians(25.0)
CANONICAL_BODY_POSE[1, 2] = math.radians(-25.0)


def full_pose(
    body_pose: Float[Array, "63"],
    jaw_pose: Float[Array, "3"] | None = None,
    left_hand_pose: Float[Array, "45"] | None = None,
    right_hand_pose: Float[Array, "45"] | None = None,
    global_orient: Float[Array, "3"] | None = None,
) -> Float[Array, "55 3"]:
    """The 55 joint rotations (axis-angle) in SMPL-X order; missing parts are zero (flat hands
    with flat_hand_mean, closed jaw, eyes straight, no root rotation)."""
    dtype = body_pose.dtype

    def part(x, n):
        return jnp.zeros((3 * n,), dtype) if x is None else jnp.reshape(x, (3 * n,)).astype(dtype)

    return lbs.assemble_full_pose(
        part(global_orient, 1), jnp.reshape(body_pose, (3 * NUM_BODY_JOINTS,)), part(jaw_pose, 1),
        part(None, 1), part(None, 1), part(left_hand_pose, NUM_HAND_JOINTS), part(right_hand_pose, NUM_HAND_JOINTS),
    )  # fmt: skip


def joint_transforms(
    pose_axis_angle: Float[Array, "J 3"], joints_rest: Float[Array, "J 3"], parents: tuple[int, ...]
) -> tuple[Float[Array, "J 3"], Float[Array, "J 4 4"]]:
    """Posed joint locations and the relative transforms A (rest -> posed) of a pose."""
    world_rot, posed, rel_trans = lbs.forward_kinematics(axis_angle_to_matrix(pose_axis_angle), joints_rest, parents)
    return posed, rigid(world_rot, rel_trans)


def root_transform(
    global_orient: Float[Array, "3"], transl: Float[Array, "3"], root_joint: Float[Array, "3"]
) -> tuple[Float[Array, "3 3"], Float[Array, "3"]]:
    """(R, t) of x -> R (x - J_0) + J_0 + transl: what the global orientation and translation
    add to a pose skinned without them (SMPL-X rotates the root about the pelvis joint)."""
    rot = axis_angle_to_matrix(global_orient)
    return rot, root_joint + transl - rot @ root_joint
