"""Rotations and rigid transforms: the package's one implementation of each.

Every function is pure `jax.numpy`, works on any leading batch shape and is differentiable
everywhere the underlying map is (the identity and half-turn rotations included). Quaternions are
(w, x, y, z). Set-up code that holds numpy arrays calls the same functions and converts back with
`np.asarray` (see `matrix_to_quaternion_np`) instead of keeping a second numpy implementation.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

# smplx adds this to every component of the rotation vector before taking its norm, so the angle of
# a zero vector is sqrt(3) * 1e-8 instead of 0 and the division below never divides by zero.
RODRIGUES_EPS = 1e-8
# torch.nn.functional.normalize divides by max(norm, eps); VPoser's 6D decoder relies on it.
NORMALIZE_EPS = 1e-12


# ------------------------------------------------------------------------------------ rotations
def skew(v: Float[Array, "... 3"]) -> Float[Array, "... 3 3"]:
    """The cross-product matrix [v]_x, so that skew(v) @ u == cross(v, u)."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = jnp.zeros_like(x)
    rows = [
        jnp.stack([zero, -z, y], axis=-1),
        jnp.stack([z, zero, -x], axis=-1),
        jnp.stack([-y, x, zero], axis=-1),
    ]
    return jnp.stack(rows, axis=-2)


def axis_angle_to_matrix(axis_angle: Float[Array, "... 3"]) -> Float[Array, "... 3 3"]:
    """Rodrigues' formula exactly as smplx's `batch_rodrigues` evaluates it.

    The epsilon sits inside the norm (norm(v + eps)), which keeps the map and its gradient finite at
    v = 0 and reproduces smplx's float32 results bit for bit in structure.
    """
    angle = jnp.linalg.norm(axis_angle + RODRIGUES_EPS, axis=-1, keepdims=True)
    direction = axis_angle / angle
    cos = jnp.cos(angle)[..., None]
    sin = jnp.sin(angle)[..., None]
    k = skew(direction)
    eye = jnp.eye(3, dtype=axis_angle.dtype)
    return eye + sin * k + (1.0 - cos) * (k @ k)


def matrix_to_quaternion(matrix: Float[Array, "... 3 3"]) -> Float[Array, "... 4"]:
    """Unit quaternion (w, x, y, z) of a rotation matrix, by Shepperd's method; w >= 0.

    Each of the four classic formulas divides by one of 2*|w|, 2*|x|, 2*|y|, 2*|z|; we keep the one
    with the largest divisor (always >= 1, the first on ties), so no formula ever divides by a small
    number and the result is accurate and differentiable near 0 and pi alike. Only the kept formula
    is evaluated, by selects: building all four and summing them under a one-hot mask gave the
    same values and gradients 3x slower (the avatar converts every Gaussian's rotation each
    iteration)."""
    m00, m01, m02 = matrix[..., 0, 0], matrix[..., 0, 1], matrix[..., 0, 2]
    m10, m11, m12 = matrix[..., 1, 0], matrix[..., 1, 1], matrix[..., 1, 2]
    m20, m21, m22 = matrix[..., 2, 0], matrix[..., 2, 1], matrix[..., 2, 2]
    # 4*w^2, 4*x^2, 4*y^2, 4*z^2; they sum to 4, so the largest is at least 1.
    four_w2 = 1.0 + m00 + m11 + m22
    four_x2 = 1.0 + m00 - m11 - m22
    four_y2 = 1.0 - m00 + m11 - m22
    four_z2 = 1.0 - m00 - m11 + m22
    by_w = (four_w2 >= four_x2) & (four_w2 >= four_y2) & (four_w2 >= four_z2)
    by_x = ~by_w & (four_x2 >= four_y2) & (four_x2 >= four_z2)
    by_y = ~by_w & ~by_x & (four_y2 >= four_z2)

    def kept(if_w, if_x, if_y, if_z):
        return jnp.where(by_w, if_w, jnp.where(by_x, if_x, jnp.where(by_y, if_y, if_z)))

    # The kept square is >= 1; the clamp only guards the select's other branches in the gradient.
    four_abs = 2.0 * jnp.sqrt(jnp.maximum(kept(four_w2, four_x2, four_y2, four_z2), 0.25))
    d21, d02, d10 = m21 - m12, m02 - m20, m10 - m01
    s10, s02, s21 = m10 + m01, m02 + m20, m12 + m21
    # Each formula gives 4*|q_i| * q; divide by 4*|q_i|.
    quat = jnp.stack(
        [
            kept(four_w2, d21, d02, d10),
            kept(d21, four_x2, s10, s02),
            kept(d02, s10, four_y2, s21),
            kept(d10, s02, s21, four_z2),
        ],
        axis=-1,
    ) / four_abs[..., None]
    # Canonical sign: w >= 0, i.e. the rotation angle in [0, pi].
    return jnp.where(quat[..., :1] < 0, -quat, quat)


