"""Images against the float64 brute-force reference; binning, capacities, jit and vmap."""

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from splat_scenes import random_camera, random_scene

from zerohsi_jax.splat import (
    Gaussians,
    RasterConfig,
    bin_gaussians,
    bin_gaussians_dense,
    check_overflow,
    fit_capacity,
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
    # Very opaque and large: alpha hits the 0.999 clamp and pixels stop at T < 1e-4.
    "opaque": (dict(num=120, opacity_scale=0.0, log_scale_range=(-1.5, -0.8)), {}),
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
    cfg = RasterConfig(tile_capacity=256)
    out = jax.jit(lambda g, c: render(g, c, jnp.asarray(BG, jnp.float32), config=cfg))(g, cam)
    ref = render_reference(g, cam, BG, cfg)
    err = np.abs(np.asarray(out.rgb, np.float64) - ref["rgb"]).max(-1)
    # A float32 alpha or transmittance exactly at a threshold may round the other way: such a
    # flip changes a pixel by at most about alpha_min; every other pixel agrees to float32 precision.
    assert np.mean(err > 2e-5) < 2e-3, f"{np.sum(err > 2e-5)} pixels differ by more than 2e-5"
    assert err.max() < 2e-2
    np.testing.assert_allclose(np.asarray(out.features), ref["features"], atol=2e-2)


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


def test_tile_overflow_is_counted_and_warned(seed):
    rng = np.random.default_rng(seed)
    g = random_scene(rng, 300, log_scale_range=(-1.5, -1.0))
    cam = random_camera(rng, 48, 48)
    small = RasterConfig(tile_capacity=16)
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
    cfg = RasterConfig(tile_capacity=512, pair_capacity=100)
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
    cfg = RasterConfig(tile_capacity=256)
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
        np.testing.assert_allclose(np.asarray(stacked[i]), np.asarray(single), atol=1e-6)

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
    cfg = dataclasses.replace(RasterConfig(), tile_capacity=32)
    assert hash(cfg) == hash(RasterConfig(tile_capacity=32))
