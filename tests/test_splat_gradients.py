"""Gradients: central finite differences in float64, and the custom backward against autodiff."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from splat_scenes import random_camera, random_scene

from zerohsi_jax.splat import RasterConfig, render

FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh", "features")


def _loss_fn(cam, cfg, weights):
    def loss(g, viewmat, background):
        out = render(g, cam.with_viewmat(viewmat), background, config=cfg)
        return (
            jnp.sum(out.rgb * weights[..., :3])
            + jnp.sum(out.depth_accum * weights[..., 3])
            + jnp.sum(out.alpha * weights[..., 4])
            + jnp.sum(out.features * weights[..., 5:])
        )

    return loss


def _scene(rng, dtype):
    g = random_scene(rng, 60, sh_degree=2, num_features=2, dtype=dtype, opacity_scale=1.5)
    cam = random_camera(rng, 36, 30, dtype=dtype)
    weights = jnp.asarray(rng.normal(size=(30, 36, 7)), dtype)
    return g, cam, weights


def test_gradients_match_central_finite_differences(seed, x64):
    """Directional derivatives along random directions of every input, including the camera
    pose. The skip and stop thresholds are set far below any value reached so that the image
    is smooth in the inputs (with gsplat's thresholds it has tiny jumps a difference quotient
    cannot see past); the custom backward is what is differentiated."""
    rng = np.random.default_rng(seed)
    g, cam, weights = _scene(rng, jnp.float64)
    cfg = RasterConfig(alpha_min=1e-12, transmittance_min=1e-12, alpha_max=1.0, tile_capacity=64, chunk_size=8)
    loss = jax.jit(_loss_fn(cam, cfg, weights))
    bg = jnp.asarray([0.3, 0.1, 0.6])
    grads = jax.jit(jax.grad(_loss_fn(cam, cfg, weights), argnums=(0, 1, 2)))(g, cam.viewmat, bg)
    eps = 1e-6
    for name in FIELDS + ("viewmat", "background"):
        for _ in range(2):
            if name == "viewmat":
                d = jnp.zeros((4, 4)).at[:3].set(jnp.asarray(rng.normal(size=(3, 4))))
                plus, minus = loss(g, cam.viewmat + eps * d, bg), loss(g, cam.viewmat - eps * d, bg)
                analytic = jnp.sum(grads[1] * d)
            elif name == "background":
                d = jnp.asarray(rng.normal(size=3))
                plus, minus = loss(g, cam.viewmat, bg + eps * d), loss(g, cam.viewmat, bg - eps * d)
                analytic = jnp.sum(grads[2] * d)
            else:
                leaf = getattr(g, name)
                d = jnp.asarray(rng.normal(size=leaf.shape))
                shift = lambda s, leaf=leaf, d=d, name=name: eqx.tree_at(lambda t: getattr(t, name), g, leaf + s * d)  # noqa: E731
                plus, minus = loss(shift(eps), cam.viewmat, bg), loss(shift(-eps), cam.viewmat, bg)
                analytic = jnp.sum(getattr(grads[0], name) * d)
            numeric = (plus - minus) / (2 * eps)
            assert abs(float(numeric - analytic)) <= 1e-6 * max(1.0, abs(float(analytic))), (
                f"{name}: finite difference {float(numeric):.9g} vs gradient {float(analytic):.9g}"
            )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_custom_backward_equals_autodiff(dtype, seed, request):
    """With gsplat's thresholds and clamp active, the recomputing backward and plain autodiff of
    the forward scan differentiate the same piecewise function."""
    rng = np.random.default_rng(seed)
    ctx = jax.enable_x64(dtype == "float64")
    with ctx:
        dt = jnp.float64 if dtype == "float64" else jnp.float32
        g, cam, weights = _scene(rng, dt)
        # Opaque enough that the 0.999 clamp and early stopping are both hit.
        g = eqx.tree_at(lambda g: g.opacity_logits, g, g.opacity_logits + 3.0)
        cfg = RasterConfig(tile_capacity=64, chunk_size=8)
        bg = jnp.asarray([0.3, 0.1, 0.6], dt)
        custom = jax.jit(jax.grad(_loss_fn(cam, cfg, weights), argnums=(0, 1, 2)))(g, cam.viewmat, bg)
        auto_cfg = dataclasses.replace(cfg, backward="autodiff")
        auto = jax.jit(jax.grad(_loss_fn(cam, auto_cfg, weights), argnums=(0, 1, 2)))(g, cam.viewmat, bg)
        tol = 1e-10 if dtype == "float64" else 2e-4
        for name in FIELDS:
            a, b = np.asarray(getattr(custom[0], name)), np.asarray(getattr(auto[0], name))
            scale = max(1.0, np.abs(b).max())
            assert np.abs(a - b).max() <= tol * scale, f"{name}: max diff {np.abs(a - b).max()} (scale {scale})"
        for a, b in ((custom[1], auto[1]), (custom[2], auto[2])):
            scale = max(1.0, float(jnp.abs(b).max()))
            assert float(jnp.abs(a - b).max()) <= tol * scale


def test_gradients_are_finite_for_culled_gaussians(seed):
    """Gaussians behind the camera, on the near plane and far off screen get zero, finite grads."""
    rng = np.random.default_rng(seed)
    g, cam, weights = _scene(rng, jnp.float32)
    # Behind the camera, at its centre, just in front of it (inside the near plane), far off screen;
    # written in camera coordinates and moved to the world.
    in_camera = jnp.array([[0.0, 0.0, -1.0], [0, 0, 0.0], [0, 0, 1e-8], [1e6, 0, 3], [0, -1e6, 3]])
    rot, trans = cam.viewmat[:3, :3], cam.viewmat[:3, 3]
    means = g.means.at[:5].set((in_camera - trans) @ rot)
    g = eqx.tree_at(lambda g: g.means, g, means)
    grads = jax.jit(jax.grad(_loss_fn(cam, RasterConfig(tile_capacity=64, chunk_size=8), weights)))(
        g, cam.viewmat, jnp.zeros(3)
    )
    for name in FIELDS:
        leaf = np.asarray(getattr(grads, name))
        assert np.all(np.isfinite(leaf)), name
        assert np.all(leaf[:5] == 0), name
