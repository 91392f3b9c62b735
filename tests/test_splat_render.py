"""Images against the float64 brute-force reference; binning, capacities, jit and vmap."""

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from splat_scenes import random_camera, random_scene, screen_filling_scene, stacked_tile_scene

from zerohsi_jax.splat import (
    Gaussians,
    RasterConfig,
    RasterOverflowError,
    bin_gaussians,
    bin_gaussians_dense,
    check_overflow,
    fit_capacity,
    grown_capacity,
    measure_capacity,
    project,
    render,
    suggested_capacity,
)
from zerohsi_jax.splat.reference import render_reference

BG = np.array([0.2, 0.5, 0.7])


def _compare(out, ref, atol):
    np.testing.assert_allclose(np.asarray(out.rgb), ref["rgb"], atol=atol)
    np.testing.assert_allclose(np.asarray(out.alpha), ref["alpha"], atol=atol)
    np.testing.assert_allclose(np.asarray(out.depth_accum), ref["depth_accum"], atol=atol * 10)
    if "features" in ref:
        np.testing.assert_allclose(np.asarray(out.features), ref["features"], atol=atol)
    if "group_masks" in ref:
        np.testing.assert_allclose(np.asarray(out.group_masks), ref["group_masks"], atol=atol)


SCENES = {
    # name: (scene kwargs, config kwargs)
    "plain": (dict(num=150, sh_degree=1), {}),
    "sh3_features_groups": (dict(num=150, sh_degree=3, num_features=2, num_groups=3), {}),
    # Very opaque and large: alpha hits the 0.999 clamp and pixels stop at T < 1e-4 (enough of
    # them that over a quarter of the pixels saturate whatever the seed: 0.29 at worst of 0..15).
    "opaque": (dict(num=300, opacity_scale=0.0, log_scale_range=(-1.3, -0.7)), {}),
    # Many faint Gaussians: the 1/255 skip and the opacity-dependent extent matter.
    "faint": (dict(num=300, opacity_scale=1.0, log_scale_range=(-2.5, -1.0)), {}),
    "antialiased_inria_clamp": (dict(num=150), dict(antialiased=True, alpha_max=0.99)),
}


@pytest.mark.parametrize("name", sorted(SCENES))
def test_float64_render_equals_brute_force(name, seed, x64):
    scene_kw, cfg_kw = SCENES[name]
    rng = np.random.default_rng(seed)
    g = random_scene(rng, dtype=jnp.float64, **scene_kw)
    if name == "opaque":
        g = eqx.tree_at(lambda g: g.opacity_logits, g, jnp.full_like(g.opacity_logits, 9.0))
    cam = random_camera(rng, 50, 37, dtype=jnp.float64)
    # Capacities that cannot overflow: every Gaussian in every tile.
    cfg = RasterConfig(tile_capacity=g.num, pair_capacity=g.num * 16, chunk_size=8, **cfg_kw)
    groups = 3 if g.groups is not None else 0
    out = render(g, cam, jnp.asarray(BG), num_groups=groups, config=cfg)
    assert int(out.overflow) == 0
    ref = render_reference(g, cam, BG, cfg, num_groups=groups)
    if name == "opaque":
        assert (ref["alpha"] > 1 - 2e-4).mean() > 0.2, "the opaque scene should saturate many pixels"
    _compare(out, ref, atol=1e-10)
    # Where something is drawn, depth is the alpha-normalised depth.
    drawn = ref["alpha"] > 1e-3
    np.testing.assert_allclose(np.asarray(out.depth)[drawn], ref["depth_accum"][drawn] / ref["alpha"][drawn], rtol=1e-9)


def test_float32_render_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    g = random_scene(rng, 200, sh_degree=2, num_features=3)
    cam = random_camera(rng, 64, 48)
    cfg = fit_capacity(g, cam)
    out = jax.jit(lambda g, c: render(g, c, jnp.asarray(BG, jnp.float32), config=cfg))(g, cam)
    assert int(out.overflow) == 0
    ref = render_reference(g, cam, BG, cfg)
    # A float32 alpha or transmittance exactly at a threshold may round the other way: such a
    # flip changes a pixel by at most about alpha_min times the largest value composited (a
    # colour, or a feature in [0, 1]); every other pixel agrees to float32 precision.
    for name, got, want in (("rgb", out.rgb, ref["rgb"]), ("features", out.features, ref["features"])):
        err = np.abs(np.asarray(got, np.float64) - want).max(-1)
        flip = cfg.alpha_min * max(1.0, float(np.abs(want).max()), float(BG.max()))
        assert np.mean(err > 2e-5) < 2e-3, f"{name}: {np.sum(err > 2e-5)} pixels differ by more than 2e-5"
        assert err.max() <= flip + 2e-5, f"{name}: largest difference {err.max():.3g} exceeds a threshold flip"


