"""The paper's definitions, exactly: eq. 8 per video over time, the contact loss of eqs. S1-S2 on
the full sets, the subject's body shape wherever the body is posed, the choices the paper leaves
open as config fields, and Table 4's ablation as the paper ran it."""

import dataclasses
import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.body import SMPLX
from zerohsi_jax.reconstruct import ReconstructConfig, losses
from zerohsi_jax.reconstruct.config import RefineConfig
from zerohsi_jax.reconstruct.gated_optim import GatedState, after, restart_gates
from zerohsi_jax.reconstruct.refinement import (
    contact_pair_scale,
    contact_points,
    hand_vertices,
    reference_joints,
)
from zerohsi_jax.reconstruct.state import HumanPose
from zerohsi_jax.run_config import RunConfig
from zerohsi_jax.synthetic import synthetic_smplx_path

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def body():
    return SMPLX.load(synthetic_smplx_path(), num_betas=10, use_pca=False, flat_hand_mean=True)


# ------------------------------------------------------------------------------------ eq. 8


def test_background_masks_aggregate_over_time_within_each_video():
    """M_t = 1 - union_{i<=t}(M_H^i | M_O^i) runs over the frames of each video; one video's
    person never reaches another video's mask."""
    rng = np.random.default_rng(0)
    human = (rng.random((2, 4, 5, 6)) > 0.8).astype(np.float32)
    obj = (rng.random((2, 4, 5, 6)) > 0.85).astype(np.float32)
    human[1] = 0.0
    obj[1] = 0.0
    human[1, 2, 3, 3] = 1.0  # video 1's person appears in frame 2 only
    m = np.asarray(losses.static_background_masks(jnp.asarray(human), jnp.asarray(obj)))
    for s in range(2):
        for t in range(4):
            union = np.max(np.maximum(human[s, : t + 1], obj[s, : t + 1]), axis=0)
            np.testing.assert_array_equal(m[s, t], 1.0 - union)
    assert m[1, 1, 3, 3] == 1.0 and m[1, 2, 3, 3] == 0.0 and m[1, 3, 3, 3] == 0.0
    # The unbatched form is the same function of one video.
    np.testing.assert_array_equal(np.asarray(losses.static_background_masks(jnp.asarray(human[0]),
                                                                            jnp.asarray(obj[0]))), m[0])


# ----------------------------------------------------------------------------- eqs. S1-S2


