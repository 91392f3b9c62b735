"""The paper's losses on cases whose answer is known by hand, and the Optax schedule blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zerohsi_jax.reconstruct import losses
from zerohsi_jax.reconstruct.config import LossWeights, ReconstructConfig
from zerohsi_jax.reconstruct.schedules import after, every, labelled_adam


def test_ssim_and_rgb_loss_on_known_images(seed):
    rng = np.random.default_rng(seed)
    img = jnp.asarray(rng.uniform(size=(24, 20, 3)), jnp.float32)
    assert float(losses.ssim(img, img)) == pytest.approx(1.0, abs=1e-5)
    assert float(losses.rgb_loss(img, img)) == pytest.approx(0.0, abs=1e-5)
    shifted = jnp.clip(img + 0.1, 0, 1)
    l1 = float(jnp.mean(jnp.abs(shifted - img)))
    rgb = float(losses.rgb_loss(shifted, img, ssim_weight=0.1))
    assert rgb == pytest.approx(0.9 * l1 + 0.1 * (1 - float(losses.ssim(shifted, img))), rel=1e-5)
    # Structure, not brightness: an inverted image has negative correlation, SSIM far below 1.
    assert float(losses.ssim(1 - img, img)) < 0.0


def test_static_background_mask_is_the_running_union():
    h = jnp.zeros((4, 2, 2)).at[1, 0, 0].set(1.0)
    o = jnp.zeros((4, 2, 2)).at[2, 1, 1].set(1.0)
    m = np.asarray(losses.static_background_masks(h, o))
    np.testing.assert_array_equal(m[0], np.ones((2, 2)))
    np.testing.assert_array_equal(m[1], [[0, 1], [1, 1]])
    np.testing.assert_array_equal(m[2], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(m[3], m[2])  # pixels once covered stay masked


def test_masked_photometric_loss_ignores_masked_pixels():
    a = jnp.zeros((2, 2, 3))
    b = jnp.zeros((2, 2, 3)).at[0, 0].set(1.0).at[1, 1].set(0.5)
    mask = jnp.array([[0.0, 1.0], [1.0, 1.0]])
    assert float(losses.masked_photometric_loss(a, b, mask, "l2")) == pytest.approx(0.25 * 3 / (3 * 3))
    assert float(losses.masked_photometric_loss(a, b, mask, "l1")) == pytest.approx(0.5 * 3 / (3 * 3))


def test_object_centre_and_depth_losses():
    seg = jnp.zeros((10, 20)).at[2:4, 4:8].set(1.0)  # centre x = 6/20, y = 3/10
    np.testing.assert_allclose(np.asarray(losses.mask_centroid(seg)), [0.3, 0.3], atol=1e-6)
    rendered = jnp.zeros((10, 20)).at[6:8, 14:18].set(1.0)  # centre (0.8, 0.7)
    assert float(losses.object_center_loss(rendered, seg)) == pytest.approx(0.5**2 + 0.4**2, rel=1e-5)
    assert float(losses.object_center_loss(rendered, jnp.zeros((10, 20)))) == 0.0  # no segmentation: no pull
    depth = jnp.full((10, 20), 2.0).at[6:8, 14:18].set(3.0)
    assert float(losses.mean_masked_depth(depth, rendered)) == pytest.approx(3.0)
    assert float(losses.object_depth_loss(depth, rendered, 2.5)) == pytest.approx(0.25)


def test_contact_loss_follows_equations_s1_s2():
    hand = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    obj = jnp.array([[0.0, 0.03, 0.0], [0.0, 0.04, 0.0], [5.0, 0.0, 0.0]])
    # Pairs closer than 5 cm: (h0, o0) at 3 cm and (h0, o1) at 4 cm: min 0.03 over #C = 2.
    assert float(losses.hand_object_contact_loss(hand, obj, 0.05)) == pytest.approx(0.015, rel=1e-4)
    assert float(losses.hand_object_contact_loss(hand, obj, 0.01)) == 0.0  # empty contact set
    g = jax.grad(lambda h: losses.hand_object_contact_loss(h, obj, 0.05))(hand)
    assert np.all(np.isfinite(np.asarray(g))) and float(g[0, 1]) < 0  # pulls the hand towards the object


def test_smoothness_and_joint_fit():
    poses = jnp.zeros((3, 63)).at[1, 0].set(3.0).at[2, 0].set(3.0).at[2, 1].set(4.0)
    assert float(losses.smoothness_loss(poses)) == pytest.approx((3.0 + 4.0) / 2, rel=1e-5)
    j = jnp.zeros((22, 3))
    assert float(losses.joint_fit_loss(j, j.at[:, 0].set(0.1))) == pytest.approx(0.01, rel=1e-5)


def test_gated_adam_keeps_its_state_while_frozen():
    params = {"a": jnp.ones(3), "b": jnp.ones(3)}
    opt = optax.multi_transform(labelled_adam({"a": 0.1, "b": 0.1}, {"a": lambda o: after(o, 2),
                                                                     "b": lambda o: every(o, 3)}),
                                {"a": "a", "b": "b"})
    state = opt.init(params)
    moved = []
    for _ in range(7):
        grads = {"a": jnp.ones(3), "b": jnp.ones(3)}
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        moved.append((bool(jnp.any(updates["a"] != 0)), bool(jnp.any(updates["b"] != 0))))
    assert [m[0] for m in moved] == [False, False, True, True, True, True, True]
    assert [m[1] for m in moved] == [True, False, False, True, False, False, True]
    # 'a' took exactly 5 Adam steps (its first at step 2 behaves as Adam's first step).
    np.testing.assert_allclose(np.asarray(params["a"]), 1 - 0.1 * 5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(params["b"]), 1 - 0.1 * 3, atol=1e-5)


def test_configs_carry_the_paper_numbers_and_hash():
    cfg = ReconstructConfig()
    assert (cfg.camera.iterations, cfg.camera.learning_rate) == (30, 1e-3)
    assert (cfg.hsi.iterations, cfg.hsi.root_only_iterations, cfg.hsi.learning_rate) == (300, 30, 1e-2)
    assert dict(cfg.hsi.loss_weights) == {"rgb": 1.0, "object_center": 1e-3, "object_depth": 1e-3}
    assert (cfg.hsi.ssim_weight, cfg.hsi.color_learning_rate, cfg.hsi.color_every) == (0.1, 1e-5, 5)
    assert (cfg.refine.iterations, cfg.refine.learning_rate) == (1000, 5e-2)
    assert dict(cfg.refine.loss_weights) == {"fit": 1.0, "physics": 1e-3}
    assert (cfg.refine.smooth_weight_static, cfg.refine.smooth_weight_dynamic) == (0.3, 0.1)
    assert hash(cfg) == hash(ReconstructConfig())
    assert LossWeights({"a": 1}) == {"a": 1.0} and hash(LossWeights({"a": 1})) == hash(LossWeights({"a": 1.0}))
    with pytest.raises(ValueError, match="mode"):
        ReconstructConfig(mode="sideways")
