"""`zerohsi_jax.geometry`: Rodrigues as smplx evaluates it, robust matrix -> axis-angle and quaternion,
VPoser's 6D, quaternions and rigid transforms, against float64 references, with round trips, half
turns and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax import geometry as rotations

# Jitted once per module: eager dispatch of these small graphs costs more than running them.
axis_angle_to_matrix = jax.jit(rotations.axis_angle_to_matrix)
matrix_to_axis_angle = jax.jit(rotations.matrix_to_axis_angle)
matrix_to_quaternion = jax.jit(rotations.matrix_to_quaternion)
matrix_to_rot6d = jax.jit(rotations.matrix_to_rot6d)
rot6d_to_matrix = jax.jit(rotations.rot6d_to_matrix)


def _random_axis_angles(rng, n, max_angle=np.pi):
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * rng.uniform(0.0, max_angle, size=(n, 1))


def _edge_cases():
    # identity, tiny angles, angles at and just below pi about assorted axes
    axes = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -2, 3]], dtype=np.float64)
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    cases = [np.zeros(3)]
    for a in axes:
        cases += [a * 1e-9, a * 1e-5, a * (np.pi - 1e-6), a * np.pi]
    return np.stack(cases)


def test_axis_angle_to_matrix_is_a_rotation_about_the_axis(x64):
    rng = np.random.default_rng(0)
    aa = _random_axis_angles(rng, 200)
    rot = np.asarray(axis_angle_to_matrix(jnp.asarray(aa)))
    # smplx's epsilon inside the norm makes the axis very slightly shorter than 1, hence 1e-7, not 1e-12.
    np.testing.assert_allclose(
        rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-7
    )
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-7)
    # The axis is fixed, and a quarter turn about z maps x to y.
    np.testing.assert_allclose(np.einsum("nij,nj->ni", rot, aa), aa, atol=1e-7)
    quarter = np.asarray(axis_angle_to_matrix(jnp.array([0.0, 0.0, np.pi / 2])))
    np.testing.assert_allclose(quarter @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-7)


def test_axis_angle_to_matrix_gradient_is_finite_at_zero():
    grad = jax.jit(jax.grad(lambda v: jnp.sum(axis_angle_to_matrix(v) * jnp.arange(9.0).reshape(3, 3))))(
        jnp.zeros(3)
    )
    assert np.all(np.isfinite(np.asarray(grad)))


def test_matrix_to_axis_angle_inverts_rodrigues_including_edge_cases(x64):
    rng = np.random.default_rng(1)
    aa = np.concatenate([_random_axis_angles(rng, 500), _edge_cases()])
    rot = axis_angle_to_matrix(jnp.asarray(aa))
    back = np.asarray(matrix_to_axis_angle(rot))
    # Same rotation (at exactly pi, v and -v are both correct) ...
    np.testing.assert_allclose(
        np.asarray(axis_angle_to_matrix(jnp.asarray(back))), np.asarray(rot), atol=1e-7
    )
    # ... and the same vector whenever the angle is below pi.
    below_pi = np.linalg.norm(aa, axis=1) < np.pi - 1e-3
    np.testing.assert_allclose(back[below_pi], aa[below_pi], atol=1e-7)
    assert np.all(np.linalg.norm(back, axis=1) <= np.pi + 1e-9)


def test_matrix_to_axis_angle_matches_scipy(x64):
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    mats = rotation.random(300, random_state=3).as_matrix()
    ours = np.asarray(matrix_to_axis_angle(jnp.asarray(mats)))
    np.testing.assert_allclose(ours, rotation.from_matrix(mats).as_rotvec(), atol=1e-10)
    quat = np.asarray(matrix_to_quaternion(jnp.asarray(mats)))  # (w, x, y, z), w >= 0
    ref = rotation.from_matrix(mats).as_quat()[:, [3, 0, 1, 2]]
    ref *= np.sign(ref[:, :1])
    np.testing.assert_allclose(quat, ref, atol=1e-10)


def _along_path(t, base, direction, weights):
    # A rotation-valued path keeps us on SO(3): R(t) = exp(base) @ exp(t * direction).
    rot = rotations.axis_angle_to_matrix(base) @ rotations.axis_angle_to_matrix(t * direction)
    return jnp.sum(rotations.matrix_to_axis_angle(rot) * weights)


_path_value = jax.jit(_along_path)
_path_grad = jax.jit(jax.grad(_along_path))


@pytest.mark.parametrize("angle", [0.0, 1e-7, 0.3, 2.0, np.pi - 1e-4])
def test_matrix_to_axis_angle_gradient_matches_finite_differences(x64, angle):
    rng = np.random.default_rng(4)
    axis = rng.normal(size=3)
    args = (
        jnp.asarray(axis / np.linalg.norm(axis) * angle),
        jnp.asarray(rng.normal(size=3)),
        jnp.asarray(rng.normal(size=3)),
    )
    eps, t0 = 1e-6, 1e-3  # t0 away from 0, where Rodrigues' own epsilon dominates
    grad = float(_path_grad(t0, *args))
    fd = float((_path_value(t0 + eps, *args) - _path_value(t0 - eps, *args)) / (2 * eps))
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


def test_matrix_to_axis_angle_gradient_is_finite_at_identity_and_half_turn():
    grad_fn = jax.jit(jax.grad(lambda m: jnp.sum(matrix_to_axis_angle(m))))
    for mat in (jnp.eye(3), jnp.diag(jnp.array([1.0, -1.0, -1.0]))):
        grad = grad_fn(mat)
        assert np.all(np.isfinite(np.asarray(grad)))


def test_rot6d_round_trip_and_gram_schmidt_convention(x64):
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(100, 6))
    rot = np.asarray(rot6d_to_matrix(jnp.asarray(raw)))
    np.testing.assert_allclose(
        rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    # The six numbers are a row-major 3x2 matrix; its first column, normalised, is the first column.
    first = raw.reshape(-1, 3, 2)[:, :, 0]
    np.testing.assert_allclose(rot[:, :, 0], first / np.linalg.norm(first, axis=1, keepdims=True), atol=1e-12)
    # A rotation's own 6D code reproduces it exactly.
    np.testing.assert_allclose(
        np.asarray(rot6d_to_matrix(matrix_to_rot6d(jnp.asarray(rot)))), rot, atol=1e-12
    )


@pytest.mark.torch
def test_axis_angle_to_matrix_equals_smplx_batch_rodrigues():
    import torch
    from smplx.lbs import batch_rodrigues

    rng = np.random.default_rng(6)
    aa = np.concatenate([_random_axis_angles(rng, 300), np.zeros((1, 3)), 1e-6 * np.ones((1, 3))]).astype(
        np.float32
    )
    ref = batch_rodrigues(torch.from_numpy(aa)).numpy()
    np.testing.assert_allclose(np.asarray(axis_angle_to_matrix(jnp.asarray(aa))), ref, atol=1e-6)


# ------------------------------------------------------------------ quaternions, rigid transforms
quaternion_to_matrix = jax.jit(rotations.quaternion_to_matrix)
quaternion_multiply = jax.jit(rotations.quaternion_multiply)


def _reference_quaternion_to_matrix(q):
    """Float64 textbook formula for a unit quaternion (w, x, y, z)."""
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack(
        [
            np.stack([w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], -1),
        ],
        -2,
    )


def _half_turns():
    axes = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -2, 3], [0, 1, 1]], np.float64)
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    # R = 2 a a^T - I is the exact half turn about a.
    return 2 * axes[:, :, None] * axes[:, None, :] - np.eye(3), axes


def test_quaternion_to_matrix_matches_reference_and_normalises(x64):
    rng = np.random.default_rng(7)
    q = rng.normal(size=(200, 4))
    ours = np.asarray(quaternion_to_matrix(jnp.asarray(3.0 * q)))  # not unit: normalised first
    np.testing.assert_allclose(ours, _reference_quaternion_to_matrix(q), atol=1e-12)


def test_matrix_quaternion_round_trips_including_half_turns(x64):
    rng = np.random.default_rng(8)
    q = rng.normal(size=(300, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.sign(q[:, :1])
    back = np.asarray(matrix_to_quaternion(jnp.asarray(_reference_quaternion_to_matrix(q))))
    np.testing.assert_allclose(back, q, atol=1e-12)
    half, axes = _half_turns()
    quat = np.asarray(matrix_to_quaternion(jnp.asarray(half)))
    # w = 0 and (x, y, z) = +-axis; either sign is the same rotation.
    np.testing.assert_allclose(quat[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(quat[:, 1:] * axes, axis=1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(quaternion_to_matrix(jnp.asarray(quat))), half, atol=1e-12)


def test_matrix_to_quaternion_gradient_is_finite_at_identity_and_half_turns():
    weights = jnp.arange(1.0, 5.0)
    grad_fn = jax.jit(jax.grad(lambda m: jnp.sum(rotations.matrix_to_quaternion(m) * weights)))
    half, _ = _half_turns()
    for mat in [np.eye(3), *half]:
        assert np.all(np.isfinite(np.asarray(grad_fn(jnp.asarray(mat, jnp.float32)))))


def test_matrix_to_quaternion_np_is_the_jax_function_in_float32():
    half, _ = _half_turns()
    mats = np.concatenate([half, np.eye(3)[None]])
    out = rotations.matrix_to_quaternion_np(mats)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(matrix_to_quaternion(jnp.asarray(mats, jnp.float32))))


def test_quaternion_multiply_composes_rotations(x64):
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(2, 100, 4))
    product = np.asarray(quaternion_multiply(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(
        _reference_quaternion_to_matrix(product),
        _reference_quaternion_to_matrix(a) @ _reference_quaternion_to_matrix(b),
        atol=1e-12,
    )


def test_rigid_inverse_compose_and_transform_points(x64):
    rng = np.random.default_rng(10)
    rot = _reference_quaternion_to_matrix(rng.normal(size=(20, 4)))  # orthonormal to float64 precision
    trans = rng.normal(size=(20, 3))
    t = np.asarray(rotations.rigid(jnp.asarray(rot), jnp.asarray(trans)))
    reference = np.zeros((20, 4, 4))
    reference[:, :3, :3], reference[:, :3, 3], reference[:, 3, 3] = rot, trans, 1.0
    np.testing.assert_array_equal(t, reference)
    inv = np.asarray(rotations.rigid_inverse(jnp.asarray(t)))
    np.testing.assert_allclose(inv, np.linalg.inv(reference), atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(rotations.rigid_compose(jnp.asarray(t), jnp.asarray(inv))), np.broadcast_to(np.eye(4), t.shape),
        atol=1e-12,
    )
    points = rng.normal(size=(20, 7, 3))
    moved = np.asarray(rotations.transform_points(jnp.asarray(t), jnp.asarray(points)))
    np.testing.assert_allclose(moved, np.einsum("nab,nkb->nka", rot, points) + trans[:, None], atol=1e-12)
    # compose(first, then) applies first, then then.
    np.testing.assert_allclose(
        np.asarray(rotations.transform_points(rotations.rigid_compose(jnp.asarray(t), jnp.asarray(t)),
                                              jnp.asarray(points))),
        np.asarray(rotations.transform_points(jnp.asarray(t), jnp.asarray(moved))),
        atol=1e-12,
    )