def _hand_and_object(body, num_points: int, seed: int):
    """Hand vertices of a posed body and a real-size object: `num_points` Gaussian centres in a
    20 cm box whose corner touches the right palm, so that many pairs are in contact."""
    ids = hand_vertices(body)
    verts = np.asarray(body(body_pose=jnp.zeros((1, 63))).vertices[0])[ids]
    palm = verts[len(ids) // 2 :].mean(0)
    rng = np.random.default_rng(seed)
    points = palm + rng.uniform(-0.02, 0.18, (num_points, 3))
    return jnp.asarray(verts), jnp.asarray(points.astype(np.float32))


def test_contact_loss_equals_the_full_pairwise_definition_on_a_real_size_object(body, seed):
    """The blockwise search gives eq. S2 over every pair (tens of thousands of object Gaussians),
    value and gradient, as the float64 dense twin does."""
    verts, points = _hand_and_object(body, 30_000, seed)
    eps = 0.05
    fast = losses.hand_object_contact_loss(verts, points, eps)
    with jax.enable_x64(True):
        v64, p64 = jnp.asarray(verts, jnp.float64), jnp.asarray(points, jnp.float64)
        d = np.sqrt(np.sum((np.asarray(v64)[:, None] - np.asarray(p64)[None]) ** 2, -1))
        count = int(np.sum(d < eps))
        assert count > 1000  # the property is about a large contact set
        # Both keep 1e-12 under the square root (a finite gradient when a pair coincides).
        expected = np.sqrt(d[d < eps].min() ** 2 + 1e-12) / count
        dense = losses.hand_object_contact_loss_dense(v64, p64, eps)
        grad_dense = jax.grad(losses.hand_object_contact_loss_dense)(v64, p64, eps)
    np.testing.assert_allclose(float(fast), expected, rtol=1e-4)
    np.testing.assert_allclose(float(dense), expected, rtol=1e-9)
    grad_fast = jax.grad(losses.hand_object_contact_loss)(verts, points, eps)
    np.testing.assert_allclose(np.asarray(grad_fast), np.asarray(grad_dense), rtol=1e-3, atol=1e-9)
    # Block size is a memory setting only.
    np.testing.assert_allclose(float(losses.hand_object_contact_loss(verts, points, eps, chunk=7777)), float(fast),
                               rtol=1e-6)
    # No pair in reach: the loss applies only when #C_t > 0.
    assert float(losses.hand_object_contact_loss(verts, points + 10.0, eps)) == 0.0


def test_subsampled_contact_sets_keep_the_full_sets_scale(body, seed):
    """A subsample's count, scaled by full pairs / subsampled pairs, estimates the full sets' #C_t,
    so the loss differs from the full one only by the subsample's larger nearest distance (where the
    unscaled count would shrink the denominator a thousandfold)."""
    from zerohsi_jax.reconstruct.losses import _nearest_contact_pair

    verts, points = _hand_and_object(body, 30_000, seed)
    eps = 0.05
    cfg = RefineConfig(max_contact_points=256, max_hand_vertices=256)
    ids_all, ids_sub = hand_vertices(body), hand_vertices(body, 256)
    sub_verts = verts[np.searchsorted(ids_all, ids_sub)]
    sub_points = contact_points(points, jnp.eye(3)[None], jnp.zeros((1, 3)), 256, seed=seed)[0]
    scale = contact_pair_scale(body, points.shape[0], cfg)
    assert scale == pytest.approx(len(ids_all) * 30_000 / (len(ids_sub) * 256))
    assert scale > 500

    count_full, i, j = _nearest_contact_pair(verts, points, eps, 256)
    count_sub, k, m = _nearest_contact_pair(sub_verts, sub_points, eps, 256)
    # An estimate from ~1000 sampled pairs whose hand vertices are evenly strided (so neighbouring
    # vertices are dropped together): within 40% of the full count, against 900x off unscaled.
    assert 0.6 < int(count_sub) * scale / int(count_full) < 1.4
    nearest_full = float(jnp.linalg.norm(verts[i] - points[j]))
    nearest_sub = float(jnp.linalg.norm(sub_verts[k] - sub_points[m]))
    full = float(losses.hand_object_contact_loss(verts, points, eps))
    scaled = float(losses.hand_object_contact_loss(sub_verts, sub_points, eps, pair_scale=scale))
    np.testing.assert_allclose(scaled / full, nearest_sub / nearest_full * int(count_full) / (int(count_sub) * scale),
                               rtol=1e-3)


# ------------------------------------------------------------------------------ body shape


def test_refinement_poses_the_reference_with_the_subject_shape(body):
    """Eq. 15's reference joints are the stage-2 poses through SMPL-X with the avatar's betas."""
    rng = np.random.default_rng(1)
    betas = jnp.asarray(rng.normal(scale=1.5, size=10).astype(np.float32))
    human = HumanPose(jnp.asarray(rng.normal(scale=0.1, size=(4, 3)).astype(np.float32)),
                      jnp.asarray(rng.normal(scale=0.2, size=(4, 3)).astype(np.float32)),
                      jnp.asarray(rng.normal(scale=0.2, size=(4, 63)).astype(np.float32)))
    hands_model = body.vertex_subset(hand_vertices(body))
    ref = np.asarray(reference_joints(hands_model, human, betas))
    full = body(betas=betas, global_orient=human.global_orient, body_pose=human.body_pose, transl=human.transl)
    np.testing.assert_allclose(ref, np.asarray(full.joints[:, :22]), atol=1e-5)
    # The hand vertices the contact loss reads are posed with the same shape.
    _, hands = hands_model(human.global_orient, human.body_pose, human.transl, betas)
    np.testing.assert_allclose(np.asarray(hands), np.asarray(full.vertices[:, hand_vertices(body)]), atol=1e-5)
    zero_shape = np.asarray(reference_joints(hands_model, human, None))
    assert np.abs(zero_shape - ref).max() > 0.01  # the shape really changes the reference


def test_ground_truth_errors_pose_both_sides_with_their_shapes(body, tiny_demo):
    """A reconstruction equal to a shaped truth scores zero only when posed with that shape."""
    from zerohsi_jax.metrics.ground_truth import ground_truth_errors
    from zerohsi_jax.reconstruct import Reconstruction

    betas = np.linspace(-1.5, 1.5, 10).astype(np.float32)
    truth = dataclasses.replace(tiny_demo.truth, betas=betas)
    h = jax.tree.map(lambda x: np.asarray(x)[None], truth.human)
    result = Reconstruction(viewmats=np.asarray(truth.viewmats)[None], human_stage2=h, human=h,
                            object_poses=np.asarray(truth.object_poses.matrix())[None], timings={}, betas=betas)
    assert ground_truth_errors(body, result, truth)["mpjpe_mm"] == 0.0
    unshaped = dataclasses.replace(result, betas=np.zeros(10, np.float32))
    assert ground_truth_errors(body, unshaped, truth)["mpjpe_mm"] > 5.0


# ---------------------------------------------------------------------- the choices as fields


def _field_names(cls, prefix=""):
    names = set()
    for f in dataclasses.fields(cls):
        names.add(prefix + f.name)
        if dataclasses.is_dataclass(f.type) or (isinstance(f.default_factory, type)
                                                and dataclasses.is_dataclass(f.default_factory)):
            names |= _field_names(f.default_factory, prefix + f.name + ".")
    return names


def test_every_choice_in_the_readme_table_is_a_config_field():
    text = README.read_text()
    section = text.split("### Where the paper is silent, we chose", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| choice")]
    assert len(rows) >= 12
    known = _field_names(RunConfig)
    for row in rows:
        fields = re.findall(r"`([a-z0-9_]+(?:\.[a-z0-9_]+)+)`", row.split("|")[3])
        assert fields, f"a row without a config field: {row}"
        for name in fields:
            assert name in known, f"README names {name!r}, which is not a run-config field"
    for required in ("reconstruct.hsi.adam_state", "reconstruct.refine.latent_init", "reconstruct.camera.pivot",
                     "reconstruct.refine.dynamic_threshold", "reconstruct.hsi.l2_kind",
                     "reconstruct.refine.fit_distance", "reconstruct.refine.contact_epsilon", "segment.num_points",
                     "reconstruct.background"):
        assert required in section


@pytest.mark.parametrize("key,value", [("camera", {"pivot": "sideways"}), ("hsi", {"l2_kind": "l3"}),
                                       ("hsi", {"adam_state": "keep"}), ("refine", {"latent_init": "random"}),
                                       ("refine", {"fit_distance": "cubed"})])
def test_choices_reject_unknown_values(key, value):
    base = ReconstructConfig()
    with pytest.raises(ValueError, match=f"{key}.{next(iter(value))} must be one of"):
        dataclasses.replace(base, **{key: dataclasses.replace(getattr(base, key), **value)})


def test_carried_adam_restarts_the_gates_but_keeps_the_moments():
    """'carry': the next frame's root-only warm-up counts from zero again, Adam's moments go on."""
    import optax

    opt = after(optax.adam(0.1), 2)
    params = jnp.ones(3)
    state = opt.init(params)
    for g in (1.0, -2.0, 3.0, 0.5):
        _, state = opt.update(jnp.full(3, g), state, params)
    assert int(state.count) == 4
    restarted = restart_gates({"pose": state, "other": optax.adam(0.1).init(params)})
    assert isinstance(restarted["pose"], GatedState) and int(restarted["pose"].count) == 0
    chex_equal = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), restarted["pose"].inner, state.inner)
    assert all(jax.tree.leaves(chex_equal))
    # Frozen again for two steps after the restart: no update.
    upd, _ = opt.update(jnp.full(3, 1.0), restarted["pose"], params)
    assert float(jnp.abs(upd).max()) == 0.0


