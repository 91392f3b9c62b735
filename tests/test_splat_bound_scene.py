"""bind_static + render_bound against the full render of the concatenation: images, gradients,
overflow counts, jit and vmap.

The programs are few and shared (fixed shapes, one config per purpose, the bind traced so that
its entry count is static) because compiling them is most of this file's time."""

import dataclasses
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from splat_scenes import random_camera, random_scene

from zerohsi_jax.splat import (
    Gaussians,
    RasterConfig,
    RasterOverflowError,
    bind_static,
    fit_bound_capacity,
    fit_capacity,
    grown_capacity,
    merge_pairs_into_tile_lists,
    render,
    render_bound,
)

W, H = 48, 32
NUM_SCENE, NUM_GROUPS = 240, 3
BG = jnp.asarray([0.2, 0.5, 0.7])
# Capacities that hold every pair of these scenes (so nothing is dropped unless a test asks).
CFG = RasterConfig(tile_capacity=512, pair_capacity=4096, chunk_size=4, backward="jax")
FIELDS = ("rgb", "depth", "alpha", "depth_accum", "features", "group_masks")

bind_jit = eqx.filter_jit(bind_static)


def _dynamic(rng, scene: Gaussians, cam) -> Gaussians:
    """Dynamic Gaussians in front of, among and behind the scene (whose means lie at z 2..4 in
    front of the camera), plus exact copies of scene Gaussians' geometry with other colours and
    groups: ties in depth, where the order (scene first) decides the image."""
    parts = []
    for z_range in ((1.2, 1.8), (2.0, 4.0), (4.2, 5.0)):
        g = random_scene(rng, 30, sh_degree=1, num_features=2, num_groups=NUM_GROUPS)
        z = rng.uniform(*z_range, 30)
        means = np.array(g.means)
        means[:, 2] = z
        parts.append(eqx.tree_at(lambda g: g.means, g, jnp.asarray(means)))
    # Copies of visible, fairly opaque scene Gaussians: same means, rotation, scale and so depth.
    idx = np.arange(20, 20 + 12)
    twins = random_scene(rng, len(idx), sh_degree=1, num_features=2, num_groups=NUM_GROUPS)
    twins = eqx.tree_at(
        lambda g: (g.means, g.quats, g.log_scales, g.opacity_logits),
        twins,
        (scene.means[idx], scene.quats[idx], scene.log_scales[idx], jnp.full((len(idx),), 1.0)),
    )
    return Gaussians.concatenate(parts + [twins])


def _problem(seed):
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, NUM_SCENE, sh_degree=2, num_features=2, num_groups=NUM_GROUPS)
    cam = random_camera(rng, W, H)
    return rng, scene, _dynamic(rng, scene, cam), cam


def _loss_weights(seed):
    rng = np.random.default_rng(seed + 100)
    return {f: jnp.asarray(rng.uniform(0.5, 1.5, size)) for f, size in
            (("rgb", (H, W, 3)), ("depth", (H, W)), ("alpha", (H, W)), ("depth_accum", (H, W)),
             ("features", (H, W, 2)), ("group_masks", (H, W, NUM_GROUPS)))}  # fmt: skip


def _loss(out, weights):
    return sum(jnp.sum(getattr(out, f) * weights[f]) for f in FIELDS)


@eqx.filter_jit
def _full_value_grad(scene, dynamic, cam, weights, first="scene", cfg=CFG):
    def loss(dyn):
        sets = [scene, dyn] if first == "scene" else [dyn, scene]
        out = render(Gaussians.concatenate(sets), cam, BG, num_groups=NUM_GROUPS, config=cfg)
        return _loss(out, weights), out

    return eqx.filter_value_and_grad(loss, has_aux=True)(dynamic)


@eqx.filter_jit
def _bound_value_grad(bound, dynamic, cam, weights, cfg=CFG):
    def loss(dyn):
        out = render_bound(bound, dyn, cam, BG, num_groups=NUM_GROUPS, config=cfg)
        return _loss(out, weights), out

    return eqx.filter_value_and_grad(loss, has_aux=True)(dynamic)


def _assert_outputs_equal(out, ref, atol=1e-6):
    for f in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(out, f)), np.asarray(getattr(ref, f)), atol=atol, err_msg=f)
    for f in ("overflow", "max_tile_count", "num_pairs"):
        assert int(getattr(out, f)) == int(getattr(ref, f)), f


