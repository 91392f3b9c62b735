"""`render`: Gaussians + camera -> image, depth, alpha and extra channels in one compositing pass."""

from __future__ import annotations

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .binning import TileBins, bin_gaussians, tile_ranges
from .camera import Camera
from .composite import composite
from .config import RasterConfig
from .gaussians import Gaussians
from .projection import Projected, project


class RenderOutput(eqx.Module):
    rgb: Float[Array, "H W 3"]
    """Colour over the background."""
    depth: Float[Array, "H W"]
    """Expected depth: alpha-weighted camera z divided by alpha (0 where nothing is drawn)."""
    alpha: Float[Array, "H W"]
    """Accumulated opacity, 1 - final transmittance."""
    depth_accum: Float[Array, "H W"]
    """Alpha-weighted camera z, not normalised (gsplat's 'D')."""
    features: Float[Array, "H W E"] | None
    """The Gaussians' extra feature channels, composited over zero."""
    group_masks: Float[Array, "H W G"] | None
    """Occlusion-aware coverage of each group id (one-hot groups composited over zero)."""
    overflow: Int[Array, ""]
    """Tile-Gaussian pairs dropped for lack of capacity (0 when the render is exact)."""
    max_tile_count: Int[Array, ""]
    num_pairs: Int[Array, ""]


def render(
    gaussians: Gaussians,
    camera: Camera,
    background: Float[Array, "3"] | None = None,
    *,
    num_groups: int = 0,
    config: RasterConfig = RasterConfig(),
) -> RenderOutput:
    """Render `gaussians` seen by `camera`.

    `num_groups` > 0 composites the one-hot group ids too (`group_masks`), which needs
    `gaussians.groups`. jit with `num_groups` and `config` static; vmap over cameras and over
    stacks of Gaussian sets."""
    proj = project(gaussians, camera, config)
    bins = bin_gaussians(proj, camera.width, camera.height, config)
    return render_projected(gaussians, camera, proj, bins, background, num_groups=num_groups, config=config)


def render_projected(
    gaussians: Gaussians,
    camera: Camera,
    proj: Projected,
    bins: TileBins,
    background=None,
    *,
    num_groups: int = 0,
    config: RasterConfig = RasterConfig(),
) -> RenderOutput:
    """The compositing half of `render`, for callers that bin once and composite several times."""
    dtype = gaussians.means.dtype
    if background is None:
        background = jnp.zeros((3,), dtype)
    background = jnp.asarray(background, dtype)
    colors = gaussians.colors(camera.position)
    channels = [colors, proj.depths[:, None], jnp.ones_like(proj.depths)[:, None]]
    n_extra = 0
    if gaussians.features is not None:
        channels.append(gaussians.features.astype(dtype))
        n_extra = gaussians.features.shape[-1]
    if num_groups:
        if gaussians.groups is None:
            raise ValueError("render(num_groups=...) needs Gaussians with `groups` set")
        channels.append(jax.nn.one_hot(gaussians.groups, num_groups, dtype=dtype))
    features = jnp.concatenate(channels, axis=-1)
    bg = jnp.concatenate([background, jnp.zeros((features.shape[-1] - 3,), dtype)])
    # Culled Gaussians never reach a tile list, but give them zero opacity anyway so that no
    # stale value can leak into a pixel.
    opacities = jnp.where(proj.visible, proj.opacities, 0.0)
    image = composite(
        proj.means2d, proj.conics, opacities, features, bg, bins.ids, bins.counts,
        camera.width, camera.height, config,
    )  # fmt: skip
    depth_accum = image[..., 3]
    alpha = image[..., 4]
    safe_alpha = jnp.where(alpha > 1e-10, alpha, 1.0)
    depth = jnp.where(alpha > 1e-10, depth_accum / safe_alpha, 0.0)
    extra = image[..., 5 : 5 + n_extra] if n_extra else None
    masks = image[..., 5 + n_extra :] if num_groups else None
    return RenderOutput(
        rgb=image[..., :3],
        depth=depth,
        alpha=alpha,
        depth_accum=depth_accum,
        features=extra,
        group_masks=masks,
        overflow=bins.overflow,
        max_tile_count=bins.max_tile_count,
        num_pairs=bins.num_pairs,
    )


def _round_tile_capacity(need: float, chunk: int) -> int:
    return max(chunk, int(math.ceil(need / chunk)) * chunk)


def _round_pair_capacity(need: float) -> int:
    return 1 << max(10, int(math.ceil(math.log2(max(1.0, need)))))


def suggested_capacity(out: RenderOutput, config: RasterConfig, headroom: float = 1.25) -> RasterConfig:
    """Capacities that would have dropped nothing for this render, times `headroom` (tile
    capacity rounded up to the chunk size, pair capacity to a power of two). Call outside jit."""
    need_tile = int(np.max(np.asarray(out.max_tile_count)))
    need_pairs = int(np.max(np.asarray(out.num_pairs)))
    tile_cap = max(config.tile_capacity, _round_tile_capacity(need_tile * headroom, config.chunk_size))
    pair_cap = config.pair_capacity
    if pair_cap is None or pair_cap < need_pairs:
        pair_cap = _round_pair_capacity(need_pairs * headroom)
    return config.with_capacity(tile_capacity=tile_cap, pair_capacity=pair_cap)


def check_overflow(out: RenderOutput, config: RasterConfig, *, where: str = "render") -> bool:
    """Warn (outside jit) when a render dropped tile-Gaussian pairs. Returns True if it did."""
    dropped = int(np.sum(np.asarray(out.overflow)))
    if dropped == 0:
        return False
    fix = suggested_capacity(out, config)
    warnings.warn(
        f"{where}: {dropped} tile-Gaussian pairs were dropped (largest tile holds "
        f"{int(np.max(np.asarray(out.max_tile_count)))} Gaussians for a tile_capacity of {config.tile_capacity}; "
        f"{int(np.max(np.asarray(out.num_pairs)))} pairs in all). "
        f"Set RasterConfig(tile_capacity={fix.tile_capacity}, pair_capacity={fix.pair_capacity}).",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


def fit_capacity(
    gaussians: Gaussians, cameras: Camera, config: RasterConfig = RasterConfig(), headroom: float = 1.5
) -> RasterConfig:
    """`config` with capacities that fit `gaussians` seen by `cameras` (one camera, or a batch
    of cameras with a leading axis) with `headroom` to spare. Runs eagerly, outside jit."""
    batched = cameras.viewmat.ndim == 3
    over_cameras = (lambda f: eqx.filter_vmap(f, in_axes=(None, eqx.if_array(0)))) if batched else (lambda f: f)

    @eqx.filter_jit
    @over_cameras
    def count_pairs(g, cam):
        _, n_tiles = tile_ranges(project(g, cam, config), cam.width, cam.height, config)
        return jnp.sum(n_tiles)

    pairs = int(np.max(np.asarray(count_pairs(gaussians, cameras))))
    config = config.with_capacity(pair_capacity=_round_pair_capacity(pairs * headroom))

    @eqx.filter_jit
    @over_cameras
    def count_tile(g, cam):
        return bin_gaussians(project(g, cam, config), cam.width, cam.height, config).max_tile_count

    tile = int(np.max(np.asarray(count_tile(gaussians, cameras))))
    return config.with_capacity(tile_capacity=_round_tile_capacity(tile * headroom, config.chunk_size))
