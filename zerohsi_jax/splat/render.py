"""`render`: Gaussians + camera -> image, depth, alpha and extra channels in one compositing pass."""

from __future__ import annotations

import dataclasses
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .binning import TileBins, bin_gaussians, tile_counts, tile_grid, tile_ranges
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


class RasterOverflowError(RuntimeError):
    """An eager `render` with `RasterConfig(overflow="error")` would have dropped tile-Gaussian
    pairs; the message names the capacities that fit."""


_TRACED_WITHOUT_CAPACITY = (
    "render: RasterConfig.tile_capacity is None ('measure on the call'), but render is being traced (jit, "
    "vmap, grad or scan), where the scene cannot be measured. Measure outside the trace and pass the result: "
    "config = fit_capacity(gaussians, camera, config) (a batch of cameras works too), or give "
    "RasterConfig(tile_capacity=..., pair_capacity=...). A traced render returns `overflow`, the pairs it "
    "dropped; re-run with grown_capacity(config, out) when it is nonzero."
)


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
    `gaussians.groups`.

    Called eagerly (concrete arrays), capacities left at None are measured on the scene, and
    with `config.overflow` 'grow' (the default) a render that would drop pairs is redone with
    capacities that fit, so the result never lacks a pair ('drop' returns it with the count,
    'error' raises `RasterOverflowError`). Under jit, vmap or grad (`num_groups` and `config`
    static), capacities are array shapes and must be given (`fit_capacity`); the result's
    `overflow` counts what was dropped and `grown_capacity(config, out)` gives capacities for a
    re-run. Its plain twin is the float64 brute force `reference.render_reference`."""
    if _tracing(gaussians, camera, background):
        if config.tile_capacity is None:
            raise ValueError(_TRACED_WITHOUT_CAPACITY)
        out = _render_fixed(gaussians, camera, background, num_groups, config)
        if config.overflow == "error":
            out = eqx.error_if(
                out, out.overflow > 0,
                "render: tile-Gaussian pairs did not fit RasterConfig's capacities (overflow='error'); measure "
                "them with fit_capacity, or re-run with grown_capacity(config, out) of an overflow='drop' render",
            )  # fmt: skip
        return out
    return _render_eager(gaussians, camera, background, num_groups, config)


def _tracing(*trees) -> bool:
    """True under jit, vmap or grad of any input: nothing can be read back to the host there."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees)):
        return True
    # Under jit even an operation on constants is staged, so its result is a tracer.
    return isinstance(jnp.zeros(()) + 0, jax.core.Tracer)


def _render_fixed(gaussians, camera, background, num_groups: int, config: RasterConfig) -> RenderOutput:
    """`render` at the given capacities: what is dropped is only counted."""
    proj = project(gaussians, camera, config)
    bins = bin_gaussians(proj, camera.width, camera.height, config)
    return render_projected(gaussians, camera, proj, bins, background, num_groups=num_groups, config=config)


# One compiled program per shape and config serves the eager calls (and their re-runs).
_render_jit = eqx.filter_jit(_render_fixed)


def _render_compiled(gaussians, camera, background, num_groups: int, config: RasterConfig) -> RenderOutput:
    # The policy acts on the host, after the program: configs that differ only in it share one.
    return _render_jit(gaussians, camera, background, num_groups, dataclasses.replace(config, overflow="drop"))


