"""The synthetic SMPL-X stand-in: real layout and sizes, a plausible human, smooth skinning."""

from pathlib import Path

import numpy as np
import pytest

from zerohsi_jax.body import EXTRA_VERTEX_IDS, JOINT_NAMES, PARENTS
from zerohsi_jax.body.joint_names import EXTRA_VERTEX_JOINTS
from zerohsi_jax.synthetic import build_synthetic_smplx, synthetic_smplx_path, write_synthetic_smplx

J = {name: i for i, name in enumerate(JOINT_NAMES)}


@pytest.fixture(scope="module")
def neutral():
    path = synthetic_smplx_path()
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def joints(neutral):
    return neutral["J_regressor"] @ neutral["v_template"]


def test_layout_and_sizes_match_the_official_file(neutral):
    expected = {
        "v_template": (10475, 3),
        "shapedirs": (10475, 3, 400),
        "posedirs": (10475, 3, 486),
        "J_regressor": (55, 10475),
        "weights": (10475, 55),
        "kintree_table": (2, 55),
        "hands_componentsl": (45, 45),
        "hands_componentsr": (45, 45),
        "hands_meanl": (45,),
        "hands_meanr": (45,),
        "lmk_faces_idx": (51,),
        "lmk_bary_coords": (51, 3),
        "dynamic_lmk_faces_idx": (79, 17),
        "dynamic_lmk_bary_coords": (79, 17, 3),
    }
    for key, shape in expected.items():
        assert neutral[key].shape == shape, key
    assert neutral["f"].ndim == 2 and neutral["f"].shape[1] == 3
    parents = neutral["kintree_table"][0].astype(np.int64)
    assert tuple(parents[1:]) == PARENTS[1:] and parents[0] == 2**32 - 1
    np.testing.assert_allclose(
        neutral["hands_componentsl"] @ neutral["hands_componentsl"].T, np.eye(45), atol=1e-10
    )


def test_mesh_is_a_closed_consistently_oriented_surface_using_every_vertex(neutral):
    faces = neutral["f"].astype(np.int64)
    assert np.array_equal(np.unique(faces), np.arange(10475))
    assert np.all(faces[:, 0] != faces[:, 1]) and np.all(faces[:, 1] != faces[:, 2])
    # Every directed edge appears once and its reverse once: closed, manifold, consistently oriented.
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    codes = directed[:, 0] * 10475 + directed[:, 1]
    assert len(np.unique(codes)) == len(codes)
    assert set(codes) == set(directed[:, 1] * 10475 + directed[:, 0])
    v = neutral["v_template"]
    volume = np.sum(np.einsum("ij,ij->i", v[faces[:, 0]], np.cross(v[faces[:, 1]], v[faces[:, 2]]))) / 6
    assert 0.04 < volume < 0.12  # m^3: a 60-90 kg body at roughly the density of water, outward normals


def test_body_is_an_upright_human_of_smplx_proportions(neutral, joints):
    v = neutral["v_template"]
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.6 < height < 1.8
    assert -1.22 < v[:, 1].min() < -1.18  # soles
    assert -0.35 < joints[J["pelvis"], 1] < -0.15
    # Left is +x, the head is on top, the hands beyond the elbows, the knees between hips and ankles.
    for name in ("hip", "knee", "ankle", "shoulder", "elbow", "wrist", "collar", "index1", "thumb3"):
        left, right = joints[J[f"left_{name}"]], joints[J[f"right_{name}"]]
        assert left[0] > 0 > right[0], name
        np.testing.assert_allclose(left * [-1, 1, 1], right, atol=1e-9)  # mirror-symmetric rest pose
    assert joints[J["head"], 1] > joints[J["neck"], 1] > joints[J["spine3"], 1] > joints[J["pelvis"], 1]
    assert joints[J["left_hip"], 1] > joints[J["left_knee"], 1] > joints[J["left_ankle"], 1]
    assert joints[J["left_wrist"], 0] > joints[J["left_elbow"], 0] > joints[J["left_shoulder"], 0] > 0.1
    # Arm span about the height (T-pose), fingers longer than 5 cm, feet pointing forward (+z).
    span = v[:, 0].max() - v[:, 0].min()
    assert 0.9 * height < span < 1.1 * height
    assert joints[J["left_middle3"], 0] - joints[J["left_middle1"], 0] > 0.05
    assert joints[J["left_foot"], 2] > joints[J["left_ankle"], 2]
    # Every joint lies inside the body's bounding box and (except the eyes) off the surface.
    assert np.all(joints.min(0) > v.min(0)) and np.all(joints.max(0) < v.max(0))


def test_smplx_extra_vertex_ids_sit_on_the_matching_body_parts(neutral, joints):
    v = neutral["v_template"]
    at = {name: v[vid] for name, vid in EXTRA_VERTEX_JOINTS}
    head = v[v[:, 1] > joints[J["head"], 1]]
    assert abs(at["nose"][0]) < 0.01 and at["nose"][2] > head[:, 2].max() - 1e-9  # front-most, central
    assert at["left_eye"][0] > 0 > at["right_eye"][0] and at["left_eye"][2] > 0.08
    assert at["left_ear"][0] > 0.07 and at["right_ear"][0] < -0.07
    for side, sign in (("left", 1), ("right", -1)):
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            tip = at[f"{side}_{finger}"]
            assert np.linalg.norm(tip - joints[J[f"{side}_{finger}3"]]) < 0.045, (side, finger)
            assert sign * tip[0] > sign * joints[J[f"{side}_{finger}3"]][0]
        big, small, heel = at[f"{side}_big_toe"], at[f"{side}_small_toe"], at[f"{side}_heel"]
        assert big[2] > joints[J[f"{side}_foot"]][2] and heel[2] < joints[J[f"{side}_ankle"]][2]
        assert abs(big[0]) < abs(small[0])  # the big toe is on the inside
        assert max(big[1], small[1], heel[1]) < -1.18
    assert len(set(EXTRA_VERTEX_IDS.tolist())) == 21