@pytest.mark.parametrize("backward", ["jax", "auto"])
def test_tile_size_changes_the_speed_not_the_image_or_its_gradients(backward, seed, x64):
    """`RasterConfig.tile_size` (`ReconstructConfig.tile_size`, 8 in the recommended CPU levers):
    at 8 and at 5 (partial tiles on both edges) the image is the brute-force reference's and the
    gradients are the 16-pixel tiles' ('auto': the compiled backward where it is built)."""
    rng = np.random.default_rng(seed)
    g = random_scene(rng, 120, sh_degree=1, num_features=2, num_groups=3, dtype=jnp.float64)
    cam = random_camera(rng, 50, 37, dtype=jnp.float64)
    weights = jnp.asarray(rng.normal(size=(37, 50, 8)), jnp.float64)
    floats, static = eqx.partition(g, eqx.is_inexact_array)

    def value_grad(tile_size):
        cfg = RasterConfig(tile_size=tile_size, tile_capacity=g.num, pair_capacity=g.num * 64, chunk_size=8,
                           backward=backward)

        def loss(f):
            out = render(eqx.combine(f, static), cam, jnp.asarray(BG), num_groups=3, config=cfg)
            value = jnp.sum(out.rgb * weights[..., :3]) + jnp.sum(out.depth_accum * weights[..., 3]) \
                + jnp.sum(out.features * weights[..., 4:6]) + jnp.sum(out.group_masks[..., :2] * weights[..., 6:])
            return value, out

        (_, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(floats)
        assert int(out.overflow) == 0
        return out, grad, cfg

    _, grad16, _ = value_grad(16)
    for tile_size in (8, 5):
        out, grad, cfg = value_grad(tile_size)
        _compare(out, render_reference(g, cam, BG, cfg, num_groups=3), atol=1e-10)
        for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "features"):
            want, got = np.asarray(getattr(grad16, name)), np.asarray(getattr(grad, name))
            assert np.abs(want).max() > 0, name
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max(), err_msg=name)


def test_sparse_binning_equals_dense_binning(seed):
    rng = np.random.default_rng(seed)
    g = random_scene(rng, 250, spread=1.5)
    cam = random_camera(rng, 70, 45)
    cfg = RasterConfig(tile_capacity=64)
    p = project(g, cam, cfg)
    sparse = bin_gaussians(p, cam.width, cam.height, cfg)
    dense = bin_gaussians_dense(p, cam.width, cam.height, cfg)
    np.testing.assert_array_equal(np.asarray(sparse.counts), np.asarray(dense.counts))
    np.testing.assert_array_equal(np.asarray(sparse.ids), np.asarray(dense.ids))
    assert int(sparse.overflow) == int(dense.overflow)
    assert int(sparse.max_tile_count) == int(dense.max_tile_count)
    # Slots are front to back within every tile.
    depth = np.asarray(p.depths)
    for t in range(sparse.ids.shape[0]):
        n = int(sparse.counts[t])
        assert np.all(np.diff(depth[np.asarray(sparse.ids[t, :n])]) >= 0)


@pytest.mark.parametrize("num_tiles, n, key", [(40, 1000, "int32"), (1, 2**30, "int32"), (3, 2**30, "uint32"),
                                              (4, 2**30, "two keys")])
def test_pairs_sort_by_tile_then_depth_rank_whatever_the_key_width(seed, num_tiles, n, key):
    """The pairs' one-key sort packs tile * n + rank into int32 or uint32 where (tiles + 1) * n fits,
    else sorts the two keys: every way orders by tile, then rank, as a lexicographic sort does."""
    from zerohsi_jax.splat.binning import _sort_pairs_by_tile

    rng = np.random.default_rng(seed)
    size = 3000
    tile = rng.integers(0, num_tiles + 1, size)  # num_tiles: the padding slots' tile
    rank = rng.integers(0, n, size)
    # Within a tile a Gaussian appears once: no repeated (tile, rank).
    _, first = np.unique(tile.astype(np.int64) * n + rank, return_index=True)
    tile, rank = tile[np.sort(first)], rank[np.sort(first)]
    largest = (num_tiles + 1) * n - 1
    assert {"int32": largest < 2**31, "uint32": 2**31 <= largest < 2**32, "two keys": largest >= 2**32}[key]
    got_tile, got_rank = jax.jit(_sort_pairs_by_tile, static_argnums=(2, 3))(
        jnp.asarray(tile, jnp.int32), jnp.asarray(rank, jnp.int32), num_tiles, n)
    order = np.lexsort((rank, tile))
    np.testing.assert_array_equal(np.asarray(got_tile), tile[order])
    np.testing.assert_array_equal(np.asarray(got_rank), rank[order])
    assert got_tile.dtype == jnp.int32 and got_rank.dtype == jnp.int32


