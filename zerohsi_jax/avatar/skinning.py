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

from ..body.rotations import axis_angle_to_matrix

NUM_JOINTS = 55
NUM_BODY_JOINTS = 21
NUM_HAND_JOINTS = 15
JAW, LEFT_EYE, RIGHT_EYE, LEFT_HAND0, RIGHT_HAND0 = 22, 23, 24, 25, 40

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
    zeros3 = jnp.zeros((1, 3), dtype)

    def part(x, n):
        return jnp.zeros((n, 3), dtype) if x is None else jnp.reshape(x, (n, 3)).astype(dtype)

    return jnp.concatenate(
        [
            part(global_orient, 1),
            jnp.reshape(body_pose, (NUM_BODY_JOINTS, 3)),
            part(jaw_pose, 1),
            zeros3,
            zeros3,
            part(left_hand_pose, NUM_HAND_JOINTS),
            part(right_hand_pose, NUM_HAND_JOINTS),
        ]
    )


def forward_kinematics(
    rotations: Float[Array, "J 3 3"], joints_rest: Float[Array, "J 3"], parents: tuple[int, ...]
) -> tuple[Float[Array, "J 3"], Float[Array, "J 4 4"]]:
    """Posed joint locations and the relative transforms A (rest -> posed, smplx's
    `batch_rigid_transform`). The loop runs over the 55 joints of the tree, unrolled at trace."""
    rel = joints_rest.at[1:].add(-joints_rest[jnp.asarray(parents[1:])])
    rot_list, trans_list = [rotations[0]], [rel[0]]
    for j in range(1, len(parents)):
        p = parents[j]
        rot_list.append(rot_list[p] @ rotations[j])
        trans_list.append(rot_list[p] @ rel[j] + trans_list[p])
    chain_rot = jnp.stack(rot_list)
    posed = jnp.stack(trans_list)
    # A_j = [R_j | t_j - R_j J_j]: maps rest coordinates around joint j to posed ones.
    trans = posed - jnp.einsum("jab,jb->ja", chain_rot, joints_rest)
    return posed, homogeneous(chain_rot, trans)


def homogeneous(rot: Float[Array, "... 3 3"], trans: Float[Array, "... 3"]) -> Float[Array, "... 4 4"]:
    top = jnp.concatenate([rot, trans[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], rot.dtype), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def joint_transforms(
    pose_axis_angle: Float[Array, "J 3"], joints_rest: Float[Array, "J 3"], parents: tuple[int, ...]
) -> tuple[Float[Array, "J 3"], Float[Array, "J 4 4"]]:
    return forward_kinematics(axis_angle_to_matrix(pose_axis_angle), joints_rest, parents)


def root_transform(
    global_orient: Float[Array, "3"], transl: Float[Array, "3"], root_joint: Float[Array, "3"]
) -> tuple[Float[Array, "3 3"], Float[Array, "3"]]:
    """(R, t) of x -> R (x - J_0) + J_0 + transl: what the global orientation and translation
    add to a pose skinned without them (SMPL-X rotates the root about the pelvis joint)."""
    rot = axis_angle_to_matrix(global_orient)
    return rot, root_joint + transl - rot @ root_joint


def blend_transforms(
    weights: Float[Array, "N J"], transforms: Float[Array, "J 4 4"]
) -> Float[Array, "N 3 4"]:
    """Per-point blended 3x4 transforms sum_j w_j T_j (the last row is not needed)."""
    return jnp.einsum("nj,jab->nab", weights, transforms[:, :3, :])


def apply_blended(mats: Float[Array, "N 3 4"], points: Float[Array, "N 3"]) -> Float[Array, "N 3"]:
    return jnp.einsum("nab,nb->na", mats[:, :, :3], points) + mats[:, :, 3]
