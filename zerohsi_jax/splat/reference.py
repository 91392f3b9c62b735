"""The plain twins of the rasterizer's fast stages, which the tests compare them with.

- `bin_gaussians_dense`, twin of `binning.bin_gaussians`: tests every (tile, Gaussian) pair,
  O(tiles x N) memory, no pair capacity.
- `composite_autodiff`, twin of `composite.composite`'s custom backward: the same forward steps
  (`composite_step`) as a fixed-length scan over every chunk, differentiated by plain autodiff
  (`RasterConfig(backward="autodiff")` selects it).
- `render_reference`, twin of `render.render`: a brute-force float64 renderer in NumPy, every
  Gaussian at every pixel, front to back (projection, SH colour and compositing written out
  plainly). No tiles, no extents, no capacities: anything the fast path drops or clips shows up
  as a difference. Cost O(N x H x W); meant for tests on small scenes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .binning import TileBins, tile_grid, tile_ranges
from .camera import Camera
from .composite_step import forward_chunk, initial_state
from .config import RasterConfig
from .gaussians import SH_C0, SH_C1, SH_C2, SH_C3, Gaussians
from .projection import Projected


def bin_gaussians_dense(proj: Projected, width: int, height: int, cfg: RasterConfig = RasterConfig()) -> TileBins:
    """Plain twin of `binning.bin_gaussians`: tests every (tile, Gaussian) pair, O(tiles x N)
    memory. A tile capacity of None holds every Gaussian (nothing can overflow)."""
    n = proj.depths.shape[0]
    if cfg.tile_capacity is None:
        cfg = cfg.with_capacity(tile_capacity=n)
    tiles_x, tiles_y = tile_grid(width, height, cfg.tile_size)
    (x0, x1, y0, y1), n_tiles = tile_ranges(proj, width, height, cfg)
    tx = jnp.arange(tiles_x * tiles_y) % tiles_x
    ty = jnp.arange(tiles_x * tiles_y) // tiles_x
    hit = (
        (n_tiles[None, :] > 0)
        & (tx[:, None] >= x0[None]) & (tx[:, None] <= x1[None])
        & (ty[:, None] >= y0[None]) & (ty[:, None] <= y1[None])
    )  # fmt: skip
    depth = jax.lax.stop_gradient(proj.depths)
    key = jnp.where(hit, depth[None, :], jnp.inf)
    order = jnp.argsort(key, axis=1, stable=True)[:, : cfg.tile_capacity]
    run_len = hit.sum(1).astype(jnp.int32)
    counts = jnp.minimum(run_len, cfg.tile_capacity)
    cap = min(cfg.tile_capacity, n)
    slots = jnp.arange(cap)
    ids = jnp.where(slots[None, :] < counts[:, None], order, 0)
    ids = jnp.pad(ids, ((0, 0), (0, cfg.tile_capacity - cap)))
    return TileBins(
        ids=ids.astype(jnp.int32),
        counts=counts,
        overflow=jnp.sum(jnp.maximum(run_len - cfg.tile_capacity, 0)).astype(jnp.int32),
        max_tile_count=jnp.max(run_len),
        num_pairs=jnp.sum(run_len),
    )


def composite_autodiff(
    means2d: Float[Array, "N 2"],
    conics: Float[Array, "N 3"],
    opacities: Float[Array, " N"],
    features: Float[Array, "N C"],
    background: Float[Array, " C"],
    ids: Int[Array, "T K"],
    counts: Int[Array, " T"],
    pix: Float[Array, "T P 2"],
    cfg: RasterConfig,
) -> Float[Array, "T P C"]:
    """Plain twin of `composite.composite` (per tile, before `tiles_to_image`): the forward as a
    fixed-length scan over every chunk, so plain autodiff stores each chunk instead of recomputing
    back to front as the custom backward and its compiled twin do."""
    init = initial_state(pix.shape[0], pix.shape[1], features.shape[1], ids.shape[1], features.dtype)
    starts = jnp.arange(0, ids.shape[1], cfg.chunk_size, dtype=jnp.int32)

    def step(state, start):
        return forward_chunk(state, start, pix, means2d, conics, opacities, features, ids, counts, cfg), None

    (trans, acc, _, _), _ = jax.lax.scan(step, init, starts)
    return acc + trans[:, :, None] * background


def _quat_to_rotmat(q):
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _sh_color(sh, dirs):
    d = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    basis = [np.full_like(x, SH_C0)]
    if sh.shape[1] > 1:
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if sh.shape[1] > 4:
        basis += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2 * z * z - x * x - y * y),
            SH_C2[3] * x * z,
            SH_C2[4] * (x * x - y * y),
        ]
    if sh.shape[1] > 9:
        basis += [
            SH_C3[0] * y * (3 * x * x - y * y),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4 * z * z - x * x - y * y),
            SH_C3[3] * z * (2 * z * z - 3 * x * x - 3 * y * y),
            SH_C3[4] * x * (4 * z * z - x * x - y * y),
            SH_C3[5] * z * (x * x - y * y),
            SH_C3[6] * x * (x * x - 3 * y * y),
        ]
    basis = np.stack(basis, 1)  # (N, K, 1)
    return np.maximum((basis * sh).sum(1) + 0.5, 0.0)


def render_reference(g: Gaussians, cam: Camera, background=None, cfg: RasterConfig = RasterConfig(),
                     num_groups: int = 0) -> dict[str, np.ndarray]:
    """Plain twin of `render.render`. Returns rgb (H, W, 3), depth_accum, alpha (H, W), features
    (H, W, E) if any, and group masks (H, W, G) if `num_groups`, all float64."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    means, quats, log_scales = f64(g.means), f64(g.quats), f64(g.log_scales)
    opac = 1.0 / (1.0 + np.exp(-f64(g.opacity_logits)))
    view = f64(cam.viewmat)
    fx, fy, cx, cy = (float(v) for v in (cam.fx, cam.fy, cam.cx, cam.cy))
    w, h = cam.width, cam.height

    rot, trans = view[:3, :3], view[:3, 3]
    p = means @ rot.T + trans
    m = _quat_to_rotmat(quats) * np.exp(log_scales)[:, None, :]
    cov_c = rot @ (m @ np.swapaxes(m, 1, 2)) @ rot.T
    x, y, z = p.T
    keep = (z > cam.near) & (z < cam.far)
    zs = np.where(keep, z, 1.0)
    tanx, tany = 0.5 * w / fx, 0.5 * h / fy
    tx = zs * np.clip(x / zs, -(cx / fx + cfg.clip_margin * tanx), (w - cx) / fx + cfg.clip_margin * tanx)
    ty = zs * np.clip(y / zs, -(cy / fy + cfg.clip_margin * tany), (h - cy) / fy + cfg.clip_margin * tany)
    jac = np.zeros((len(z), 2, 3))
    jac[:, 0, 0] = fx / zs
    jac[:, 0, 2] = -fx * tx / zs**2
    jac[:, 1, 1] = fy / zs
    jac[:, 1, 2] = -fy * ty / zs**2
    cov2d = jac @ cov_c @ np.swapaxes(jac, 1, 2)
    det_orig = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    cov2d = cov2d + cfg.eps2d * np.eye(2)
    det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    keep &= det > 0
    det = np.maximum(det, 1e-10)
    ca, cb, cc = cov2d[:, 1, 1] / det, -0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]) / det, cov2d[:, 0, 0] / det
    mx, my = fx * x / zs + cx, fy * y / zs + cy
    if cfg.antialiased:
        opac = opac * np.sqrt(np.maximum(det_orig / det, 0.0))

    campos = -rot.T @ trans
    channels = [_sh_color(f64(g.sh), means - campos), z[:, None]]
    n_feat = 0
    if g.features is not None:
        channels.append(f64(g.features))
        n_feat = g.features.shape[1]
    if num_groups:
        channels.append(np.eye(num_groups)[np.asarray(g.groups)])
    feats = np.concatenate(channels, 1)

    px, py = np.meshgrid(np.arange(w) + cfg.pixel_offset, np.arange(h) + cfg.pixel_offset)
    T = np.ones((h, w))
    acc = np.zeros((h, w, feats.shape[1]))
    done = np.zeros((h, w), bool)
    order = np.argsort(np.where(keep, z, np.inf), kind="stable")
    for i in order[: int(keep.sum())]:
        dx, dy = px - mx[i], py - my[i]
        sigma = 0.5 * (ca[i] * dx * dx + cc[i] * dy * dy) + cb[i] * dx * dy
        alpha = np.minimum(cfg.alpha_max, opac[i] * np.exp(-sigma))
        use = (sigma >= 0) & (alpha >= cfg.alpha_min) & ~done
        next_t = T * (1 - alpha)
        stop = use & (next_t <= cfg.transmittance_min)
        done |= stop
        use &= ~stop
        acc += np.where(use, alpha * T, 0.0)[..., None] * feats[i]
        T = np.where(use, next_t, T)
    bg = np.zeros(3) if background is None else f64(background)
    out = {
        "rgb": acc[..., :3] + T[..., None] * bg,
        "depth_accum": acc[..., 3],
        "alpha": 1.0 - T,
    }
    if n_feat:
        out["features"] = acc[..., 4 : 4 + n_feat]
    if num_groups:
        out["group_masks"] = acc[..., 4 + n_feat :]
    return out