def test_tile_overflow_is_counted_and_warned(seed):
    rng = np.random.default_rng(seed)
    g = random_scene(rng, 300, log_scale_range=(-1.5, -1.0))
    cam = random_camera(rng, 48, 48)
    small = RasterConfig(tile_capacity=16, overflow="drop")
    out = render(g, cam, config=small)
    assert int(out.max_tile_count) > 16
    assert int(out.overflow) > 0
    with pytest.warns(RuntimeWarning, match=r"tile_capacity=\d+"):
        assert check_overflow(out, small)
    fixed = suggested_capacity(out, small)
    out2 = render(g, cam, config=fixed)
    assert int(out2.overflow) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not check_overflow(out2, fixed)
    ref = render_reference(g, cam, None, fixed)
    assert np.abs(np.asarray(out2.rgb) - ref["rgb"]).max() < 2e-2


def test_pair_overflow_is_counted(seed):
    rng = np.random.default_rng(seed)
    g = random_scene(rng, 200, log_scale_range=(-1.5, -1.0))
    cam = random_camera(rng, 64, 64)
    cfg = RasterConfig(tile_capacity=512, pair_capacity=100, overflow="drop")
    out = render(g, cam, config=cfg)
    assert int(out.num_pairs) > 100
    # Every pair past the buffer is counted, and the largest tile count stays exact (the pairs
    # that never reached a tile's run still count toward the capacity it needs).
    p = project(g, cam, cfg)
    unlimited = bin_gaussians_dense(p, cam.width, cam.height, cfg)
    assert int(out.overflow) == int(out.num_pairs) - 100
    assert int(out.max_tile_count) == int(unlimited.max_tile_count)
    assert int(out.num_pairs) == int(unlimited.num_pairs)
    fitted = fit_capacity(g, cam, cfg)
    assert fitted.pair_capacity >= int(out.num_pairs)
    assert int(render(g, cam, config=fitted).overflow) == 0


def test_jit_and_vmap_over_cameras_and_seeds(seed):
    rng = np.random.default_rng(seed)
    # 120 Gaussians on 3 x 2 tiles: these capacities hold every pair there can be.
    cfg = RasterConfig(tile_capacity=128, pair_capacity=6 * 120)
    cams = [random_camera(rng, 40, 32) for _ in range(3)]
    # Same intrinsics for a camera batch: stack the poses of three cameras on the first one's lens.
    base = cams[0]
    batch = eqx.tree_at(lambda c: c.viewmat, base, jnp.stack([c.viewmat for c in cams]))
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (3,) + x.shape) if x.ndim == 0 else x, batch)
    g = random_scene(rng, 120)
    render_jit = jax.jit(lambda g, c: render(g, c, config=cfg).rgb)
    stacked = jax.vmap(render_jit, in_axes=(None, 0))(g, batch)
    for i, c in enumerate(cams):
        single = render_jit(g, base.with_viewmat(c.viewmat))
        # The batched program fuses differently from the single one, so the two round differently:
        # up to 1.2e-6 measured on an AMD EPYC (AVX2), below 1e-6 on an Intel Xeon.
        np.testing.assert_allclose(np.asarray(stacked[i]), np.asarray(single), atol=1e-5)

    seeds = [random_scene(rng, 120) for _ in range(3)]
    gs = jax.tree.map(lambda *xs: jnp.stack(xs), *seeds)
    per_seed = jax.vmap(render_jit, in_axes=(0, None))(gs, base)
    for i, gi in enumerate(seeds):
        np.testing.assert_allclose(np.asarray(per_seed[i]), np.asarray(render_jit(gi, base)), atol=1e-6)


