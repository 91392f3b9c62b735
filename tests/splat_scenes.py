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


def _axis_camera(width, height, fov_y_deg, dtype):
    cam = Camera.look_at((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), fov_y_deg=fov_y_deg, width=width, height=height)
    return Camera(jnp.asarray(cam.viewmat, dtype), cam.fx, cam.fy, cam.cx, cam.cy, width, height, near=0.05, far=50.0)


def _faint_cluster(rng, num, centre_px, spread_px, sigma_px, cam, depth_range, dtype):
    """`num` round, faint Gaussians whose screen means lie within `spread_px` of `centre_px` and
    whose screen sigma is about `sigma_px`, at depths spread over `depth_range`; faint so that
    the last of them still shows through the first (a dropped one changes the image)."""
    f = float(cam.fy)
    z = rng.uniform(*depth_range, num)
    px = centre_px[0] + rng.uniform(-spread_px, spread_px, num) - float(cam.cx)
    py = centre_px[1] + rng.uniform(-spread_px, spread_px, num) - float(cam.cy)
    means = np.stack([px * z / float(cam.fx), py * z / f, z], -1)
    sigma = sigma_px * rng.uniform(0.7, 1.3, (num, 3)) * (z / f)[:, None]
    return Gaussians(
        means=jnp.asarray(means, dtype),
        quats=jnp.asarray(rng.normal(size=(num, 4)), dtype),
        log_scales=jnp.asarray(np.log(sigma), dtype),
        opacity_logits=jnp.asarray(rng.normal(-4.5, 0.3, num), dtype),
        sh=jnp.asarray(0.8 * rng.normal(size=(num, 1, 3)), dtype),
    )


def stacked_tile_scene(rng: np.random.Generator, num=700, dtype=jnp.float32):
    """More Gaussians than the old fixed tile capacity (256), all on one 16x16 tile: small, faint
    and stacked in depth along the view axis of a 48x48 camera."""
    cam = _axis_camera(48, 48, 50.0, dtype)
    # Means within 1.5 px of pixel (24, 24) and extents under 4 px keep every one inside the
    # tile spanning pixels 16..31.
    return _faint_cluster(rng, num, (24.0, 24.0), 1.5, 0.7, cam, (2.0, 6.0), dtype), cam


def screen_filling_scene(rng: np.random.Generator, num=400, dtype=jnp.float32):
    """Faint Gaussians each wider than the image, so that every one touches every tile of a
    64x48 camera: pairs = num x 12 tiles, beyond the old fixed pair buffer (4 per Gaussian)."""
    cam = _axis_camera(64, 48, 60.0, dtype)
    return _faint_cluster(rng, num, (32.0, 24.0), 20.0, 40.0, cam, (2.0, 8.0), dtype), cam