def test_skinning_weights_are_smooth_partitions_of_unity(neutral):
    w, faces = neutral["weights"], neutral["f"].astype(np.int64)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    # Smooth, not rigid per part: many vertices are shared between joints ...
    assert np.mean(w.max(1) < 0.95) > 0.2
    # ... and no edge switches a vertex from one joint to another (a rigid seam would jump by 2).
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    jump = np.abs(w[edges[:, 0]] - w[edges[:, 1]]).sum(1)
    assert jump.max() < 1.6
    # Torso, limbs and head blend over several rings (the short finger bones are stiffer, as in SMPL-X).
    body = np.abs(neutral["v_template"][edges[:, 0], 0]) < 0.6
    assert np.percentile(jump[body], 99.9) < 1.0
    # Every joint except the root and the finger tips' parents drives some vertex.
    assert np.all(w.max(0)[1:] > 0.2)


def test_regressor_rows_are_averages_and_place_joints_inside_their_limbs(neutral, joints):
    reg = neutral["J_regressor"]
    np.testing.assert_allclose(reg.sum(1), 1.0, atol=1e-9)
    v = neutral["v_template"]
    # Each joint is close to the vertices its row averages (a ring around a limb, a torso slice).
    for j in range(55):
        ids = np.nonzero(reg[j])[0]
        assert np.linalg.norm(v[ids].mean(0) - joints[j]) < 0.08, JOINT_NAMES[j]


def test_shape_and_expression_directions_change_the_body_plausibly(neutral):
    v, dirs = neutral["v_template"], neutral["shapedirs"].astype(np.float64)
    height = lambda x: x[:, 1].max() - x[:, 1].min()  # noqa: E731
    taller = v + 2.0 * dirs[:, :, 0]
    assert height(taller) > height(v) + 0.1
    heavier = v + 2.0 * dirs[:, :, 1]
    waist = np.abs(v[:, 1] + 0.1) < 0.02
    assert np.ptp(heavier[waist, 2]) > np.ptp(v[waist, 2]) + 0.05
    # Expression directions move the face only, by millimetres.
    expr = np.linalg.norm(dirs[:, :, 300:], axis=1).max(1)
    assert expr.max() < 0.02 and np.all(expr[v[:, 1] < 0.2] < 1e-9)
    # Pose correctives are small.
    assert np.abs(neutral["posedirs"]).max() < 0.05


def test_generation_is_deterministic(tmp_path):
    # How long generation takes is a benchmark (experiments/bench/bench_synthetic_body.py), not
    # an assertion: a loaded machine would fail it for no correctness reason.
    a = build_synthetic_smplx(seed=3, num_betas=10)
    b = build_synthetic_smplx(seed=3, num_betas=10)
    c = build_synthetic_smplx(seed=4, num_betas=10)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["v_template"], c["v_template"])
    assert not np.array_equal(a["shapedirs"][:, :, 10:], c["shapedirs"][:, :, 10:])
    assert a["shapedirs"].shape == (10475, 3, 20)  # the 10 + 10 layout
    path = write_synthetic_smplx(tmp_path, gender="female", num_betas=10)
    assert path.name == "SMPLX_FEMALE.npz" and path.exists()
    assert sorted(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left beside it


def test_cache_key_covers_every_generator_source(tmp_path, monkeypatch):
    """The cached model file is keyed by the code of every module that generates it, so an edit
    of any of them (the skeleton, the mesh, the file layout, the joint tables) makes a new file."""
    from zerohsi_jax.body import joint_names
    from zerohsi_jax.synthetic import body_mesh, body_model_file, body_skeleton

    sources = body_model_file.GENERATOR_SOURCES
    generators = (body_skeleton, body_mesh, body_model_file, joint_names)
    assert {Path(m.__file__).resolve() for m in generators} == {p.resolve() for p in sources}
    key = body_model_file._generator_fingerprint()
    for i, source in enumerate(sources):
        edited = tmp_path / f"{i}_{source.name}"
        edited.write_bytes(source.read_bytes() + b"\n# edited\n")
        monkeypatch.setattr(body_model_file, "GENERATOR_SOURCES", sources[:i] + (edited,) + sources[i + 1 :])
        assert body_model_file._generator_fingerprint() != key, source.name


def test_genders_differ_in_proportions():
    male = build_synthetic_smplx("male", num_betas=10)
    female = build_synthetic_smplx("female", num_betas=10)
    jm, jf = male["J_regressor"] @ male["v_template"], female["J_regressor"] @ female["v_template"]
    assert np.ptp(male["v_template"][:, 1]) > np.ptp(female["v_template"][:, 1]) + 0.05
    shoulders = lambda j: j[J["left_shoulder"], 0] - j[J["right_shoulder"], 0]  # noqa: E731
    hips = lambda j: j[J["left_hip"], 0] - j[J["right_hip"], 0]  # noqa: E731
    assert shoulders(jm) / hips(jm) > shoulders(jf) / hips(jf)
    with pytest.raises(ValueError, match="gender"):
        build_synthetic_smplx("other")