def test_group_masks_are_occlusion_aware():
    """A near red square in front of a far blue one: the far group's mask is zero where hidden."""
    from zerohsi_jax.splat import Camera, rgb_to_sh0

    def square(z, color, group):
        xs, ys = np.meshgrid(np.linspace(-0.5, 0.5, 12), np.linspace(-0.5, 0.5, 12))
        n = xs.size
        return Gaussians(
            means=jnp.asarray(np.stack([xs.ravel(), ys.ravel(), np.full(n, z)], -1), jnp.float32),
            quats=jnp.tile(jnp.array([1.0, 0, 0, 0]), (n, 1)),
            log_scales=jnp.full((n, 3), np.log(0.06), jnp.float32),
            opacity_logits=jnp.full((n,), 6.0),
            sh=jnp.tile(rgb_to_sh0(jnp.asarray(color, jnp.float32))[None, None], (n, 1, 1)),
        ).with_group(group)

    g = Gaussians.concatenate([square(2.0, (1, 0, 0), 0), square(3.0, (0, 0, 1), 1)])
    cam = Camera.look_at((0, 0, 0), (0, 0, 1), width=32, height=32, fov_y_deg=40)
    out = render(g, cam, num_groups=2, config=RasterConfig(tile_capacity=512))
    masks = np.asarray(out.group_masks)
    centre = masks[12:20, 12:20]
    assert centre[..., 0].min() > 0.99 and centre[..., 1].max() < 0.01
    np.testing.assert_allclose(masks.sum(-1), np.asarray(out.alpha), atol=1e-5)
    assert np.asarray(out.rgb)[16, 16, 0] > 0.95


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="backward"):
        RasterConfig(backward="nope")
    with pytest.raises(ValueError):
        RasterConfig(alpha_min=0.5, alpha_max=0.4)
    with pytest.raises(ValueError, match="overflow must be 'grow', 'drop' or 'error'"):
        RasterConfig(overflow="ignore")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="tile_capacity must be a positive int or None"):
            RasterConfig(tile_capacity=bad)
    cfg = dataclasses.replace(RasterConfig(), tile_capacity=32)
    assert hash(cfg) == hash(RasterConfig(tile_capacity=32))
    # A measured count (a NumPy integer) is stored as the int it equals.
    assert type(RasterConfig(pair_capacity=np.int64(2048)).pair_capacity) is int


# ----------------------------------------------------------------- capacities: measure, grow, drop

CAPACITY_SCENES = {"stacked_tile": stacked_tile_scene, "screen_filling": screen_filling_scene}


def _old_fixed_capacities(g):
    """The capacities RasterConfig() used to fix: 256 per tile, 4 pairs per Gaussian."""
    return RasterConfig(tile_capacity=256, pair_capacity=max(1024, 4 * g.num), overflow="drop")