def _render_eager(gaussians, camera, background, num_groups: int, config: RasterConfig) -> RenderOutput:
    if background is not None:
        # An array, not a tuple of floats, which `filter_jit` would make part of the program's key.
        background = jnp.asarray(background, gaussians.means.dtype)
    cfg = config
    if cfg.tile_capacity is None or cfg.pair_capacity is None:
        need_tile, need_pairs = measure_capacity(gaussians, camera, cfg)
        # Powers of two: a loop over frames whose counts drift reuses a few compiled programs.
        cfg = cfg.with_capacity(
            tile_capacity=_round_tile_capacity(_next_power_of_two(need_tile), cfg.chunk_size)
            if cfg.tile_capacity is None else None,
            pair_capacity=_round_pair_capacity(need_pairs) if cfg.pair_capacity is None else None,
        )  # fmt: skip
    out = _render_compiled(gaussians, camera, background, num_groups, cfg)
    dropped = int(out.overflow)
    if dropped == 0 or cfg.overflow == "drop":
        return out
    grown = grown_capacity(cfg, out)
    shortfall = (
        f"{dropped} tile-Gaussian pairs did not fit RasterConfig(tile_capacity={cfg.tile_capacity}, "
        f"pair_capacity={cfg.pair_capacity}): the largest tile holds {int(out.max_tile_count)} Gaussians, "
        f"{int(out.num_pairs)} pairs in all"
    )
    if cfg.overflow == "error":
        raise RasterOverflowError(
            f"render: {shortfall}. Set RasterConfig(tile_capacity={grown.tile_capacity}, "
            f"pair_capacity={grown.pair_capacity}), or leave both None to measure them on each call."
        )
    warnings.warn(
        f"render: {shortfall}; rendered again with tile_capacity={grown.tile_capacity}, "
        f"pair_capacity={grown.pair_capacity} (set those to skip the second render, or "
        "RasterConfig(overflow='drop') to keep a fixed cost and drop pairs).",
        RuntimeWarning,
        stacklevel=3,
    )
    out = _render_compiled(gaussians, camera, background, num_groups, grown)
    # The counts behind `grown` are exact whatever the capacities, so this cannot happen.
    if int(out.overflow):
        raise AssertionError(f"render: still {int(out.overflow)} pairs dropped at {grown}")
    return out


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
    features = gaussians.features.astype(dtype) if gaussians.features is not None else None
    if num_groups and gaussians.groups is None:
        raise ValueError("render(num_groups=...) needs Gaussians with `groups` set")
    # Culled Gaussians never reach a tile list, but give them zero opacity anyway so that no
    # stale value can leak into a pixel.
    opacities = jnp.where(proj.visible, proj.opacities, 0.0)
    return composite_binned(
        proj.means2d, proj.conics, opacities, gaussians.colors(camera.position), proj.depths, features,
        gaussians.groups, bins, camera, background, num_groups=num_groups, config=config,
    )  # fmt: skip


def composite_binned(
    means2d: Float[Array, "N 2"],
    conics: Float[Array, "N 3"],
    opacities: Float[Array, " N"],
    colors: Float[Array, "N 3"],
    depths: Float[Array, " N"],
    features: Float[Array, "N E"] | None,
    groups: Int[Array, " N"] | None,
    bins: TileBins,
    camera: Camera,
    background=None,
    *,
    num_groups: int = 0,
    config: RasterConfig = RasterConfig(),
) -> RenderOutput:
    """Composite screen-space Gaussians already binned into `bins`: the channels (colour, depth,
    alpha, extra features, one-hot groups) stacked, `composite`d, and split into a RenderOutput.
    Shared by `render` and `bound_scene.render_bound`, so that both composite the same channels."""
    dtype = means2d.dtype
    if background is None:
        background = jnp.zeros((3,), dtype)
    background = jnp.asarray(background, dtype)
    channels = [colors.astype(dtype), depths[:, None], jnp.ones_like(depths)[:, None]]
    n_extra = 0
    if features is not None:
        channels.append(features.astype(dtype))
        n_extra = features.shape[-1]
    if num_groups:
        if groups is None:
            raise ValueError("render(num_groups=...) needs Gaussians with `groups` set")
        channels.append(jax.nn.one_hot(groups, num_groups, dtype=dtype))
    channels = jnp.concatenate(channels, axis=-1)
    bg = jnp.concatenate([background, jnp.zeros((channels.shape[-1] - 3,), dtype)])
    image = composite(
        means2d, conics, opacities, channels, bg, bins.ids, bins.counts, camera.width, camera.height, config
    )
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


def _next_power_of_two(need: int) -> int:
    return 1 << max(0, int(need) - 1).bit_length()


def _counts_of(counts) -> tuple[int, int]:
    """(largest tile count, pair count) of a RenderOutput, TileBins or such a pair; leading axes
    (frames, seeds, optimisation steps) are reduced to their maximum."""
    if hasattr(counts, "max_tile_count") and hasattr(counts, "num_pairs"):
        tile, pairs = counts.max_tile_count, counts.num_pairs
    else:
        tile, pairs = counts
    if any(isinstance(x, jax.core.Tracer) for x in (tile, pairs)):
        raise ValueError("grown_capacity reads counts back to the host: call it outside jit, on a render's output")
    return int(np.max(np.asarray(tile))), int(np.max(np.asarray(pairs)))