def test_without_body_optimisation_is_table_4s_ablation():
    """'ZeroHSI w/o OPT_body': root translation and orientation only, 30 iterations per frame, from
    the per-frame estimates, no refinement."""
    from zerohsi_jax.benchsuite import VARIANTS
    from zerohsi_jax.reconstruct import paper_schedule

    cfg = VARIANTS["ZeroHSI w/o OPT_body"](paper_schedule())
    assert cfg.hsi.iterations == 30 and cfg.hsi.root_only_iterations == 30 and not cfg.hsi.fit_body_pose
    assert not cfg.refine.enabled
    assert cfg.camera == paper_schedule().camera
    labels = [k for k in VARIANTS if "camera" in k]
    assert labels and all("not in the paper" in k for k in labels)


def test_the_subject_shape_is_the_avatars(tiny_demo):
    """The pipeline takes the subject's shape from the avatar's template (cut or padded to the
    body model's count), so a converted avatar's betas reach every posed body."""
    from zerohsi_jax.reconstruct.pipeline import subject_betas

    inputs = tiny_demo.inputs
    betas = jnp.linspace(-1.0, 1.0, 10)
    shaped = eqx.tree_at(lambda i: i.avatar.template.betas, inputs, betas)
    np.testing.assert_allclose(subject_betas(shaped), np.asarray(betas), atol=0)
    np.testing.assert_allclose(subject_betas(inputs), np.zeros(10), atol=0)
