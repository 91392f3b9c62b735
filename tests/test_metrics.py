"""The paper's metrics on cases whose answers are known by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.metrics import (
    cached_sdf_grid,
    diversity,
    foot_sliding,
    hand_object_contact_ratio,
    object_penetration,
    rotation_angle_deg,
    scene_penetration,
    sdf_grid_from_mesh,
)
from zerohsi_jax.synthetic import box_mesh


@pytest.fixture(scope="module")
def box_sdf():
    v, f = box_mesh((0.0, 0.5, 0.0), (2.0, 1.0, 2.0))  # y from 0 to 1
    return sdf_grid_from_mesh(v, f, spacing=0.05)


def test_box_sdf_is_signed_distance(box_sdf):
    pts = jnp.array([[0.0, 0.5, 0.0], [0.0, 0.1, 0.0], [0.0, 1.3, 0.0], [1.5, 0.5, 0.0], [0.5, 0.9, -0.5]])
    np.testing.assert_allclose(np.asarray(box_sdf(pts)), [-0.5, -0.1, 0.3, 0.5, -0.1], atol=2e-3)
    far = box_sdf(jnp.array([[0.0, 5.0, 0.0]]))  # beyond the grid: still the distance
    assert float(far[0]) == pytest.approx(4.0, abs=0.01)


def test_sdf_cache_serves_repeats_and_follows_what_made_the_grid(tmp_path, monkeypatch):
    """The second request for a grid is read from the cache: the builder is made to fail if it is
    called again. Another mesh, another spacing, or an edit to the code that computes the grid is
    a new entry, never an old grid read back."""
    from zerohsi_jax.metrics import plausibility

    real_builder = plausibility.sdf_grid_from_mesh
    builds = []

    def build_once(*args, **kwargs):
        if builds:
            raise AssertionError("the SDF grid was computed again: the cache did not serve the request")
        builds.append(kwargs.get("spacing"))
        return real_builder(*args, **kwargs)

    monkeypatch.setattr(plausibility, "sdf_grid_from_mesh", build_once)
    v, f = box_mesh((0, 0, 0), (1, 1, 1))
    a = cached_sdf_grid(v, f, tmp_path, spacing=0.1)
    assert builds == [0.1] and len(list(tmp_path.glob("sdf_*.npz"))) == 1
    b = cached_sdf_grid(v, f, tmp_path, spacing=0.1)  # a rebuild would raise
    np.testing.assert_array_equal(np.asarray(a.values), np.asarray(b.values))
    np.testing.assert_array_equal(np.asarray(a.origin), np.asarray(b.origin))
    assert a.spacing == b.spacing == 0.1

    real_winding = plausibility._winding_numbers

    def edited_winding_numbers(p, a, b, c):  # stands for an edit of the SDF code: other source
        return real_winding(p, a, b, c)

    def after_an_edit():
        monkeypatch.setattr(plausibility, "_winding_numbers", edited_winding_numbers)
        return cached_sdf_grid(v, f, tmp_path, spacing=0.1)

    changes = [
        ("another spacing", lambda: cached_sdf_grid(v, f, tmp_path, spacing=0.2)),
        ("another mesh", lambda: cached_sdf_grid(v + np.float32(0.01), f, tmp_path, spacing=0.1)),
        ("edited code", after_an_edit),
    ]
    for count, (what, request) in enumerate(changes, start=2):
        builds.clear()
        request()
        assert len(builds) == 1, f"{what}: served a grid cached for other inputs"
        assert len(list(tmp_path.glob("sdf_*.npz"))) == count, what


def test_scene_penetration(box_sdf):
    verts = jnp.array([[[0.0, 0.9, 0.0], [0.0, 0.8, 0.0], [0.0, 1.5, 0.0], [0.0, 2.0, 0.0]]])  # 2 of 4 inside
    out = scene_penetration(box_sdf, verts)
    assert float(out["penetration_percent"]) == pytest.approx(50.0)
    assert float(out["penetration_mean_m"]) == pytest.approx(0.15, abs=3e-3)
    assert float(out["penetration_max_m"]) == pytest.approx(0.2, abs=3e-3)


def test_foot_sliding_counts_only_feet_on_the_floor():
    t = jnp.arange(5, dtype=jnp.float32)
    planted = jnp.stack([0.01 * t, jnp.zeros(5), jnp.zeros(5)], -1)[:, None]  # slides 1 cm per frame at h = 0
    lifted = planted.at[..., 1].set(0.2)  # same slide, 20 cm up
    assert float(foot_sliding(planted)) == pytest.approx(0.01, rel=1e-5)
    assert float(foot_sliding(lifted)) == 0.0
    half = planted.at[..., 1].set(0.025)  # at half the threshold: weight 2 - sqrt(2)
    assert float(foot_sliding(half, height_threshold=0.05)) == pytest.approx(0.01 * (2 - 2**0.5), rel=1e-5)


def test_contact_ratio_and_object_penetration():
    hand = jnp.zeros((4, 1, 3)).at[2:, 0, 0].set(1.0)  # frames 2, 3: hand 1 m away
    obj = jnp.zeros((4, 1, 3)).at[:, 0, 1].set(0.02)
    assert float(hand_object_contact_ratio(hand, obj, 0.05)) == pytest.approx(0.5)
    v, f = box_mesh((0, 0, 0), (0.2, 0.2, 0.2))
    sdf = sdf_grid_from_mesh(v, f, spacing=0.02, padding=0.1)
    pose = jnp.tile(jnp.eye(4), (2, 1, 1)).at[1, 0, 3].set(5.0)  # frame 1: object moved 5 m along x
    body = jnp.array([[[0.0, 0.05, 0.0], [0.0, 0.0, 0.0], [0.0, 0.098, 0.0]],
                      [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    # Frame 0: depths 0.05 and 0.1 count, 0.002 is under the 4 cm threshold; frame 1: the object
    # is away and nothing penetrates, so only frame 0 is averaged.
    assert float(object_penetration(sdf, body, pose)) == pytest.approx(0.15 / 2, abs=3e-3)
    assert float(object_penetration(sdf, body, pose, min_depth=0.0)) == pytest.approx(0.152 / 3, abs=3e-3)
    assert float(object_penetration(sdf, body[1:], pose[1:])) == 0.0


def test_diversity_and_rotation_angle():
    a = jnp.zeros((2, 3, 3))
    seqs = jnp.stack([a, a + jnp.array([1.0, 0, 0]), a + jnp.array([0, 2.0, 0])])
    assert float(diversity(seqs)) == pytest.approx((1.0 + 2.0 + np.sqrt(5.0)) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="two sequences"):
        diversity(seqs[:1])
    rz = jnp.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert float(rotation_angle_deg(rz, jnp.eye(3))) == pytest.approx(90.0, abs=1e-3)


@pytest.mark.torch
def test_clip_metrics_need_weights_and_equal_a_hand_computation(tmp_path):
    pytest.importorskip("open_clip", reason="CLIP metrics need open-clip-torch (the torch extra)")
    import open_clip
    import torch
    from PIL import Image

    from zerohsi_jax.metrics.clip_score import ClipWeightsError, clip_scores, load_clip

    with pytest.raises(ClipWeightsError, match="open_clip_pytorch_model.bin"):
        load_clip("ViT-B-32", None)
    with pytest.raises(ClipWeightsError, match="missing.bin does not exist"):
        load_clip("ViT-B-32", tmp_path / "missing.bin")
    torch.manual_seed(0)
    clip = load_clip("ViT-B-32", None, allow_random=True)  # no weights can be downloaded here
    model, preprocess, _ = clip
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    prompt = "a person lifts a box"

    def by_hand():
        """CLIPScore (Hessel et al.): 100 x max(cos(image, text), 0) per frame, averaged; and the
        mean cosine similarity of consecutive frames."""
        with torch.no_grad():
            image = model.encode_image(torch.stack([preprocess(Image.fromarray(x)) for x in frames]))
            text = model.encode_text(open_clip.get_tokenizer("ViT-B-32")([prompt]))
        cos = torch.nn.functional.cosine_similarity(image, text, dim=-1).double().numpy()
        consecutive = torch.nn.functional.cosine_similarity(image[1:], image[:-1], dim=-1).double().numpy()
        return cos, 100.0 * np.mean(np.maximum(cos, 0.0)), float(np.mean(consecutive))

    # Random weights put every frame at a small negative similarity to any prompt: the score is
    # the clamp's 0. Turning the image embedding around (the visual projection negated) makes the
    # same similarities positive, so the score's scale is checked too.
    cos, score, consistency = by_hand()
    assert np.all(cos < 0)
    out = clip_scores(frames, prompt, clip)
    assert out["clip_score"] == 0.0
    assert out["clip_consistency"] == pytest.approx(consistency, rel=1e-5)
    assert consistency < 0.99  # distinct frames: consecutive similarity below 1
    with torch.no_grad():
        model.visual.proj.neg_()
    cos, score, consistency = by_hand()
    assert np.all(cos > 0.01)
    out = clip_scores(frames, prompt, clip)
    assert out["clip_score"] == pytest.approx(score, rel=1e-4)
    assert out["clip_consistency"] == pytest.approx(consistency, rel=1e-5)
    same = clip_scores(np.repeat(frames[:1], 3, axis=0), prompt, clip)
    assert same["clip_consistency"] == pytest.approx(1.0, abs=1e-5)
