"""The compiled compositing forward on the CPU (kernels/composite_forward_cpu.cc, `RasterConfig.forward`).

It must give what XLA's loop (`composite_forward_jax`) gives: the composited tiles, the final
transmittance and the stop index the backward walks back from, on random scenes, tiles at
capacity, empty tiles, pixels that turn opaque early, the alpha clamp, tiles of 8 pixels, padding
pixels, under jit and nested vmap, whatever the thread count; and `forward='auto'` must choose it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_kernel_backward import CAPACITY, CFG, CHUNK, N, random_scene

from zerohsi_jax.splat import kernel_backward as kb
from zerohsi_jax.splat.composite import composite, composite_forward_jax
from zerohsi_jax.splat.composite_step import tile_pixel_centers
from zerohsi_jax.splat.config import RasterConfig

INPUTS = ("means2d", "conics", "opacities", "features", "background", "ids", "counts")


@pytest.fixture(scope="module", autouse=True)
def cpu_kernel():
    """The CPU library must build wherever the tests run (CI has gcc) and hold the forward."""
    assert kb.load_kernel("cpu"), kb.kernel_status("cpu")
    assert kb.has_forward("cpu")


def forward_inputs(scene, cfg):
    args = [jnp.asarray(scene[k]) for k in INPUTS]
    pix = tile_pixel_centers(scene["width"], scene["height"], cfg).astype(args[0].dtype)
    return (*args, pix)


_jax_forward = jax.jit(composite_forward_jax, static_argnums=8)
_kernel_forward = jax.jit(kb.kernel_composite_forward, static_argnums=8)


def assert_same_forward(scene, cfg, *, atol):
    args = forward_inputs(scene, cfg)
    expected = _jax_forward(*args, cfg)
    got = _kernel_forward(*args, cfg)
    for name, e, g in zip(("tiles", "final transmittance", "stop index"), expected, got, strict=True):
        e, g = np.asarray(e), np.asarray(g)
        assert e.shape == g.shape and e.dtype == g.dtype, name
        if name == "stop index":
            np.testing.assert_array_equal(g, e, err_msg=name)
        else:
            assert np.all(np.isfinite(g)), name
            np.testing.assert_allclose(g, e, rtol=0, atol=atol, err_msg=name)
    return got


F64 = 1e-12
F32 = 2e-6


@pytest.mark.parametrize("seed, visible", [(0, 40), (1, 120)])
def test_random_scenes_float64(x64, seed, visible):
    assert_same_forward(random_scene(seed, visible), CFG, atol=F64)


@pytest.mark.parametrize("seed, n, size, channels, tile_size", [(2, 150, (16, 16), 1, 16), (3, 300, (50, 41), 7, 16),
                                                                  (5, 200, (37, 29), 5, 8)])
def test_other_sizes_channels_and_tiles(x64, seed, n, size, channels, tile_size):
    """50 x 41 and 37 x 29 leave padding pixels in the last row and column of tiles."""
    scene = random_scene(seed, n, *size, channels, total=n, tile_capacity=96, tile_size=tile_size)
    cfg = RasterConfig(tile_size=tile_size, tile_capacity=96, chunk_size=CHUNK)
    assert_same_forward(scene, cfg, atol=F64)


def test_random_scene_float32():
    assert_same_forward(random_scene(4, 100, dtype=np.float32), CFG, atol=F32)


def test_tiles_at_capacity(x64):
    scene = random_scene(6, N, scale=(2.0, 8.0), opacity=(0.02, 0.3))
    assert np.all(scene["counts"] == CAPACITY) and np.all(scene["true_counts"] > CAPACITY)
    assert_same_forward(scene, CFG, atol=F64)


def test_empty_tiles_keep_the_background(x64):
    scene = random_scene(7, 60, region=(3.0, 3.0, 12.0, 12.0), scale=(0.5, 1.0))
    assert np.sum(scene["counts"] == 0) >= 4
    tiles, trans, stop = assert_same_forward(scene, CFG, atol=F64)
    empty = np.flatnonzero(scene["counts"] == 0)
    np.testing.assert_array_equal(np.asarray(trans)[empty], 1.0)
    np.testing.assert_array_equal(np.asarray(stop)[empty], CAPACITY)  # never stopped: the capacity
    np.testing.assert_allclose(np.asarray(tiles)[empty], np.broadcast_to(scene["background"], (empty.size, 256, 3)))


def test_opaque_pixels_stop_early(x64):
    scene = random_scene(8, N, scale=(4.0, 10.0), opacity=(0.9, 0.99))
    _, trans, stop = assert_same_forward(scene, CFG, atol=F64)
    stopped = np.asarray(stop) < scene["counts"][:, None]
    assert stopped.mean() > 0.9, "most pixels should turn opaque before their tile's last slot"
    # A pixel stops before its transmittance would fall to the threshold: it stays above it.
    assert np.all(np.asarray(trans)[stopped] > CFG.transmittance_min)


def test_alpha_clamp(x64):
    # Means on pixel centres: sigma = 0 there and o exp(-sigma) = 1 > alpha_max.
    scene = random_scene(9, 40, scale=(1.0, 3.0), opacity=(1.0, 1.0), centered=True)
    assert_same_forward(scene, CFG, atol=F64)


def test_thread_count_does_not_change_results(monkeypatch):
    args = forward_inputs(random_scene(10, 150, dtype=np.float32), CFG)
    results = []
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("ZEROHSI_JAX_KERNEL_THREADS", threads)
        results.append(kb.kernel_composite_forward(*args, CFG))  # eager: the attribute is read each call
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_jit_and_nested_vmap_through_composite(x64):
    """Two batch axes reach the FFI call; every example is its own image, and so are its gradients."""
    scene = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v
             for k, v in random_scene(11, 100, 40, 24, 4, total=100).items()}
    rng = np.random.default_rng(0)
    opacities = rng.uniform(0.05, 0.99, (2, 3) + scene["opacities"].shape)
    features = rng.uniform(-1, 1, (2, 3) + scene["features"].shape)

    def image(cfg):
        def one(o, f):
            return composite(scene["means2d"], scene["conics"], o, f, scene["background"], scene["ids"],
                             scene["counts"], scene["width"], scene["height"], cfg)

        return jax.jit(jax.vmap(jax.vmap(one)))(opacities, features)

    def grads(cfg):
        def loss(o, f):
            return jnp.sum(composite(scene["means2d"], scene["conics"], o, f, scene["background"], scene["ids"],
                                     scene["counts"], scene["width"], scene["height"], cfg) ** 2)

        return jax.jit(jax.vmap(jax.vmap(jax.grad(loss, argnums=(0, 1)))))(opacities, features)

    jax_cfg = RasterConfig(tile_capacity=64, chunk_size=CHUNK, forward="jax")
    kernel_cfg = dataclasses.replace(jax_cfg, forward="kernel")
    expected, got = image(jax_cfg), image(kernel_cfg)
    assert got.shape == (2, 3, 24, 40, 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-12)
    assert not np.allclose(np.asarray(got[0, 0]), np.asarray(got[1, 2]))
    for e, g in zip(grads(jax_cfg), grads(kernel_cfg), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-9, atol=1e-11 * np.abs(e).max())


def test_auto_uses_the_kernel_on_the_cpu_and_jax_does_not():
    scene = {k: jnp.asarray(v) for k, v in random_scene(12, 50, 16, 16, total=50, tile_capacity=32,
                                                       dtype=np.float32).items()}

    def lowered(cfg):
        def img(opacities):
            return composite(scene["means2d"], scene["conics"], opacities, scene["features"], scene["background"],
                             scene["ids"], scene["counts"], 16, 16, cfg)

        return jax.jit(img).lower(scene["opacities"]).as_text()

    assert RasterConfig().forward == "auto"
    assert kb.FORWARD_TARGET_NAME in lowered(RasterConfig(tile_capacity=32, chunk_size=CHUNK))
    assert kb.FORWARD_TARGET_NAME not in lowered(RasterConfig(tile_capacity=32, chunk_size=CHUNK, forward="jax"))
    with pytest.raises(ValueError, match="forward must be"):
        RasterConfig(forward="cuda")


def test_kernel_rejects_inconsistent_shapes():
    cfg = RasterConfig(tile_capacity=32, chunk_size=CHUNK)
    args = forward_inputs(random_scene(13, 50, 16, 16, total=50, tile_capacity=32, dtype=np.float32), cfg)
    wrong = RasterConfig(tile_size=8, tile_capacity=32, chunk_size=CHUNK)
    with pytest.raises(Exception, match="composite forward: pix holds 256 pixels per tile, tile_size is 8"):
        jax.block_until_ready(kb.kernel_composite_forward(*args, wrong))
    short_counts = (*args[:6], args[6][:-1], args[7])
    with pytest.raises(Exception, match="composite forward: unexpected shape of counts"):
        jax.block_until_ready(kb.kernel_composite_forward(*short_counts, cfg))


def test_a_nan_channel_of_a_listed_gaussian_shows_as_in_xlas_loop(x64):
    """XLA's loop adds weight * f (0 where a slot does not count) to every pixel of a tile, so a NaN
    channel of any Gaussian in the tile's list makes the tile NaN there; the kernel must too, or a
    listed Gaussian gone NaN would leave the loss finite where XLA's loop makes it NaN."""
    scene = random_scene(14, 120, opacity=(0.05, 0.3))  # translucent: no pixel stops
    listed = scene["ids"][0, : scene["counts"][0]]
    scene["features"][listed[len(listed) // 2], 1] = np.nan
    tiles, _, _ = _kernel_forward(*forward_inputs(scene, CFG), CFG)
    expected, _, _ = _jax_forward(*forward_inputs(scene, CFG), CFG)
    nan = np.isnan(np.asarray(tiles))
    np.testing.assert_array_equal(nan, np.isnan(np.asarray(expected)))
    assert nan[0, :, 1].all() and not nan[:, :, 0].any()
