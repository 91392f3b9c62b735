"""Random scenes for the rasterizer tests."""

import jax.numpy as jnp
import numpy as np

from zerohsi_jax.splat import Camera, Gaussians


def random_scene(rng: np.random.Generator, num=150, *, sh_degree=1, num_features=0, num_groups=0,
                 opacity_scale=2.0, log_scale_range=(-3.0, -1.5), spread=1.0, dtype=jnp.float32):
    """Gaussians around z = 3 in a random orientation, some behind or beside the camera."""
    k = (sh_degree + 1) ** 2
    means = rng.uniform(-spread, spread, (num, 3)) + np.array([0.0, 0.0, 3.0])
    # A few Gaussians behind the near plane and beside the frustum exercise culling.
    means[: max(1, num // 20), 2] = rng.uniform(-1.0, 0.005, max(1, num // 20))
    g = Gaussians(
        means=jnp.asarray(means, dtype),
        quats=jnp.asarray(rng.normal(size=(num, 4)), dtype),
        log_scales=jnp.asarray(rng.uniform(*log_scale_range, (num, 3)), dtype),
        opacity_logits=jnp.asarray(opacity_scale * rng.normal(size=num), dtype),
        sh=jnp.asarray(0.6 * rng.normal(size=(num, k, 3)), dtype),
        features=jnp.asarray(rng.uniform(size=(num, num_features)), dtype) if num_features else None,
        groups=jnp.asarray(rng.integers(0, num_groups, num), jnp.int32) if num_groups else None,
    )
    return g


def random_camera(rng: np.random.Generator, width=48, height=40, dtype=jnp.float32) -> Camera:
    eye = np.array([0.0, 0.0, 0.0]) + rng.normal(scale=0.2, size=3)
    target = np.array([0.0, 0.0, 3.0]) + rng.normal(scale=0.3, size=3)
    cam = Camera.look_at(eye, target, fov_y_deg=rng.uniform(45, 70), width=width, height=height)
    # An off-centre principal point and unequal focal lengths, as real calibrations have.
    return Camera(
        jnp.asarray(cam.viewmat, dtype),
        float(cam.fx) * rng.uniform(0.9, 1.1),
        float(cam.fy) * rng.uniform(0.9, 1.1),
        width / 2 + rng.uniform(-4, 4),
        height / 2 + rng.uniform(-4, 4),
        width,
        height,
        near=0.05,
        far=50.0,
    )
