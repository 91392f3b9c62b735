"""Tile binning: which Gaussians touch which 16x16 tile, front to back, in static-size arrays."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

from .config import RasterConfig
from .projection import Projected


class TileBins(eqx.Module):
    """Per-tile lists of Gaussian indices sorted by depth, padded to the tile capacity."""

    ids: Int[Array, "T K"]
    """Gaussian index of each slot; slots at or past `counts` hold 0 and must be masked."""
    counts: Int[Array, " T"]
    """Slots in use per tile (at most the capacity)."""
    overflow: Int[Array, ""]
    """Tile-Gaussian pairs dropped: beyond a tile's capacity, or beyond the pair capacity."""
    max_tile_count: Int[Array, ""]
    """Largest number of Gaussians touching one tile (the tile capacity that drops nothing)."""
    num_pairs: Int[Array, ""]
    """Tile-Gaussian pairs in the image (the pair capacity that drops nothing)."""


def prefix_sum(x: Int[Array, "..."], axis: int = 0) -> Int[Array, "..."]:
    """Inclusive running sum of integers along `axis`, as a log-depth associative scan: XLA's CPU
    cumsum took 2-3x longer (0.60 vs 0.30 ms at 32k entries, 1.8 vs 0.8 ms on 64 x 2816 rows)."""
    return jax.lax.associative_scan(jnp.add, x, axis=axis)


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    return -(-width // tile_size), -(-height // tile_size)


def tile_ranges(proj: Projected, width: int, height: int, cfg: RasterConfig):
    """Inclusive tile ranges (x0, x1, y0, y1) covering the pixels whose centres fall within each
    Gaussian's screen extent, and the number of tiles each Gaussian touches (0 if culled)."""
    ts = cfg.tile_size
    off = cfg.pixel_offset
    m = jax.lax.stop_gradient(proj.means2d)
    e = proj.extents
    # Pixel j samples j + off, so it is inside [lo, hi] when ceil(lo - off) <= j <= floor(hi - off).
    px0 = jnp.clip(jnp.ceil(m[:, 0] - e[:, 0] - off), 0, width - 1).astype(jnp.int32)
    px1 = jnp.clip(jnp.floor(m[:, 0] + e[:, 0] - off), 0, width - 1).astype(jnp.int32)
    py0 = jnp.clip(jnp.ceil(m[:, 1] - e[:, 1] - off), 0, height - 1).astype(jnp.int32)
    py1 = jnp.clip(jnp.floor(m[:, 1] + e[:, 1] - off), 0, height - 1).astype(jnp.int32)
    x0, x1, y0, y1 = px0 // ts, px1 // ts, py0 // ts, py1 // ts
    n_tiles = (x1 - x0 + 1) * (y1 - y0 + 1) * proj.visible.astype(jnp.int32)
    return (x0, x1, y0, y1), n_tiles


def bin_gaussians(proj: Projected, width: int, height: int, cfg: RasterConfig = RasterConfig()) -> TileBins:
    """Bin Gaussians into tiles with static capacities.

    Gaussians are first ordered by depth; their tile pairs are generated in that order (one
    pair per covered tile, `pair_capacity` at most) and stably sorted by tile, so each tile's run
    is front to back. The first `tile_capacity` of every run fill that tile's slots. Its plain
    twin, which tests every (tile, Gaussian) pair, is `reference.bin_gaussians_dense`."""
    if cfg.tile_capacity is None:
        raise ValueError(
            "bin_gaussians needs a tile capacity (RasterConfig.tile_capacity is None, 'measure', which only "
            "`render` does): pass `fit_capacity(gaussians, camera, config)` or RasterConfig(tile_capacity=...)"
        )
    tiles_x, tiles_y = tile_grid(width, height, cfg.tile_size)
    num_tiles = tiles_x * tiles_y
    cap = cfg.tile_capacity
    tile_sorted, gid_sorted, num_pairs, (x0, x1, y0, y1), n_tiles = sorted_tile_pairs(proj, width, height, cfg)
    num_slots = tile_sorted.shape[0]

    tile_index = jnp.arange(num_tiles, dtype=tile_sorted.dtype)
    run_start = jnp.searchsorted(tile_sorted, tile_index, side="left", method="scan_unrolled")
    run_end = jnp.searchsorted(tile_sorted, tile_index, side="right", method="scan_unrolled")
    run_len = (run_end - run_start).astype(jnp.int32)
    slots = jnp.arange(cap, dtype=jnp.int32)
    ids = gid_sorted[jnp.clip(run_start[:, None] + slots[None, :], 0, num_slots - 1)]
    counts = jnp.minimum(run_len, cap)
    ids = jnp.where(slots[None, :] < counts[:, None], ids, 0)
    # Pairs past the pair capacity never reach a run, so `run_len` undercounts the tiles they
    # touch: the largest tile count comes from the exact per-tile counts instead.
    return TileBins(
        ids=ids.astype(jnp.int32),
        counts=counts,
        overflow=(num_pairs - jnp.sum(counts)).astype(jnp.int32),
        max_tile_count=jnp.max(tile_counts((x0, x1, y0, y1), n_tiles, tiles_x, tiles_y)).astype(jnp.int32),
        num_pairs=num_pairs.astype(jnp.int32),
    )


def sorted_tile_pairs(proj: Projected, width: int, height: int, cfg: RasterConfig = RasterConfig()):
    """The tile-Gaussian pairs in a buffer of `cfg.pairs_for(N)` slots, sorted by tile and, within a
    tile, front to back (equal depths in index order): (tile of each slot, Gaussian of each slot,
    number of pairs, tile ranges, tiles per Gaussian). Slots past the pairs (or past the buffer's
    end, which drops the pairs of the Gaussians furthest back) hold the tile index `tiles`."""
    n = proj.depths.shape[0]
    tiles_x, tiles_y = tile_grid(width, height, cfg.tile_size)
    num_tiles = tiles_x * tiles_y
    num_slots = cfg.pairs_for(n)

    (x0, x1, y0, y1), n_tiles = tile_ranges(proj, width, height, cfg)
    depth = jnp.where(proj.visible, jax.lax.stop_gradient(proj.depths), jnp.inf)
    order = jnp.argsort(depth, stable=True).astype(jnp.int32)
    n_sorted = n_tiles[order]
    end = prefix_sum(n_sorted)
    start = end - n_sorted
    num_pairs = end[-1]

    # Pair p belongs to the last sorted Gaussian whose run starts at or before p: mark each
    # run start and take a running count (linear, no per-pair binary search).
    marks = jnp.zeros((num_slots,), jnp.int32).at[start].add(1, mode="drop")
    rank = jnp.clip(prefix_sum(marks) - 1, 0, n - 1)
    gid = order[rank]
    local = jnp.arange(num_slots, dtype=jnp.int32) - start[rank]
    width_tiles = (x1 - x0 + 1)[gid]
    tile = (y0[gid] + local // width_tiles) * tiles_x + x0[gid] + local % width_tiles
    tile = jnp.where(jnp.arange(num_slots) < num_pairs, tile, num_tiles)
    tile_sorted, rank_sorted = _sort_pairs_by_tile(tile, rank, num_tiles, n)
    return tile_sorted, order[rank_sorted], num_pairs, (x0, x1, y0, y1), n_tiles


def _sort_pairs_by_tile(tile, rank, num_tiles: int, n: int):
    """Pairs ordered by tile, then by their Gaussian's depth rank (`rank`, unique within a tile).

    Both go into one integer key, tile * n + rank, sorted alone: XLA sorts a single key of a
    primitive type on a fast path (on the CPU 6-8x faster than the stable sort of a (tile, Gaussian)
    key-value pair, 10.2 -> 1.6 ms at 32k pairs, 108 -> 14 ms at 262k; GPUs radix-sort it).
    The keys are unique, so stability is not needed. When (tiles + 1) * n does not fit 32 bits,
    a two-key sort does the same."""
    largest = (num_tiles + 1) * n - 1
    if largest >= 2**32:
        return jax.lax.sort((tile, rank), num_keys=2)
    dtype = jnp.int32 if largest < 2**31 else jnp.uint32
    key = jnp.sort(tile.astype(dtype) * dtype(n) + rank.astype(dtype))
    return (key // dtype(n)).astype(jnp.int32), (key % dtype(n)).astype(jnp.int32)


def tile_counts(ranges, n_tiles: Int[Array, " N"], tiles_x: int, tiles_y: int) -> Int[Array, " T"]:
    """Number of Gaussians touching each tile, from their tile rectangles alone: +1/-1 at the
    rectangle corners and a 2D prefix sum, O(N + tiles), independent of any capacity."""
    x0, x1, y0, y1 = ranges
    w = (n_tiles > 0).astype(jnp.int32)
    corners = jnp.zeros((tiles_y + 1, tiles_x + 1), jnp.int32)
    corners = corners.at[y0, x0].add(w).at[y0, x1 + 1].add(-w).at[y1 + 1, x0].add(-w).at[y1 + 1, x1 + 1].add(w)
    return prefix_sum(prefix_sum(corners, axis=0), axis=1)[:tiles_y, :tiles_x].reshape(-1)
