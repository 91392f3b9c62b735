"""The steps of SMPL-X's linear blend skinning, one named function each, in the order of smplx's
`lbs.py`: full pose assembly, blend shapes, joint regression, forward kinematics down the kinematic
tree (smplx's `batch_rigid_transform`) and skinning. The body model (`smplx_model.SMPLX`, its vertex
subsets) and the avatar's skinning (`zerohsi_jax.avatar.skinning`) are both built from them.

Layouts are chosen for speed, not copied from smplx (see `smplx_model`'s docstring): per-vertex
arrays are coordinate-major, (batch, 3, V), so blend shapes and skinning are plain 2-D products with
the long vertex axis innermost; the joint regressor is folded into the shape directions at load time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .joint_names import NUM_JOINTS, NUM_POSE_FEATURES

SKIN_CHUNK = 8


# ------------------------------------------------------------------------------------ full pose
def assemble_full_pose(
    global_orient: Float[Array, "*b 3"],
    body_pose: Float[Array, "*b 63"],
    jaw_pose: Float[Array, "*b 3"],
    leye_pose: Float[Array, "*b 3"],
    reye_pose: Float[Array, "*b 3"],
    left_hand_pose: Float[Array, "*b 45"],
    right_hand_pose: Float[Array, "*b 45"],
) -> Float[Array, "*b 55 3"]:
    """The 55 joint rotations (axis-angle) in SMPL-X's joint order. Hand poses are full 45-D
    axis-angle here: PCA coefficients and the hand mean are applied by the caller."""
    flat = jnp.concatenate(
        [global_orient, body_pose, jaw_pose, leye_pose, reye_pose, left_hand_pose, right_hand_pose], axis=-1
    )
    return flat.reshape(*flat.shape[:-1], NUM_JOINTS, 3)


# --------------------------------------------------------------------------------- blend shapes
def pose_feature(rotations: Float[Array, "*b 55 3 3"]) -> Float[Array, "*b 486"]:
    """SMPL's pose blend-shape input: R_j - I of every joint but the root, flattened."""
    eye = jnp.eye(3, dtype=rotations.dtype)
    return (rotations[..., 1:, :, :] - eye).reshape(*rotations.shape[:-3], NUM_POSE_FEATURES)


def blend_shapes(
    template_cm: Float[Array, " V3"], coefficients: Float[Array, "*b D"], directions: Float[Array, "D V3"]
) -> Float[Array, "*b V3"]:
    """Template plus a linear combination of blend directions, coordinate-major (index c * V + v).
    Shape, expression and pose blend shapes are one call with the stacked directions and the
    concatenated [betas, expression, pose feature] (one product instead of three)."""
    return template_cm + coefficients @ directions


