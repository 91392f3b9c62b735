"""`zerohsi_jax.body.lbs`, the SMPL-X steps shared by the body model and the avatar, against plain
float64 references (the whole forward pass is compared with smplx in test_smplx.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from zerohsi_jax.body import PARENTS, lbs
from zerohsi_jax.body.joint_names import NUM_JOINTS, NUM_POSE_FEATURES
from zerohsi_jax.geometry import axis_angle_to_matrix


def _reference_chain(rot, rest):
    """Joint by joint down the tree: world rotation, posed joint, relative translation (float64)."""
    world_rot, posed = np.zeros_like(rot), np.zeros_like(rest)
    for j, p in enumerate(PARENTS):
        if p < 0:
            world_rot[..., j, :, :], posed[..., j, :] = rot[..., j, :, :], rest[..., j, :]
        else:
            world_rot[..., j, :, :] = world_rot[..., p, :, :] @ rot[..., j, :, :]
            offset = rest[..., j, :] - rest[..., p, :]
            posed[..., j, :] = np.einsum("...ab,...b->...a", world_rot[..., p, :, :], offset) + posed[..., p, :]
    return world_rot, posed, posed - np.einsum("...jab,...jb->...ja", world_rot, rest)


def test_kinematic_levels_put_every_joint_after_its_parent():
    levels = lbs.kinematic_levels(PARENTS)
    assert sorted(j for level in levels for j in level) == list(range(NUM_JOINTS))
    depth = {j: d for d, level in enumerate(levels) for j in level}
    assert all(depth[j] == depth[p] + 1 for j, p in enumerate(PARENTS) if p >= 0)


def test_forward_kinematics_matches_the_joint_by_joint_chain(x64):
    rng = np.random.default_rng(0)
    rot = np.asarray(axis_angle_to_matrix(jnp.asarray(0.5 * rng.normal(size=(3, NUM_JOINTS, 3)))))
    rest = rng.normal(size=(3, NUM_JOINTS, 3))
    fk = jax.jit(lbs.forward_kinematics, static_argnums=2)
    for ours, ref in zip(fk(jnp.asarray(rot), jnp.asarray(rest), PARENTS), _reference_chain(rot, rest), strict=True):
        np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-12)
    # Unbatched inputs (the avatar's) give the first example's result.
    single = fk(jnp.asarray(rot[0]), jnp.asarray(rest[0]), PARENTS)
    np.testing.assert_allclose(np.asarray(single[1]), _reference_chain(rot, rest)[1][0], atol=1e-12)


def test_full_pose_and_pose_feature_layout():
    parts = [jnp.full((2, k), float(i)) for i, k in enumerate((3, 63, 3, 3, 3, 45, 45))]
    pose = lbs.assemble_full_pose(*parts)
    assert pose.shape == (2, NUM_JOINTS, 3)
    # global, 21 body joints, jaw, eyes, 15 + 15 finger joints
    np.testing.assert_array_equal(np.asarray(pose[0, :, 0]), np.repeat(np.arange(7), [1, 21, 1, 1, 1, 15, 15]))
    rot = axis_angle_to_matrix(pose)
    feature = np.asarray(lbs.pose_feature(rot))
    assert feature.shape == (2, NUM_POSE_FEATURES)
    np.testing.assert_allclose(feature[1, :9], (np.asarray(rot)[1, 1] - np.eye(3)).ravel(), atol=1e-7)


def test_skinning_in_chunks_equals_one_block_and_the_blended_transforms(x64):
    rng = np.random.default_rng(1)
    n, num_verts = 11, 40
    world_rot = np.asarray(axis_angle_to_matrix(jnp.asarray(rng.normal(size=(n, NUM_JOINTS, 3)))))
    rel_trans = rng.normal(size=(n, NUM_JOINTS, 3))
    weights = rng.dirichlet(np.ones(NUM_JOINTS), size=num_verts)  # (V, J)
    v_posed = rng.normal(size=(n, 3, num_verts))  # coordinate-major
    args = (jnp.asarray(world_rot), jnp.asarray(rel_trans), jnp.asarray(v_posed), jnp.asarray(weights.T))
    whole = np.asarray(lbs.linear_blend_skinning(*args, chunk=None))
    chunked = np.asarray(jax.jit(lambda *a: lbs.linear_blend_skinning(*a, chunk=4))(*args))
    np.testing.assert_allclose(chunked, whole, atol=1e-12)
    transforms = np.zeros((n, NUM_JOINTS, 4, 4))
    transforms[:, :, :3, :3], transforms[:, :, :3, 3], transforms[:, :, 3, 3] = world_rot, rel_trans, 1.0
    for i in range(n):
        mats = lbs.blend_transforms(jnp.asarray(weights), jnp.asarray(transforms[i]))
        moved = np.asarray(lbs.apply_blended(mats, jnp.asarray(v_posed[i].T)))
        np.testing.assert_allclose(whole[i], moved, atol=1e-12)
