"""Rotation helpers: Rodrigues as smplx evaluates it, robust matrix -> axis-angle, VPoser's 6D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.body import rotations

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
