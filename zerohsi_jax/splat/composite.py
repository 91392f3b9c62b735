"""Front-to-back alpha compositing of binned Gaussians, tile by tile, with a recomputing backward.

Pixels are laid out per tile, (tiles, tile_size^2). Each tile's Gaussians are visited in chunks of
`chunk_size` slots; inside a chunk every (pixel, Gaussian) alpha is evaluated at once and the
sequential transmittance is an (exclusive) cumulative product along the chunk.

Per pixel, exactly as gsplat 1.5.3's forward kernel:
    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,  d = pixel centre - mean
    alpha = min(alpha_max, o exp(-sigma)), skipped when sigma < 0 or alpha < alpha_min
    the pixel stops at the first Gaussian after which T would fall to transmittance_min
    (that Gaussian excluded); C = sum_j f_j alpha_j T_j + T_final background.

`composite` has a `jax.custom_vjp` whose backward walks every tile back to front from the final
transmittance and the per-pixel stop index, recomputing alphas chunk by chunk, the scheme of the
INRIA and gsplat backward kernels. Its inputs and residuals are plain arrays so that a compiled
kernel can replace it. `composite_autodiff` is the same forward under plain autodiff (the
reference the tests compare the custom backward with).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

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


def _chunk_alpha(pix, means2d, conics, opacities, ids, counts, start, cfg: RasterConfig):
    """Alphas of the chunk of slots [start, start + chunk) of every tile, for every pixel.

    Returns the gathered per-slot values and alpha (T, P, B) with skipped entries set to 0."""
    b = cfg.chunk_size
    slot = start + jnp.arange(b)
    in_range = slot < ids.shape[1]
    slot_ids = jnp.take(ids, jnp.clip(slot, 0, ids.shape[1] - 1), axis=1)  # (T, B)
    slot_valid = in_range[None, :] & (slot[None, :] < counts[:, None])
    mean = means2d[slot_ids]  # (T, B, 2)
    conic = conics[slot_ids]  # (T, B, 3)
    opac = opacities[slot_ids]  # (T, B)
    dx = pix[:, :, None, 0] - mean[:, None, :, 0]  # (T, P, B)
    dy = pix[:, :, None, 1] - mean[:, None, :, 1]
    sigma = 0.5 * (conic[:, None, :, 0] * dx * dx + conic[:, None, :, 2] * dy * dy) + conic[:, None, :, 1] * dx * dy
    # Clamping the exponent at 0 only changes entries that are skipped (sigma < 0) and keeps them finite.
    vis = opac[:, None, :] * jnp.exp(-jnp.maximum(sigma, 0.0))
    alpha = jnp.minimum(cfg.alpha_max, vis)
    keep = slot_valid[:, None, :] & (sigma >= 0) & (alpha >= cfg.alpha_min)
    return slot_ids, slot_valid, dx, dy, sigma, vis, jnp.where(keep, alpha, 0.0), keep


def _exclusive_cumprod(x, axis=-1):
    incl = jnp.cumprod(x, axis=axis)
    ones = jnp.ones_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis))
    return jnp.concatenate([ones, jax.lax.slice_in_dim(incl, 0, x.shape[axis] - 1, axis=axis)], axis=axis)


def _forward_chunk(state, start, pix, means2d, conics, opacities, features, ids, counts, cfg):
    """One chunk of the front-to-back loop. `state` = (T, accumulated features, stop index, done)."""
    trans, acc, stop, done = state
    slot_ids, _, _, _, _, _, alpha, keep = _chunk_alpha(pix, means2d, conics, opacities, ids, counts, start, cfg)
    keep = keep & ~done[:, :, None]
    alpha = jnp.where(keep, alpha, 0.0)
    # T after each slot if it were included; it only decreases along the chunk, so the slots where
    # it falls to the threshold form a suffix, and the first of them is where the pixel stops.
    t_after = trans[:, :, None] * jnp.cumprod(1.0 - alpha, axis=-1)
    fail = keep & (t_after <= cfg.transmittance_min)
    alpha = jnp.where(fail, 0.0, alpha)
    weight = alpha * trans[:, :, None] * _exclusive_cumprod(1.0 - alpha)
    acc = acc + jnp.einsum("tpb,tbc->tpc", weight, features[slot_ids])
    trans = trans * jnp.prod(1.0 - alpha, axis=-1)
    any_fail = jnp.any(fail, axis=-1)
    first_fail = (start + jnp.argmax(fail, axis=-1)).astype(jnp.int32)
    stop = jnp.where(any_fail & ~done, first_fail, stop)
    return trans, acc, stop, done | any_fail


def _num_chunks(counts, cfg: RasterConfig):
    return (jnp.max(counts) + cfg.chunk_size - 1) // cfg.chunk_size


def _composite_forward(means2d, conics, opacities, features, background, ids, counts, pix, cfg: RasterConfig):
    num_tiles, num_pix = pix.shape[:2]
    c = features.shape[1]
    dtype = features.dtype
    init = (
        jnp.ones((num_tiles, num_pix), dtype),
        jnp.zeros((num_tiles, num_pix, c), dtype),
        jnp.full((num_tiles, num_pix), ids.shape[1], jnp.int32),
        jnp.zeros((num_tiles, num_pix), bool),
    )
    n_chunks = _num_chunks(counts, cfg)

    def cond(carry):
        k, state = carry
        return (k < n_chunks) & ~jnp.all(state[3])

    def body(carry):
        k, state = carry
        state = _forward_chunk(state, k * cfg.chunk_size, pix, means2d, conics, opacities, features, ids, counts, cfg)
        return k + 1, state

    _, (trans, acc, stop, _) = jax.lax.while_loop(cond, body, (jnp.int32(0), init))
    out = acc + trans[:, :, None] * background
    return out, trans, stop


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _composite_custom(means2d, conics, opacities, features, background, ids, counts, pix, cfg):
    out, _, _ = _composite_forward(means2d, conics, opacities, features, background, ids, counts, pix, cfg)
    return out


def _composite_custom_fwd(means2d, conics, opacities, features, background, ids, counts, pix, cfg):
    out, trans, stop = _composite_forward(means2d, conics, opacities, features, background, ids, counts, pix, cfg)
    residuals = (means2d, conics, opacities, features, background, ids, counts, pix, trans, stop)
    return out, residuals


def composite_backward(
    means2d, conics, opacities, features, background, ids, counts, pix, final_trans, stop, grad_out, cfg: RasterConfig
):
    """Gradients of the composited tiles w.r.t. means2d, conics, opacities, features, background.

    Walks the chunks from the last to the first. A chunk's transmittances are recovered from
    the transmittance after it, T_j = T_after / prod_{i >= j in chunk} (1 - alpha_i), and the
    colour behind every slot is the running sum S of what later slots and the background gave:
        dC/dalpha_j = f_j T_j - S_behind_j / (1 - alpha_j)."""
    n = means2d.shape[0]
    dtype = features.dtype
    n_chunks = _num_chunks(counts, cfg)
    # Only g . S is ever needed, so the colour behind each pixel is carried projected on its
    # cotangent: one scalar per pixel instead of C channels.
    grad_behind = final_trans * jnp.einsum("tpc,c->tp", grad_out, background)
    grad_background = jnp.einsum("tpc,tp->c", grad_out, final_trans)
    init = (
        n_chunks - 1,
        final_trans,
        grad_behind,
        jnp.zeros((n, 2), dtype),
        jnp.zeros((n, 3), dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros_like(features),
    )

    def cond(carry):
        return carry[0] >= 0

    def body(carry):
        k, t_after, grad_behind, g_mean, g_conic, g_opac, g_feat = carry
        start = k * cfg.chunk_size
        slot_ids, slot_valid, dx, dy, sigma, vis, alpha, keep = _chunk_alpha(
            pix, means2d, conics, opacities, ids, counts, start, cfg
        )
        slot = start + jnp.arange(cfg.chunk_size)
        contrib = keep & (slot[None, None, :] < stop[:, :, None])
        alpha = jnp.where(contrib, alpha, 0.0)
        one_minus = 1.0 - alpha
        rev = jnp.flip(jnp.cumprod(jnp.flip(one_minus, -1), axis=-1), -1)  # prod over i >= j
        t_j = t_after[:, :, None] / rev
        weight = alpha * t_j
        feat = features[slot_ids]  # (T, B, C)
        grad_feat_dot = jnp.einsum("tpc,tbc->tpb", grad_out, feat)  # g . f_j
        weighted = weight * grad_feat_dot
        suffix = jnp.flip(jnp.cumsum(jnp.flip(weighted, -1), axis=-1), -1) - weighted  # sum over i > j
        grad_alpha = t_j * grad_feat_dot - (grad_behind[:, :, None] + suffix) / one_minus
        grad_alpha = jnp.where(contrib, grad_alpha, 0.0)
        grad_vis = jnp.where(vis < cfg.alpha_max, grad_alpha, 0.0)
        exp_neg = jnp.exp(-jnp.maximum(sigma, 0.0))
        grad_sigma = -grad_vis * vis
        slot_opac = jnp.sum(grad_vis * exp_neg, axis=1)  # (T, B)
        slot_conic = jnp.stack(
            [
                jnp.sum(grad_sigma * 0.5 * dx * dx, axis=1),
                jnp.sum(grad_sigma * dx * dy, axis=1),
                jnp.sum(grad_sigma * 0.5 * dy * dy, axis=1),
            ],
            -1,
        )
        conic = conics[slot_ids]
        a, b, c = conic[:, None, :, 0], conic[:, None, :, 1], conic[:, None, :, 2]
        slot_mean = jnp.stack(
            [-jnp.sum(grad_sigma * (a * dx + b * dy), axis=1), -jnp.sum(grad_sigma * (b * dx + c * dy), axis=1)], -1
        )
        slot_feat = jnp.einsum("tpc,tpb->tbc", grad_out, weight)
        target = jnp.where(slot_valid, slot_ids, n)  # out-of-range index: dropped by the scatter
        g_mean = g_mean.at[target].add(slot_mean, mode="drop")
        g_conic = g_conic.at[target].add(slot_conic, mode="drop")
        g_opac = g_opac.at[target].add(slot_opac, mode="drop")
        g_feat = g_feat.at[target].add(slot_feat, mode="drop")
        t_before = t_after / rev[:, :, 0]
        grad_behind = grad_behind + jnp.sum(weighted, axis=-1)
        return k - 1, t_before, grad_behind, g_mean, g_conic, g_opac, g_feat

    _, _, _, g_mean, g_conic, g_opac, g_feat = jax.lax.while_loop(cond, body, init)
    return g_mean, g_conic, g_opac, g_feat, grad_background


def _composite_custom_bwd(cfg, residuals, grad_out):
    means2d, conics, opacities, features, background, ids, counts, pix, trans, stop = residuals
    grads = composite_backward(
        means2d, conics, opacities, features, background, ids, counts, pix, trans, stop, grad_out, cfg
    )
    return (*grads, None, None, None)


_composite_custom.defvjp(_composite_custom_fwd, _composite_custom_bwd)


def _composite_scan(means2d, conics, opacities, features, background, ids, counts, pix, cfg: RasterConfig):
    """The forward as a fixed-length scan over every chunk: plain autodiff stores each chunk."""
    num_tiles, num_pix = pix.shape[:2]
    dtype = features.dtype
    init = (
        jnp.ones((num_tiles, num_pix), dtype),
        jnp.zeros((num_tiles, num_pix, features.shape[1]), dtype),
        jnp.full((num_tiles, num_pix), ids.shape[1], jnp.int32),
        jnp.zeros((num_tiles, num_pix), bool),
    )
    starts = jnp.arange(0, ids.shape[1], cfg.chunk_size, dtype=jnp.int32)

    def step(state, start):
        return _forward_chunk(state, start, pix, means2d, conics, opacities, features, ids, counts, cfg), None

    (trans, acc, _, _), _ = jax.lax.scan(step, init, starts)
    return acc + trans[:, :, None] * background


def composite(
    means2d: Float[Array, "N 2"],
    conics: Float[Array, "N 3"],
    opacities: Float[Array, " N"],
    features: Float[Array, "N C"],
    background: Float[Array, " C"],
    ids: Int[Array, "T K"],
    counts: Int[Array, " T"],
    width: int,
    height: int,
    cfg: RasterConfig = RasterConfig(),
) -> Float[Array, "H W C"]:
    """Composite `features` (any channels) of the binned Gaussians over `background`."""
    pix = tile_pixel_centers(width, height, cfg).astype(features.dtype)
    background = jnp.broadcast_to(background, features.shape[1:]).astype(features.dtype)
    fn = _composite_custom if cfg.backward == "custom" else _composite_scan
    tiles = fn(means2d, conics, opacities, features, background, ids, counts, pix, cfg)
    return tiles_to_image(tiles, width, height, cfg.tile_size)