def test_render_bound_equals_full_render_and_its_gradients(seed):
    _, scene, dynamic, cam = _problem(seed)
    weights = _loss_weights(seed)
    bound = bind_jit(scene, cam, CFG)
    (loss_ref, ref), grad_ref = _full_value_grad(scene, dynamic, cam, weights)
    (loss_out, out), grad_out = _bound_value_grad(bound, dynamic, cam, weights)
    assert int(ref.overflow) == 0
    _assert_outputs_equal(out, ref)
    np.testing.assert_allclose(float(loss_out), float(loss_ref), rtol=1e-6)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "features"):
        g_out, g_ref = np.asarray(getattr(grad_out, name)), np.asarray(getattr(grad_ref, name))
        assert np.abs(g_ref).max() > 0, name
        np.testing.assert_allclose(g_out, g_ref, atol=1e-5 * np.abs(g_ref).max(), rtol=1e-5, err_msg=name)

    # The depth ties matter: with the dynamic set first the full render differs, so the match
    # above pins the scene-first order.
    (_, swapped), _ = _full_value_grad(scene, dynamic, cam, weights, first="dynamic")
    assert np.abs(np.asarray(swapped.group_masks) - np.asarray(ref.group_masks)).max() > 1e-3


def test_render_bound_at_8_pixel_tiles_equals_the_16_pixel_full_render(seed):
    """The recommended CPU levers bind the scene with 8-pixel tiles: same image and gradients as
    the full render with the default 16."""
    _, scene, dynamic, cam = _problem(seed)
    weights = _loss_weights(seed)
    cfg8 = dataclasses.replace(CFG, tile_size=8)
    (loss_ref, ref), grad_ref = _full_value_grad(scene, dynamic, cam, weights)
    (loss_out, out), grad_out = _bound_value_grad(bind_jit(scene, cam, cfg8), dynamic, cam, weights, cfg=cfg8)
    assert int(out.overflow) == 0
    for f in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(out, f)), np.asarray(getattr(ref, f)), atol=1e-6, err_msg=f)
    np.testing.assert_allclose(float(loss_out), float(loss_ref), rtol=1e-6)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "features"):
        g_out, g_ref = np.asarray(getattr(grad_out, name)), np.asarray(getattr(grad_ref, name))
        np.testing.assert_allclose(g_out, g_ref, atol=1e-5 * np.abs(g_ref).max(), rtol=1e-5, err_msg=name)