@pytest.mark.parametrize("name", sorted(CAPACITY_SCENES))
def test_default_config_renders_every_pair(name, seed, x64):
    """A scene beyond any fixed guess (700 Gaussians on one tile; 400 Gaussians each on every
    tile): the default config measures it and renders the float64 reference's image."""
    g, cam = CAPACITY_SCENES[name](np.random.default_rng(seed), dtype=jnp.float64)
    ref = render_reference(g, cam, BG, RasterConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # measured up front: no second render, no warning
        out = render(g, cam, jnp.asarray(BG))
    assert int(out.overflow) == 0
    _compare(out, ref, atol=1e-10)
    # The scene is one where fixed capacities drop pairs, and the loss shows in the image.
    old = render(g, cam, jnp.asarray(BG), config=_old_fixed_capacities(g))
    assert int(old.overflow) > 0
    assert np.abs(np.asarray(old.rgb) - ref["rgb"]).max() > 1e-2


def test_drop_policy_keeps_fixed_capacities_and_counts(x64):
    g, cam = stacked_tile_scene(np.random.default_rng(0), dtype=jnp.float64)
    cfg = RasterConfig(tile_capacity=64, pair_capacity=4096, overflow="drop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropping was asked for: no warning
        out = render(g, cam, jnp.asarray(BG), config=cfg)
    p = project(g, cam, cfg)
    exact = bin_gaussians_dense(p, cam.width, cam.height, cfg)
    assert int(out.overflow) == int(exact.overflow) > 0
    assert int(out.max_tile_count) == int(exact.max_tile_count) > 64
    # Every Gaussian of this scene lies on one tile, so the render is the reference image of the
    # 64 front-most Gaussians alone (dropping is front to back).
    assert int(exact.num_pairs) == int(np.sum(np.asarray(p.visible)))
    ids, counts = np.asarray(exact.ids), np.asarray(exact.counts)
    kept = np.zeros(g.num, bool)
    kept[ids[np.arange(ids.shape[1])[None] < counts[:, None]]] = True
    assert kept.sum() == 64
    front = eqx.tree_at(lambda t: t.opacity_logits, g, jnp.where(kept, g.opacity_logits, -50.0))
    np.testing.assert_allclose(np.asarray(out.rgb), render_reference(front, cam, BG, cfg)["rgb"], atol=1e-10)


def _crowded_scene():
    rng = np.random.default_rng(0)
    return random_scene(rng, 300, log_scale_range=(-1.5, -1.0)), random_camera(rng, 48, 48)


def test_grow_policy_renders_again_with_capacities_that_fit():
    g, cam = _crowded_scene()
    small = RasterConfig(tile_capacity=16, pair_capacity=256)
    dropped = render(g, cam, config=dataclasses.replace(small, overflow="drop"))
    assert int(dropped.overflow) > 0
    grown = grown_capacity(small, dropped)
    fix = rf"rendered again with tile_capacity={grown.tile_capacity}, pair_capacity={grown.pair_capacity} "
    with pytest.warns(RuntimeWarning, match=fix):
        out = render(g, cam, config=small)
    assert int(out.overflow) == 0
    np.testing.assert_array_equal(np.asarray(out.rgb), np.asarray(render(g, cam, config=grown).rgb))
    assert np.abs(np.asarray(out.rgb) - np.asarray(dropped.rgb)).max() > 1e-2  # the re-run mattered


def test_error_policy_raises_naming_the_capacities():
    g, cam = _crowded_scene()
    cfg = RasterConfig(tile_capacity=16, pair_capacity=2048, overflow="error")
    with pytest.raises(RasterOverflowError, match=r"Set RasterConfig\(tile_capacity=\d+, pair_capacity=2048\)"):
        render(g, cam, config=cfg)
    # Under jit the check runs with the program (equinox.error_if).
    with pytest.raises(Exception, match="overflow='error'"):
        jax.block_until_ready(eqx.filter_jit(lambda g: render(g, cam, config=cfg).rgb)(g))


def test_traced_render_needs_capacities():
    rng = np.random.default_rng(0)
    g = random_scene(rng, 50)
    cam = random_camera(rng, 32, 32)
    for traced in (
        lambda: jax.jit(lambda g: render(g, cam).rgb)(g),
        lambda: jax.jit(lambda: render(g, cam).rgb)(),  # constants, but still inside a trace
        lambda: jax.grad(lambda s: jnp.sum(render(g, cam, s * jnp.ones(3)).rgb))(1.0),
    ):
        with pytest.raises(ValueError, match=r"being traced.*fit_capacity\(gaussians, camera, config\)"):
            traced()
    cfg = fit_capacity(g, cam)
    out = jax.jit(lambda g: render(g, cam, config=cfg))(g)
    assert int(out.overflow) == 0
    np.testing.assert_allclose(np.asarray(out.rgb), np.asarray(render(g, cam).rgb), atol=1e-6)


def test_grown_capacity_fits_what_a_traced_render_dropped():
    """The re-run contract for callers that render under jit: overflow counted, capacities grown
    from the (stacked) outputs on the host, one re-run exact."""
    rng = np.random.default_rng(0)
    g = random_scene(rng, 300, log_scale_range=(-1.5, -1.0))
    cams = [random_camera(rng, 48, 48) for _ in range(3)]
    batch = eqx.tree_at(lambda c: c.viewmat, cams[0], jnp.stack([c.viewmat for c in cams]))
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (3,) + x.shape) if x.ndim == 0 else x, batch)
    step = lambda cfg: jax.jit(jax.vmap(lambda c: render(g, c, config=cfg), in_axes=(0,)))  # noqa: E731
    small = RasterConfig(tile_capacity=16, pair_capacity=1024)
    out = step(small)(batch)
    assert int(jnp.max(out.overflow)) > 0
    grown = grown_capacity(small, out)
    assert grown.tile_capacity >= int(jnp.max(out.max_tile_count))
    assert grown.pair_capacity >= int(jnp.max(out.num_pairs))
    again = step(grown)(batch)
    assert int(jnp.max(again.overflow)) == 0
    # Capacities that already fit are kept; None ones are set.
    assert grown_capacity(grown, again) == grown
    assert grown_capacity(RasterConfig(), again).tile_capacity >= int(jnp.max(again.max_tile_count))
    assert grown_capacity(small, (out.max_tile_count, out.num_pairs)) == grown
    # The measured capacities are the exact counts.
    assert measure_capacity(g, batch) == (int(jnp.max(again.max_tile_count)), int(jnp.max(again.num_pairs)))