# ----------------------------------------------------------------------------- joint regression
def fold_joint_regressor(
    regressor: np.ndarray, v_template: np.ndarray, shape_dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(J_regressor @ v_template (55, 3), J_regressor @ shapedirs (S, 165)), in float64 at load time.

    Joints are linear in the shape coefficients, so regressing them from the shaped mesh equals
    this template plus the coefficients times these directions, without a (55 x V) product per call."""
    regressor64 = np.asarray(regressor, np.float64)
    joint_template = regressor64 @ np.asarray(v_template, np.float64)
    joint_dirs = np.einsum("jv,vcs->jcs", regressor64, np.asarray(shape_dirs, np.float64))
    return joint_template, joint_dirs.reshape(regressor64.shape[0] * 3, shape_dirs.shape[-1]).T


def regress_joints(
    joint_template: Float[Array, "J 3"], joint_dirs: Float[Array, "S J3"], coefficients: Float[Array, "*b S"]
) -> Float[Array, "*b J 3"]:
    """Rest joints of the shaped body (`fold_joint_regressor`'s arrays)."""
    return joint_template + (coefficients @ joint_dirs).reshape(*coefficients.shape[:-1], *joint_template.shape)


# ---------------------------------------------------------------------------- forward kinematics
@functools.cache
def kinematic_levels(parents: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Joints grouped by depth in the tree (SMPL-X: 11 levels), each level after its parents."""
    depth = np.zeros(len(parents), dtype=np.int64)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    return tuple(tuple(int(j) for j in np.nonzero(depth == d)[0]) for d in range(depth.max() + 1))


def forward_kinematics(
    rotations: Float[Array, "*b J 3 3"],
    rest_joints: Float[Array, "*b J 3"],
    parents: tuple[int, ...],
) -> tuple[Float[Array, "*b J 3 3"], Float[Array, "*b J 3"], Float[Array, "*b J 3"]]:
    """smplx's `batch_rigid_transform`: (world rotation, posed position, relative translation) of
    every joint. The relative transform [R_j | t_j] maps rest-pose coordinates to posed ones
    (it rotates about the rest joint: t_j = posed joint - R_j @ rest joint).

    The chain is evaluated one tree level at a time, each level one batched product, instead of
    one product per joint."""
    levels = kinematic_levels(tuple(parents))
    rot_levels = [rotations[..., list(levels[0]), :, :]]
    pos_levels = [rest_joints[..., list(levels[0]), :]]
    for depth in range(1, len(levels)):
        level = levels[depth]
        prev = levels[depth - 1]
        slot = [prev.index(parents[j]) for j in level]
        parent_rot = rot_levels[-1][..., slot, :, :]
        offset = rest_joints[..., list(level), :] - rest_joints[..., [parents[j] for j in level], :]
        # 3x3 products written as broadcast multiply-adds: XLA's algebraic simplifier mis-shapes
        # these batched dots once vmap adds a third batch axis (a verifier error), and at this
        # size the elementwise form is as fast.
        rot_levels.append(
            jnp.sum(parent_rot[..., :, :, None] * rotations[..., list(level), :, :][..., None, :, :], axis=-2)
        )
        pos_levels.append(jnp.sum(parent_rot * offset[..., None, :], axis=-1) + pos_levels[-1][..., slot, :])
    order = [j for level in levels for j in level]
    inverse = np.argsort(order)
    world_rot = jnp.concatenate(rot_levels, axis=-3)[..., inverse, :, :]
    world_pos = jnp.concatenate(pos_levels, axis=-2)[..., inverse, :]
    rel_trans = world_pos - jnp.einsum("...jab,...jb->...ja", world_rot, rest_joints)
    return world_rot, world_pos, rel_trans


# ------------------------------------------------------------------------------------- skinning
def _skin_block(rows, v_posed, weights_t):
    """rows (m, 12, J) transform entries per joint, v_posed (m, 3, V) -> skinned vertices (m, V, 3)."""
    m = rows.shape[0]
    num_joints, num_verts = weights_t.shape
    blended = (rows.reshape(m * 12, num_joints) @ weights_t).reshape(m, 3, 4, num_verts)
    out = (
        blended[:, :, 0] * v_posed[:, 0:1]
        + blended[:, :, 1] * v_posed[:, 1:2]
        + blended[:, :, 2] * v_posed[:, 2:3]
        + blended[:, :, 3]
    )
    return out.transpose(0, 2, 1)


def linear_blend_skinning(
    world_rot: Float[Array, "n J 3 3"],
    rel_trans: Float[Array, "n J 3"],
    v_posed: Float[Array, "n 3 V"],
    weights_t: Float[Array, "J V"],
    chunk: int | None = SKIN_CHUNK,
) -> Float[Array, "n V 3"]:
    """Vertices moved by their weighted sum of the joints' relative transforms: the 12 transform
    entries of every vertex are blended by one (12 n, J) x (J, V) product.

    With `chunk`, the batch is skinned `chunk` examples at a time: the (12 x batch, V) blended
    transforms are the largest temporary of the full mesh's forward pass, and keeping them small
    lets the allocator reuse memory between calls instead of faulting in fresh pages every time.
    A few hundred vertices (a vertex subset) need no chunks (`chunk=None`)."""
    n, num_joints = rel_trans.shape[:2]
    num_verts = weights_t.shape[1]
    rel = jnp.concatenate([world_rot, rel_trans[..., None]], axis=-1)  # (n, J, 3, 4)
    rows = rel.reshape(n, num_joints, 12).transpose(0, 2, 1)  # (n, 12, J)
    if chunk is None or n <= chunk:
        return _skin_block(rows, v_posed, weights_t)
    chunks = -(-n // chunk)
    pad = chunks * chunk - n  # zero transforms on zero vertices: padding rows stay zero
    if pad:
        rows = jnp.concatenate([rows, jnp.zeros((pad,) + rows.shape[1:], rows.dtype)])
        v_posed = jnp.concatenate([v_posed, jnp.zeros((pad,) + v_posed.shape[1:], v_posed.dtype)])
    # Rematerialised in the backward pass, so the gradient is chunked the same way (no stacked
    # per-chunk residuals of the blended transforms).
    block = jax.checkpoint(_skin_block)
    out = jax.lax.map(
        lambda args: block(*args, weights_t),
        (rows.reshape(chunks, chunk, 12, num_joints), v_posed.reshape(chunks, chunk, 3, num_verts)),
    )
    return out.reshape(chunks * chunk, num_verts, 3)[:n]


def blend_transforms(weights: Float[Array, "N J"], transforms: Float[Array, "J 4 4"]) -> Float[Array, "N 3 4"]:
    """Per-point blended 3x4 transforms sum_j w_j T_j (the last row is not needed), for points that
    need their transform itself and not only their moved position (the avatar orients Gaussians)."""
    return jnp.einsum("nj,jab->nab", weights, transforms[:, :3, :])


def apply_blended(mats: Float[Array, "N 3 4"], points: Float[Array, "N 3"]) -> Float[Array, "N 3"]:
    """Each point moved by its own 3x4 transform."""
    return jnp.einsum("nab,nb->na", mats[:, :, :3], points) + mats[:, :, 3]
