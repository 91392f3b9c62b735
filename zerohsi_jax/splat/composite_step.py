"""One step of front-to-back compositing, and pixels grouped by tile.

Shared by the fast compositing (`composite`: a while loop over chunks with a recomputing
`custom_vjp`) and its autodiff twin (`reference.composite_autodiff`: a scan over every chunk), so
the two run the same forward arithmetic and differ only in how they are differentiated. Per pixel,
exactly as gsplat 1.5.3's forward kernel (see `composite`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from .config import RasterConfig


def tile_pixel_centers(width: int, height: int, cfg: RasterConfig) -> Float[Array, "T P 2"]:
    """Sample positions (x, y) of every pixel, grouped by tile (padding pixels included)."""
    ts = cfg.tile_size
    tiles_x, tiles_y = -(-width // ts), -(-height // ts)
    local = jnp.arange(ts * ts)
    lx, ly = local % ts, local // ts
    t = jnp.arange(tiles_x * tiles_y)
    px = (t % tiles_x)[:, None] * ts + lx[None, :]
    py = (t // tiles_x)[:, None] * ts + ly[None, :]
    return jnp.stack([px, py], -1).astype(jnp.float32) + cfg.pixel_offset


def tiles_to_image(x: Float[Array, "T P ..."], width: int, height: int, tile_size: int) -> Float[Array, "H W ..."]:
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    rest = x.shape[2:]
    img = x.reshape((tiles_y, tiles_x, tile_size, tile_size) + rest)
    img = jnp.moveaxis(img, 2, 1).reshape((tiles_y * tile_size, tiles_x * tile_size) + rest)
    return img[:height, :width]


def image_to_tiles(img: Float[Array, "H W ..."], width: int, height: int, tile_size: int) -> Float[Array, "T P ..."]:
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    rest = img.shape[2:]
    pad = ((0, tiles_y * tile_size - height), (0, tiles_x * tile_size - width)) + ((0, 0),) * len(rest)
    img = jnp.pad(img, pad)
    img = img.reshape((tiles_y, tile_size, tiles_x, tile_size) + rest)
    return jnp.moveaxis(img, 2, 1).reshape((tiles_y * tiles_x, tile_size * tile_size) + rest)


def gather_chunk(means2d, conics, opacities, features, ids, counts, start, chunk: int):
    """Per-tile values of the slots [start, start + chunk); slots past a tile's count get opacity 0."""
    slot = start + jnp.arange(chunk)
    slot_ids = jnp.take(ids, jnp.clip(slot, 0, ids.shape[1] - 1), axis=1)  # (T, B)
    slot_valid = slot[None, :] < jnp.minimum(counts, ids.shape[1])[:, None]
    opac = jnp.where(slot_valid, opacities[slot_ids], 0.0)
    return slot_ids, slot_valid, means2d[slot_ids], conics[slot_ids], opac, features[slot_ids]


def slot_alpha(pix, mean, conic, opac, cfg: RasterConfig):
    """sigma, o exp(-sigma) and the kept alpha of one slot at every pixel of every tile (T, P)."""
    dx = pix[..., 0] - mean[:, None, 0]
    dy = pix[..., 1] - mean[:, None, 1]
    sigma = 0.5 * (conic[:, None, 0] * dx * dx + conic[:, None, 2] * dy * dy) + conic[:, None, 1] * dx * dy
    # Clamping the exponent at 0 only changes entries that are skipped (sigma < 0) and keeps them finite.
    vis = opac[:, None] * jnp.exp(-jnp.maximum(sigma, 0.0))
    alpha = jnp.minimum(cfg.alpha_max, vis)
    keep = (sigma >= 0) & (alpha >= cfg.alpha_min)
    return dx, dy, sigma, vis, alpha, keep


def forward_chunk(state, start, pix, means2d, conics, opacities, features, ids, counts, cfg: RasterConfig):
    """Composite the slots [start, start + chunk) of every tile, one slot after the other.

    The slot loop is unrolled at trace time: each step is a few fused elementwise passes over the
    (tiles, pixels) arrays, which stay in cache; `state` = (T, accumulated features, stop index, done)."""
    trans, acc, stop, done = state
    _, _, mean, conic, opac, feat = gather_chunk(
        means2d, conics, opacities, features, ids, counts, start, cfg.chunk_size
    )
    for j in range(cfg.chunk_size):
        _, _, _, _, alpha, keep = slot_alpha(pix, mean[:, j], conic[:, j], opac[:, j], cfg)
        keep = keep & ~done
        next_trans = trans * (1.0 - alpha)
        fail = keep & (next_trans <= cfg.transmittance_min)
        use = keep & ~fail
        weight = jnp.where(use, alpha * trans, 0.0)
        acc = acc + weight[..., None] * feat[:, None, j, :]
        trans = jnp.where(use, next_trans, trans)
        stop = jnp.where(fail, (start + j).astype(jnp.int32), stop)
        done = done | fail
    return trans, acc, stop, done


def initial_state(num_tiles, num_pix, channels, capacity, dtype):
    """Every pixel fully transmissive, nothing accumulated, stop index past the last slot."""
    return (
        jnp.ones((num_tiles, num_pix), dtype),
        jnp.zeros((num_tiles, num_pix, channels), dtype),
        jnp.full((num_tiles, num_pix), capacity, jnp.int32),
        jnp.zeros((num_tiles, num_pix), bool),
    )