def matrix_to_quaternion_np(matrix: np.ndarray) -> np.ndarray:
    """`matrix_to_quaternion` for set-up code holding numpy arrays (float32, as JAX computes)."""
    return np.asarray(matrix_to_quaternion(jnp.asarray(matrix, jnp.float32)))


def quaternion_to_matrix(quats: Float[Array, "... 4"]) -> Float[Array, "... 3 3"]:
    """Rotation matrices of (not necessarily unit) quaternions: normalised first."""
    q = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return jnp.stack(rows, axis=-1).reshape(q.shape[:-1] + (3, 3))


def quaternion_multiply(a: Float[Array, "... 4"], b: Float[Array, "... 4"]) -> Float[Array, "... 4"]:
    """Hamilton product a * b: rotating by b, then by a."""
    aw, ax, ay, az = (a[..., i] for i in range(4))
    bw, bx, by, bz = (b[..., i] for i in range(4))
    return jnp.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quaternion_to_axis_angle(quat: Float[Array, "... 4"]) -> Float[Array, "... 3"]:
    """Rotation vector of a unit quaternion; angle in [0, pi] after sign canonicalisation."""
    quat = jnp.where(quat[..., :1] < 0, -quat, quat)
    w = quat[..., 0]
    xyz = quat[..., 1:]
    sin_half_sq = jnp.sum(xyz * xyz, axis=-1)
    small = sin_half_sq < 1e-12
    # Double-where: the norm's gradient at 0 is NaN, so feed it a harmless value on that branch.
    sin_half = jnp.sqrt(jnp.where(small, 1.0, sin_half_sq))
    angle = 2.0 * jnp.arctan2(sin_half, w)
    # angle / sin(angle/2) -> 2 / w as the rotation vanishes (next term is O(sin^2), below 1e-12 here).
    safe_w = jnp.where(small, w, 1.0)
    scale = jnp.where(small, 2.0 / safe_w, angle / sin_half)
    return xyz * scale[..., None]


def matrix_to_axis_angle(matrix: Float[Array, "... 3 3"]) -> Float[Array, "... 3"]:
    """Rotation vector (axis * angle, angle in [0, pi]) of a rotation matrix."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def rot6d_to_matrix(rot6d: Float[Array, "... 6"], eps: float = NORMALIZE_EPS) -> Float[Array, "... 3 3"]:
    """VPoser's continuous 6D representation to a rotation matrix.

    The six numbers are a row-major 3x2 matrix whose two columns are Gram-Schmidt orthonormalised
    into b1, b2; b3 = b1 x b2; b1, b2, b3 are the COLUMNS of the result (VPoser / Zhou et al.).
    """
    pair = rot6d.reshape(*rot6d.shape[:-1], 3, 2)
    a1, a2 = pair[..., 0], pair[..., 1]
    b1 = a1 / jnp.maximum(jnp.linalg.norm(a1, axis=-1, keepdims=True), eps)
    a2_orth = a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = a2_orth / jnp.maximum(jnp.linalg.norm(a2_orth, axis=-1, keepdims=True), eps)
    b3 = jnp.cross(b1, b2)
    return jnp.stack([b1, b2, b3], axis=-1)


def matrix_to_rot6d(matrix: Float[Array, "... 3 3"]) -> Float[Array, "... 6"]:
    """Inverse of `rot6d_to_matrix` on rotations: the first two columns, flattened row-major."""
    return matrix[..., :, :2].reshape(*matrix.shape[:-2], 6)


# ------------------------------------------------------------------------------ rigid transforms
def rigid(rotation: Float[Array, "... 3 3"], translation: Float[Array, "... 3"]) -> Float[Array, "... 4 4"]:
    """The 4x4 matrix of x -> R x + t."""
    top = jnp.concatenate([rotation, translation[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], rotation.dtype), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def rigid_inverse(transform: Float[Array, "... 4 4"]) -> Float[Array, "... 4 4"]:
    """Inverse of a rigid 4x4, [R^T | -R^T t], without a general matrix inverse."""
    rot_t = jnp.swapaxes(transform[..., :3, :3], -1, -2)
    return rigid(rot_t, -jnp.einsum("...ab,...b->...a", rot_t, transform[..., :3, 3]))


def rigid_compose(first: Float[Array, "... 4 4"], then: Float[Array, "... 4 4"]) -> Float[Array, "... 4 4"]:
    """The transform that applies `first`, then `then` (then @ first)."""
    return then @ first


def transform_points(transform: Float[Array, "... 4 4"], points: Float[Array, "... N 3"]) -> Float[Array, "... N 3"]:
    """x -> R x + t for every point (the bottom row of `transform` is not read)."""
    rot = transform[..., :3, :3]
    return jnp.einsum("...ab,...nb->...na", rot, points) + transform[..., None, :3, 3]