def test_merge_orders_by_depth_then_list_first():
    inf = np.inf
    list_keys = jnp.asarray([[1.0, 2.0, 2.0, inf], [0.5, inf, inf, inf], [inf, inf, inf, inf]])
    list_ids = jnp.asarray([[10, 11, 12, 0], [13, 0, 0, 0], [0, 0, 0, 0]])
    # Pairs sorted by tile, then key; tile 3 (= T) is padding.
    pair_tiles = jnp.asarray([0, 0, 0, 2, 3, 3])
    pair_keys = jnp.asarray([0.5, 2.0, 3.0, 7.0, 0.0, 0.0])
    pair_ids = jnp.asarray([20, 21, 22, 23, 99, 99])
    merged, counts = merge_pairs_into_tile_lists(
        list_ids, jnp.asarray([3, 1, 0]), list_keys, pair_tiles, pair_ids, pair_keys, 5
    )
    np.testing.assert_array_equal(np.asarray(merged), [[20, 10, 11, 12, 21], [13, 0, 0, 0, 0], [23, 0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(counts), [5, 1, 1])


@eqx.filter_jit
def _forward(scene, bound, dynamic, cam, config):
    full = render(Gaussians.concatenate([scene, dynamic]), cam, BG, num_groups=NUM_GROUPS, config=config)
    return full, render_bound(bound, dynamic, cam, BG, num_groups=NUM_GROUPS, config=config)


@eqx.filter_jit
def _bound_counts(bound, dynamic, cam, config):
    out = render_bound(bound, dynamic, cam, config=config)
    return out.overflow, out.num_pairs, out.max_tile_count


def test_overflow_counts_match_the_full_render(seed):
    _, scene, dynamic, cam = _problem(seed)
    # The scene bound at CFG's long lists; the merged lists cut to a few slots: the same
    # front-most pairs per tile as the full render keeps, so the same image and count.
    bound = bind_jit(scene, cam, CFG)
    small = RasterConfig(tile_capacity=24, pair_capacity=4096, chunk_size=4, backward="jax")
    ref, out = _forward(scene, bound, dynamic, cam, small)
    assert int(ref.overflow) > 0
    _assert_outputs_equal(out, ref)
    assert int(out.max_tile_count) > small.tile_capacity

    # A dynamic pair buffer too small: every dynamic pair past it is dropped and counted.
    short = RasterConfig(tile_capacity=512, pair_capacity=16, chunk_size=4, backward="jax")
    overflow, num_pairs, max_tile_count = (int(x) for x in _bound_counts(bound, dynamic, cam, short))
    dynamic_pairs = num_pairs - int(bound.num_pairs)
    assert dynamic_pairs > 16
    assert overflow == dynamic_pairs - 16
    assert num_pairs == int(ref.num_pairs) and max_tile_count == int(ref.max_tile_count)

    # The same short buffer as `dynamic_pair_capacity`, beside a pair capacity for full renders: it
    # sizes the dynamic buffer, and `grown_capacity` grows it (alone) from the dynamic count.
    beside = dataclasses.replace(CFG, dynamic_pair_capacity=16)
    assert int(_bound_counts(bound, dynamic, cam, beside)[0]) == overflow
    counts = types.SimpleNamespace(max_tile_count=max_tile_count, num_pairs=num_pairs, dynamic_pairs=dynamic_pairs)
    grown = grown_capacity(beside, counts)
    assert (grown.tile_capacity, grown.pair_capacity) == (CFG.tile_capacity, CFG.pair_capacity)
    assert grown.dynamic_pair_capacity >= dynamic_pairs
    assert int(_bound_counts(bound, dynamic, cam, grown)[0]) == 0


def test_eager_bind_measures_and_compacts():
    _, scene, dynamic, cam = _problem(0)
    traced = bind_jit(scene, cam, CFG)
    bound = bind_static(scene, cam, CFG)
    # Only the scene Gaussians some tile references are kept (culled ones are not), and they
    # come first in the traced bind's entries, so the eager one is a prefix of it.
    used = int(jnp.sum(jnp.zeros((traced.num_entries,), bool).at[traced.ids].max(
        jnp.arange(traced.ids.shape[1]) < traced.counts[:, None])))
    assert used < NUM_SCENE and used <= bound.num_entries < 2 * used
    np.testing.assert_array_equal(np.asarray(bound.ids), np.asarray(traced.ids))
    np.testing.assert_array_equal(np.asarray(bound.means2d), np.asarray(traced.means2d[: bound.num_entries]))
    # The merged need is the concatenation's; the pair buffer only the dynamic set's.
    fitted = fit_capacity(Gaussians.concatenate([scene, dynamic]), cam, CFG)
    cfg = fit_bound_capacity(bound, dynamic, cam, CFG)
    assert cfg.tile_capacity == fitted.tile_capacity and cfg.pair_capacity <= fitted.pair_capacity

    # Eager overflow policies, as render's: 'grow' renders again at capacities that fit.
    small = RasterConfig(tile_capacity=24, pair_capacity=16, chunk_size=4, backward="jax")
    with pytest.warns(RuntimeWarning, match="rendered again"):
        out = render_bound(bound, dynamic, cam, config=small)
    assert int(out.overflow) == 0
    with pytest.raises(RasterOverflowError, match="tile_capacity="):
        render_bound(bound, dynamic, cam, config=dataclasses.replace(small, overflow="error"))
    assert int(render_bound(bound, dynamic, cam, config=dataclasses.replace(small, overflow="drop")).overflow) > 0


def test_jit_and_vmap_over_cameras_and_dynamic_sets():
    rng, scene, dyn_a, cam = _problem(0)
    dyn_b = _dynamic(rng, scene, cam)
    weights = _loss_weights(0)
    # Two cameras (same lens, two poses), each with its own dynamic set: bind and render under vmap.
    other = random_camera(rng, W, H)
    cams = eqx.tree_at(lambda c: c.viewmat, cam, jnp.stack([cam.viewmat, other.viewmat]))
    cams = jax.tree.map(lambda x: jnp.broadcast_to(x, (2,) + x.shape) if x.ndim == 0 else x, cams)
    dyns = jax.tree.map(lambda *xs: jnp.stack(xs), dyn_a, dyn_b)
    bounds = eqx.filter_vmap(bind_static, in_axes=(None, 0, None))(scene, cams, CFG)
    step = eqx.filter_jit(lambda b, d, c: render_bound(b, d, c, BG, num_groups=NUM_GROUPS, config=CFG).rgb)
    images = eqx.filter_vmap(step)(bounds, dyns, cams)
    for i, (view, dyn) in enumerate(((cam.viewmat, dyn_a), (other.viewmat, dyn_b))):
        # The reference is the full render compiled for the first test.
        (_, ref), _ = _full_value_grad(scene, dyn, cam.with_viewmat(view), weights)
        np.testing.assert_allclose(np.asarray(images[i]), np.asarray(ref.rgb), atol=1e-6)


def test_gradient_matches_finite_differences_in_float64(x64):
    rng = np.random.default_rng(3)
    scene = random_scene(rng, 60, sh_degree=1, dtype=jnp.float64)
    dynamic = random_scene(rng, 12, sh_degree=1, log_scale_range=(-2.0, -1.2), dtype=jnp.float64)
    cam = random_camera(rng, 32, 32, dtype=jnp.float64)
    cfg = RasterConfig(tile_capacity=128, pair_capacity=1024, chunk_size=4, backward="jax")
    weights = jnp.asarray(rng.uniform(0.5, 1.5, (32, 32, 3)))
    bound = bind_jit(scene, cam, cfg)

    @eqx.filter_jit
    def loss(means):
        out = render_bound(bound, eqx.tree_at(lambda g: g.means, dynamic, means), cam, config=cfg)
        return jnp.sum(out.rgb * weights)

    grad = np.asarray(jax.jit(jax.grad(loss))(dynamic.means))
    eps = 1e-6
    # The largest entries: well away from zero, where a finite difference is informative.
    for flat in np.argsort(-np.abs(grad).ravel())[:4]:
        i, k = np.unravel_index(flat, grad.shape)
        bump = jnp.zeros_like(dynamic.means).at[i, k].set(eps)
        fd = (float(loss(dynamic.means + bump)) - float(loss(dynamic.means - bump))) / (2 * eps)
        np.testing.assert_allclose(grad[i, k], fd, rtol=1e-5, atol=1e-8)


def test_untouched_tiles_from_the_static_render_change_nothing(seed):
    """`render_bound(..., static=render_static(bound, ...))` composites only the tiles the dynamic
    Gaussians reach and takes the others from the scene's own render: the image and the dynamic
    set's gradient equal the full render's."""
    from zerohsi_jax.splat import render_static

    rng = np.random.default_rng(seed)
    scene = random_scene(rng, NUM_SCENE, sh_degree=1, num_groups=NUM_GROUPS)
    cam = random_camera(rng, W, H)
    # A few small Gaussians in the middle of the view: most tiles stay untouched.
    dynamic = random_scene(rng, 6, sh_degree=1, num_groups=NUM_GROUPS, spread=0.15, log_scale_range=(-3.5, -3.0))
    weights = {k: v for k, v in _loss_weights(seed).items() if k != "features"}
    bound = bind_jit(scene, cam, CFG)
    static = eqx.filter_jit(lambda b: render_static(b, BG, num_groups=NUM_GROUPS, config=CFG))(bound)

    @eqx.filter_jit
    def value_grad(dynamic, static):
        def loss(dyn):
            if static is None:
                out = render(Gaussians.concatenate([scene, dyn]), cam, BG, num_groups=NUM_GROUPS, config=CFG)
            else:
                out = render_bound(bound, dyn, cam, BG, num_groups=NUM_GROUPS, config=CFG, static=static)
            return sum(jnp.sum(getattr(out, f) * w) for f, w in weights.items()), out

        return eqx.filter_value_and_grad(loss, has_aux=True)(dynamic)

    (_, ref), grad_ref = value_grad(dynamic, None)
    (_, out), grad_out = value_grad(dynamic, static)
    for f in ("rgb", "depth", "alpha", "depth_accum", "group_masks"):
        np.testing.assert_allclose(np.asarray(getattr(out, f)), np.asarray(getattr(ref, f)), atol=1e-6, err_msg=f)
    for f in ("overflow", "max_tile_count", "num_pairs"):
        assert int(getattr(out, f)) == int(getattr(ref, f)), f
    # Tiles composited in another grouping sum the per-Gaussian gradients in another order: the
    # differences are float32 round-off of the largest entries (measured: up to 1.5e-5 of them).
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        g_out, g_ref = np.asarray(getattr(grad_out, name)), np.asarray(getattr(grad_ref, name))
        assert np.abs(g_ref).max() > 0, name
        np.testing.assert_allclose(g_out, g_ref, atol=1e-4 * np.abs(g_ref).max(), rtol=1e-5, err_msg=name)
    # The path is exercised: some tiles are untouched, and the static render differs from the
    # full one on the touched tiles.
    assert np.abs(np.asarray(static.rgb) - np.asarray(ref.rgb)).max() > 1e-3
    assert np.abs(np.asarray(static.rgb) - np.asarray(ref.rgb)).min() == 0.0
