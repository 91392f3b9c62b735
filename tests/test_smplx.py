"""SMPL-X forward pass: equality with smplx 0.1.28, skinning identities, gradients, batching, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.body import (
    JOINT_NAMES,
    OUTPUT_JOINT_NAMES,
    SMPLX,
    ModelFileError,
    ModelFileNotFoundError,
    foot_vertex_ids,
    hand_vertex_ids,
)
from zerohsi_jax.synthetic import synthetic_smplx_path

INPUT_NAMES = (
    "betas",
    "expression",
    "global_orient",
    "body_pose",
    "jaw_pose",
    "leye_pose",
    "reye_pose",
    "left_hand_pose",
    "right_hand_pose",
    "transl",
)


@pytest.fixture(scope="module")
def model_path():
    return synthetic_smplx_path()


@pytest.fixture(scope="module")
def model(model_path):
    return SMPLX.load(model_path, num_betas=10, num_expression_coeffs=10, use_pca=True, num_pca_comps=6)


def random_inputs(rng, model, batch=(), scale=1.0):
    sizes = {
        "betas": model.num_betas,
        "expression": model.num_expression_coeffs,
        "global_orient": 3,
        "body_pose": 63,
        "jaw_pose": 3,
        "leye_pose": 3,
        "reye_pose": 3,
        "left_hand_pose": model.hand_pose_dim,
        "right_hand_pose": model.hand_pose_dim,
        "transl": 3,
    }
    spread = {"betas": 1.0, "expression": 1.0, "body_pose": 0.5, "global_orient": 1.0, "transl": 0.5}
    return {
        k: (rng.normal(size=batch + (n,)) * spread.get(k, 0.4) * scale).astype(np.float32)
        for k, n in sizes.items()
    }


@pytest.mark.torch
@pytest.mark.parametrize(
    "num_betas, num_expr, use_pca, num_pca_comps, flat_hand_mean, batch",
    [(10, 10, True, 6, False, 11), (300, 100, False, 6, True, 3), (16, 50, True, 12, True, 3)],
    ids=["pca6-mean-hands-batch11", "full-hands-300-betas-100-expr", "pca12-flat"],
)
def test_vertices_and_joints_equal_smplx(
    model_path, num_betas, num_expr, use_pca, num_pca_comps, flat_hand_mean, batch
):
    import smplx
    import torch

    options = dict(
        num_betas=num_betas,
        num_expression_coeffs=num_expr,
        use_pca=use_pca,
        num_pca_comps=num_pca_comps,
        flat_hand_mean=flat_hand_mean,
    )
    ours = SMPLX.load(model_path, **options)
    # Batch 11 exercises the chunked skinning with a padded last chunk.
    reference = smplx.SMPLX(str(model_path), batch_size=batch, **options)
    inputs = random_inputs(np.random.default_rng(num_betas), ours, (batch,))
    with torch.no_grad():
        ref = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}, return_verts=True)
    out = ours(**inputs)
    np.testing.assert_allclose(np.asarray(out.vertices), ref.vertices.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(out.joints), ref.joints.numpy(), atol=1e-5, rtol=0)
    assert out.joints.shape == ref.joints.shape == (batch, 127, 3)
    # smplx's v_shaped holds the shape blend shapes only; ours adds expression, so compare without it.
    no_expr = ours(betas=inputs["betas"])
    np.testing.assert_allclose(np.asarray(no_expr.v_shaped), ref.v_shaped.numpy(), atol=1e-5, rtol=0)
    # Sanity of the comparison itself: the poses are far from the rest pose.
    assert np.abs(ref.vertices.numpy() - np.asarray(ours.v_template)).max() > 0.2


@pytest.mark.torch
def test_output_joint_names_follow_smplx():
    from smplx.joint_names import JOINT_NAMES as SMPLX_JOINT_NAMES

    assert list(OUTPUT_JOINT_NAMES) == list(SMPLX_JOINT_NAMES[:127])
    assert list(JOINT_NAMES) == list(SMPLX_JOINT_NAMES[:55])


def test_joint_transforms_move_rest_joints_to_posed_joints(model):
    inputs = random_inputs(np.random.default_rng(1), model, (2,))
    out = model(**inputs)
    transforms = np.asarray(out.joint_transforms, dtype=np.float64)
    rot = transforms[..., :3, :3]
    np.testing.assert_allclose(
        rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5
    )
    np.testing.assert_allclose(
        transforms[..., 3, :], np.broadcast_to([0, 0, 0, 1], transforms[..., 3, :].shape)
    )
    rest = np.asarray(out.rest_joints, dtype=np.float64)
    moved = np.einsum("bjik,bjk->bji", transforms[..., :3, :3], rest) + transforms[..., :3, 3]
    np.testing.assert_allclose(moved, np.asarray(out.joints[:, :55]), atol=2e-5)
    # The child of a rotated joint keeps its distance to it (rigid bones).
    parents = np.asarray(model.parents)
    bone_posed = np.linalg.norm(
        np.asarray(out.joints[:, 1:55]) - np.asarray(out.joints[:, parents[1:]]), axis=-1
    )
    bone_rest = np.linalg.norm(rest[:, 1:] - rest[:, parents[1:]], axis=-1)
    np.testing.assert_allclose(bone_posed, bone_rest, atol=2e-5)


def test_vertices_are_the_weighted_blend_of_joint_transforms(model):
    # With the pose correctives removed, LBS is exactly sum_j w_ij T_j [v_shaped_i, 1].
    shape_rows = model.num_betas + model.num_expression_coeffs
    no_correctives = eqx.tree_at(lambda m: m.blend_dirs, model, model.blend_dirs.at[shape_rows:].set(0.0))
    out = no_correctives(**random_inputs(np.random.default_rng(2), model, (2,)))
    t = np.asarray(out.joint_transforms, dtype=np.float64)
    w = np.asarray(model.lbs_weights, dtype=np.float64)
    v = np.asarray(out.v_shaped, dtype=np.float64)
    per_joint = np.einsum("bjik,bvk->bvji", t[..., :3, :3], v) + t[:, None, :, :3, 3]
    expected = np.einsum("vj,bvji->bvi", w, per_joint)
    np.testing.assert_allclose(np.asarray(out.vertices), expected, atol=2e-5)


def test_rest_pose_with_flat_hands_is_the_template(model_path):
    flat = SMPLX.load(model_path, flat_hand_mean=True)
    out = flat()
    assert out.vertices.shape == (10475, 3) and out.joints.shape == (127, 3)
    np.testing.assert_allclose(np.asarray(out.vertices), np.asarray(flat.v_template), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(out.joints[:55]), np.asarray(flat.J_regressor @ flat.v_template), atol=1e-5
    )


def test_batching_broadcasting_vmap_and_jit_agree(model):
    rng = np.random.default_rng(3)
    inputs = random_inputs(rng, model, (2,))
    batched = model(**inputs)
    single = model(**{k: v[1] for k, v in inputs.items()})
    assert single.vertices.shape == (10475, 3)
    np.testing.assert_allclose(np.asarray(single.vertices), np.asarray(batched.vertices[1]), atol=2e-6)
    mapped = jax.vmap(lambda kw: model(**kw).joints)(inputs)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched.joints), atol=2e-6)
    # (B, 21, 3) body pose, one shared shape broadcast against the batch, a model passed through filter_jit.
    shared = dict(inputs, body_pose=inputs["body_pose"].reshape(2, 21, 3), betas=inputs["betas"][:1])
    via_filter_jit = eqx.filter_jit(lambda m, kw: m(**kw))(model, shared)
    expected = model(**dict(inputs, betas=np.repeat(inputs["betas"][:1], 2, 0)))
    np.testing.assert_allclose(np.asarray(via_filter_jit.vertices), np.asarray(expected.vertices), atol=2e-6)
    with pytest.raises(ValueError, match="body_pose must have trailing size 63"):
        model(body_pose=np.zeros((2, 60)))


def _scalar_loss(model, inputs, probe):
    out = model(**inputs)
    return jnp.sum(out.vertices * probe) + jnp.sum(out.joints[:, :60] * probe[:, :60])


# The model is an argument (not a closed-over constant) so compilation stays fast.
_loss = eqx.filter_jit(_scalar_loss)
_loss_grad = eqx.filter_jit(jax.grad(_scalar_loss, argnums=1))


def test_gradients_flow_to_every_input(model):
    inputs = {k: jnp.asarray(v) for k, v in random_inputs(np.random.default_rng(4), model, (2,)).items()}
    probe = jnp.asarray(np.random.default_rng(5).normal(size=(2, 10475, 3)), jnp.float32)
    grads = _loss_grad(model, inputs, probe)
    for name in INPUT_NAMES:
        g = np.asarray(grads[name])
        assert np.all(np.isfinite(g)), name
        assert np.all(np.abs(g).max(-1) > 0), name  # every example, every input


def test_gradients_match_finite_differences_in_float64(model_path, x64):
    model = SMPLX.load(model_path, num_betas=10, num_expression_coeffs=10, use_pca=False, dtype=jnp.float64)
    rng = np.random.default_rng(6)
    inputs = {k: jnp.asarray(v, jnp.float64) for k, v in random_inputs(rng, model, (1,)).items()}
    probe = jnp.asarray(rng.normal(size=(1, 10475, 3)))
    loss = lambda kw: _loss(model, kw, probe)  # noqa: E731
    grads = _loss_grad(model, inputs, probe)
    for name in INPUT_NAMES:
        direction = jnp.asarray(rng.normal(size=inputs[name].shape))
        eps = 1e-6
        plus = loss(dict(inputs, **{name: inputs[name] + eps * direction}))
        minus = loss(dict(inputs, **{name: inputs[name] - eps * direction}))
        fd = float(plus - minus) / (2 * eps)
        analytic = float(jnp.sum(grads[name] * direction))
        np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-6, err_msg=name)


def test_hand_and_foot_vertex_ids_pick_the_extremities(model):
    v = np.asarray(model.v_template)
    left, right = hand_vertex_ids(model, "left"), hand_vertex_ids(model, "right")
    feet = foot_vertex_ids(model)
    assert len(left) > 300 and len(right) == len(left) and len(feet) > 300
    assert np.all(v[left, 0] > 0.6) and np.all(v[right, 0] < -0.6)
    assert np.all(v[feet, 1] < -1.0)
    assert set(foot_vertex_ids(model, "left")) | set(foot_vertex_ids(model, "right")) == set(feet)
    # The extra joints smplx reads for finger tips and toes belong to these sets.
    assert {5361, 4933, 5058, 5169, 5286} <= set(left) and {5770, 5780, 8846, 8463, 8474, 8635} <= set(feet)
    with pytest.raises(ValueError):
        hand_vertex_ids(model, "middle")


def test_missing_model_file_says_where_to_get_smplx(tmp_path):
    with pytest.raises(ModelFileNotFoundError) as err:
        SMPLX.load(tmp_path / "SMPLX_NEUTRAL.npz")
    message = str(err.value)
    assert "https://smpl-x.is.tue.mpg.de" in message and "converters.smplx_pkl_to_npz" in message
    assert str(tmp_path) in message
    with pytest.raises(ModelFileNotFoundError, match="SMPLX_FEMALE.npz"):
        SMPLX.load(tmp_path, gender="female")  # a folder resolves to SMPLX_<GENDER>.npz


@pytest.fixture(scope="module")
def small_arrays(model_path):
    with np.load(model_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["shapedirs"] = np.concatenate(
        [arrays["shapedirs"][:, :, :10], arrays["shapedirs"][:, :, 300:310]], -1
    )
    return arrays


def test_missing_or_misshaped_keys_name_file_key_and_shape(small_arrays, tmp_path):
    broken = dict(small_arrays)
    del broken["posedirs"]
    with pytest.raises(ModelFileError, match=r"model\.npz: missing key 'posedirs'.*\(10475, 3, 486\)"):
        SMPLX.from_arrays(broken, source="model.npz")
    for key, bad, expected in [
        ("weights", small_arrays["weights"][:, :54], r"\(10475, 55\)"),
        ("v_template", small_arrays["v_template"][:100], r"\(10475, 3\)"),
        ("hands_meanl", small_arrays["hands_meanl"][:30], r"\(45,\)"),
        ("shapedirs", small_arrays["shapedirs"][:, :, :5], r"\(10475, 3, 400\)"),
    ]:
        with pytest.raises(ModelFileError, match=rf"x\.npz: key '{key}' has shape .*expected {expected}"):
            SMPLX.from_arrays(dict(small_arrays, **{key: bad}), source="x.npz")
    # Through a file on disk the message carries the real path.
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(path, **dict(small_arrays, J_regressor=small_arrays["J_regressor"][:, :10]))
    with pytest.raises(ModelFileError, match=rf"{path}: key 'J_regressor'.*\(55, 10475\)"):
        SMPLX.load(path)
    with pytest.raises(ModelFileError, match="converters.smplx_pkl_to_npz"):
        (tmp_path / "SMPLX_NEUTRAL.pkl").write_bytes(b"")
        SMPLX.load(tmp_path / "SMPLX_NEUTRAL.pkl")


def test_old_ten_plus_ten_layout_loads_and_caps_coefficients(small_arrays):
    with pytest.warns(UserWarning, match="10 shape and 10 expression"):
        model = SMPLX.from_arrays(small_arrays, num_betas=16, num_expression_coeffs=10)
    assert model.num_betas == 10 and model.num_expression_coeffs == 10
    out = model(betas=np.ones(10), expression=np.ones(10))
    assert out.vertices.shape == (10475, 3)