def grown_capacity(config: RasterConfig, counts, headroom: float = 1.25) -> RasterConfig:
    """`config` with capacities that hold what `counts` needed, times `headroom`: the re-run
    config for a render, frame or stage whose `overflow` was nonzero.

    `counts` is a `RenderOutput` or `TileBins` (of one render or stacked over frames, seeds and
    steps) or a (max_tile_count, num_pairs) pair; a record that also has `dynamic_pairs` (a bound
    render's dynamic set) grows `dynamic_pair_capacity` from it. Those counts are exact whatever the
    capacities were, so one re-run at the grown config drops nothing for the same inputs. A
    capacity that already fits is kept; a None one is set. Call outside jit."""
    need_tile, need_pairs = _counts_of(counts)
    tile_cap = config.tile_capacity
    if tile_cap is None or tile_cap < need_tile:
        tile_cap = _round_tile_capacity(need_tile * headroom, config.chunk_size)
    pair_cap = config.pair_capacity
    if pair_cap is None or pair_cap < need_pairs:
        pair_cap = _round_pair_capacity(need_pairs * headroom)
    # A bound render's dynamic pair buffer, when the counts carry its need (`dynamic_pairs`).
    dynamic_cap = config.dynamic_pair_capacity
    need_dynamic = getattr(counts, "dynamic_pairs", None)
    if dynamic_cap is not None and need_dynamic is not None:
        need_dynamic = int(np.max(np.asarray(need_dynamic)))
        if dynamic_cap < need_dynamic:
            dynamic_cap = _round_pair_capacity(need_dynamic * headroom)
    return config.with_capacity(tile_capacity=tile_cap, pair_capacity=pair_cap, dynamic_pair_capacity=dynamic_cap)


def suggested_capacity(out: RenderOutput, config: RasterConfig, headroom: float = 1.25) -> RasterConfig:
    """Capacities that would have dropped nothing for this render, times `headroom` (tile
    capacity rounded up to the chunk size, pair capacity to a power of two). Call outside jit.
    The same as `grown_capacity(config, out, headroom)`."""
    return grown_capacity(config, out, headroom)


def check_overflow(out: RenderOutput, config: RasterConfig, *, where: str = "render") -> bool:
    """Warn (outside jit) when a render dropped tile-Gaussian pairs. Returns True if it did."""
    dropped = int(np.sum(np.asarray(out.overflow)))
    if dropped == 0:
        return False
    fix = grown_capacity(config, out)
    warnings.warn(
        f"{where}: {dropped} tile-Gaussian pairs were dropped (largest tile holds "
        f"{int(np.max(np.asarray(out.max_tile_count)))} Gaussians for a tile_capacity of {config.tile_capacity}; "
        f"{int(np.max(np.asarray(out.num_pairs)))} pairs in all). "
        f"Set RasterConfig(tile_capacity={fix.tile_capacity}, pair_capacity={fix.pair_capacity}).",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


@eqx.filter_jit
def _needed_counts(gaussians, cameras, config: RasterConfig, batched: bool):
    def one(cam):
        ranges, n_tiles = tile_ranges(project(gaussians, cam, config), cam.width, cam.height, config)
        tiles_x, tiles_y = tile_grid(cam.width, cam.height, config.tile_size)
        return jnp.max(tile_counts(ranges, n_tiles, tiles_x, tiles_y)), jnp.sum(n_tiles)

    return jax.vmap(one)(cameras) if batched else one(cameras)


def measure_capacity(gaussians: Gaussians, cameras: Camera, config: RasterConfig = RasterConfig()) -> tuple[int, int]:
    """(largest number of Gaussians on one tile, tile-Gaussian pairs) of `gaussians` seen by
    `cameras` (one camera, or a batch with a leading axis: the largest over the batch): the
    capacities that drop nothing, exactly. One projection per camera, no binning. Eager only."""
    if _tracing(gaussians, cameras):
        raise ValueError("measure_capacity reads counts back to the host: call it outside jit, vmap and grad")
    tile, pairs = _needed_counts(gaussians, cameras, config, cameras.viewmat.ndim == 3)
    return int(np.max(np.asarray(tile))), int(np.max(np.asarray(pairs)))


def fit_capacity(
    gaussians: Gaussians, cameras: Camera, config: RasterConfig = RasterConfig(), headroom: float = 1.5
) -> RasterConfig:
    """`config` with capacities that fit `gaussians` seen by `cameras` (one camera, or a batch
    of cameras with a leading axis) with `headroom` to spare: the config to pass to a render
    under jit. Runs eagerly, outside jit."""
    tile, pairs = measure_capacity(gaussians, cameras, config)
    return config.with_capacity(
        tile_capacity=_round_tile_capacity(tile * headroom, config.chunk_size),
        pair_capacity=_round_pair_capacity(pairs * headroom),
    )
