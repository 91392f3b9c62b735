"""The paper's losses on cases whose answer is known by hand, and the Optax schedule blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zerohsi_jax.reconstruct import losses
from zerohsi_jax.reconstruct.config import LossWeights, ReconstructConfig
from zerohsi_jax.reconstruct.gated_optim import after, batched_with, every, labelled_adam, scan_minimize
from zerohsi_jax.reconstruct.losses import HSI_TERMS, Objective


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


@pytest.mark.parametrize("shape", [(24, 20, 3), (7, 30, 9), (33, 5, 1)])
def test_gaussian_blur_equals_its_convolution_twin(shape, seed, x64):
    """The shifted-sum blur and its self-adjoint backward against two convolutions under plain
    autodiff, in float64 (images narrower than the window included: the zero padding reaches
    across)."""
    rng = np.random.default_rng(seed)
    img = jnp.asarray(rng.normal(size=shape))
    cotangent = jnp.asarray(rng.normal(size=shape))
    fast, fast_vjp = jax.vjp(losses.gaussian_blur_shifted, img)
    ref, ref_vjp = jax.vjp(losses.gaussian_blur_conv, img)
    assert fast.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=0, atol=1e-13)
    (grad,), (ref_grad,) = fast_vjp(cotangent), ref_vjp(cotangent)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=0, atol=1e-13)
    # Under vmap (seeds) as well.
    batched = jax.vmap(losses.gaussian_blur_shifted)(jnp.stack([img, 2 * img]))
    np.testing.assert_allclose(np.asarray(batched[1]), 2 * np.asarray(ref), rtol=0, atol=1e-12)


def test_the_cpu_blur_compiles_without_convolutions():
    """On the CPU `gaussian_blur` is the shifted sums, forward and backward (XLA's CPU convolutions
    are what made D-SSIM slow); the convolution twin compiles to convolutions."""
    img = jnp.zeros((16, 12, 3), jnp.float32)
    grad = lambda blur: jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(blur(x)))))  # noqa: E731
    assert " convolution(" not in grad(losses.gaussian_blur).lower(img).compile().as_text()
    assert " convolution(" in grad(losses.gaussian_blur_conv).lower(img).compile().as_text()


def test_ssim_gradient_matches_the_convolution_ssim_and_finite_differences(seed, x64):
    rng = np.random.default_rng(seed)
    target = jnp.asarray(rng.uniform(size=(12, 14, 3)))
    img = jnp.asarray(rng.uniform(size=(12, 14, 3)))
    value, grad = jax.value_and_grad(lambda x: losses.ssim(x, target, blur=losses.gaussian_blur_shifted))(img)
    ref_value, ref_grad = jax.value_and_grad(lambda x: losses.ssim(x, target, blur=losses.gaussian_blur_conv))(img)
    assert float(value) == pytest.approx(float(ref_value), abs=1e-13)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=0, atol=1e-13)
    direction = jnp.asarray(rng.normal(size=img.shape))
    h = 1e-6
    numeric = (losses.ssim(img + h * direction, target) - losses.ssim(img - h * direction, target)) / (2 * h)
    # The platform's blur (shifted sums on the CPU, convolutions elsewhere) gives the same gradient.
    np.testing.assert_allclose(np.asarray(jax.grad(losses.ssim)(img, target)), np.asarray(ref_grad), rtol=0, atol=1e-13)
    assert float(jnp.vdot(grad, direction)) == pytest.approx(float(numeric), rel=1e-6)


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
    """`after` and `every` equal plain Adam run on the active steps only. The gradients differ at
    every step (with constant gradients every Adam step is the learning rate whatever the moments,
    so a gate that kept updating them while frozen would go unnoticed), and the inner state, step
    count included, does not move while frozen."""
    lr = {"a": 0.1, "b": 0.05}
    active = {"a": lambda i: i >= 2, "b": lambda i: i % 3 == 0}
    opt = optax.multi_transform(labelled_adam(lr, {"a": lambda o: after(o, 2), "b": lambda o: every(o, 3)}),
                                {"a": "a", "b": "b"})
    params = {"a": jnp.ones(3), "b": jnp.ones(3)}
    state = opt.init(params)
    reference = {k: optax.adam(lr[k]) for k in lr}
    ref_params = dict(params)
    ref_state = {k: reference[k].init(params[k]) for k in lr}
    rng = np.random.default_rng(0)
    steps = 9

    def adam_state(opt_state, label):  # the inner Adam's state inside multi_transform and the gate
        return opt_state.inner_states[label].inner_state.inner[0]

    for i in range(steps):
        grads = {k: jnp.asarray(rng.normal(0.0, 1.0, 3) * rng.uniform(0.1, 10.0), jnp.float32) for k in lr}
        before = state
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for k in lr:
            inner, inner_before = adam_state(state, k), adam_state(before, k)
            if active[k](i):
                ref_updates, ref_state[k] = reference[k].update(grads[k], ref_state[k], ref_params[k])
                ref_params[k] = optax.apply_updates(ref_params[k], ref_updates)
                assert int(inner.count) == int(inner_before.count) + 1
            else:
                np.testing.assert_array_equal(np.asarray(updates[k]), 0.0)
                assert int(inner.count) == int(inner_before.count), f"{k}: Adam's count moved at frozen step {i}"
                moments = jax.tree.leaves((inner.mu, inner.nu))
                for now, then in zip(moments, jax.tree.leaves((inner_before.mu, inner_before.nu)), strict=True):
                    np.testing.assert_array_equal(np.asarray(now), np.asarray(then), err_msg=f"{k}: moments, step {i}")
            np.testing.assert_allclose(np.asarray(params[k]), np.asarray(ref_params[k]), rtol=1e-6, atol=1e-7,
                                       err_msg=f"{k} after step {i}")
    assert int(adam_state(state, "a").count) == sum(active["a"](i) for i in range(steps)) == 7
    assert int(adam_state(state, "b").count) == sum(active["b"](i) for i in range(steps)) == 3
    assert int(state.inner_states["a"].inner_state.count) == steps  # the gate itself counts every step


def test_scan_minimize_starts_with_its_carry_batched_and_the_same_values():
    """Under vmap, `batched_with` batches a fresh optimiser state and unbatched parameters up front
    (so that `lax.scan`'s batching needs no second pass) without changing a value (NaN included)
    or batching the gates' integer step counts; the minimisation gives what each seed gives
    alone."""
    opt = optax.multi_transform(labelled_adam({"a": 0.1, "b": 0.05}, {"b": lambda o: every(o, 2)}),
                                {"a": "a", "b": "b"})
    targets = jnp.asarray([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])

    def fit(target):
        params = {"a": target * 0.5, "b": jnp.zeros(3)}  # "b" starts as an unbatched constant
        loss = lambda p: (jnp.sum((p["a"] - target) ** 2) + jnp.sum((p["b"] + target) ** 2), None)  # noqa: E731
        return scan_minimize(loss, params, opt, 6).params

    together = jax.vmap(fit)(targets)
    for s in range(2):
        alone = fit(targets[s])
        for k in ("a", "b"):
            np.testing.assert_array_equal(np.asarray(together[k][s]), np.asarray(alone[k]))

    def marked(target):
        params = {"a": target, "b": jnp.asarray([0.0, jnp.nan, jnp.inf])}
        return batched_with(params, (params, opt.init(params)))

    params, state = jax.vmap(marked)(targets)
    np.testing.assert_array_equal(np.asarray(params["b"]), [[0.0, np.nan, np.inf]] * 2)
    # The unbatched constants came out batched inside vmap: returning them unbatched is refused.
    with pytest.raises(ValueError):
        jax.vmap(lambda t: marked(t)[0]["b"], out_axes=None)(targets)
    with pytest.raises(ValueError):
        jax.vmap(lambda t: marked(t)[1].inner_states["b"].inner_state.inner[0].mu["b"], out_axes=None)(targets)
    # ... and the gates' step counts did not.
    count = jax.vmap(lambda t: marked(t)[1].inner_states["b"].inner_state.count, out_axes=None)(targets)
    assert int(count) == 0
    # Outside vmap, nothing changes.
    same = batched_with({"x": jnp.ones(2)}, {"y": jnp.asarray([jnp.nan, 2.0])})
    np.testing.assert_array_equal(np.asarray(same["y"]), [np.nan, 2.0])


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
    assert LossWeights({"a": 1}) == {"a": 1.0}
    # The objective (terms and weights together) is what the compiled programs hash.
    objective = Objective.of(HSI_TERMS, {"rgb": 1})
    assert objective == Objective.of(dict(HSI_TERMS), LossWeights({"rgb": 1.0}))
    assert hash(objective) == hash(Objective.of(HSI_TERMS, {"rgb": 1.0}))
    assert Objective.of(HSI_TERMS, {"rgb": 2.0}) != objective
    with pytest.raises(ValueError, match="mode"):
        ReconstructConfig(mode="sideways")
