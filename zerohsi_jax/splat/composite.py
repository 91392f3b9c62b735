"""Front-to-back alpha compositing of binned Gaussians, tile by tile, with a recomputing backward.

Pixels are laid out per tile, (tiles, tile_size^2). Each tile's Gaussians are visited in chunks of
`chunk_size` slots; the slots of a chunk are unrolled one after the other, each step a fused
elementwise pass over all (tile, pixel) pairs, and a while loop runs chunks until every tile is
exhausted or every pixel has stopped.

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


def _gather_chunk(means2d, conics, opacities, features, ids, counts, start, chunk: int):
    """Per-tile values of the slots [start, start + chunk); slots past a tile's count get opacity 0."""
    slot = start + jnp.arange(chunk)
    slot_ids = jnp.take(ids, jnp.clip(slot, 0, ids.shape[1] - 1), axis=1)  # (T, B)
    slot_valid = slot[None, :] < jnp.minimum(counts, ids.shape[1])[:, None]
    opac = jnp.where(slot_valid, opacities[slot_ids], 0.0)
    return slot_ids, slot_valid, means2d[slot_ids], conics[slot_ids], opac, features[slot_ids]


def _slot_alpha(pix, mean, conic, opac, cfg: RasterConfig):
    """sigma, o exp(-sigma) and the kept alpha of one slot at every pixel of every tile (T, P)."""
    dx = pix[..., 0] - mean[:, None, 0]
    dy = pix[..., 1] - mean[:, None, 1]
    sigma = 0.5 * (conic[:, None, 0] * dx * dx + conic[:, None, 2] * dy * dy) + conic[:, None, 1] * dx * dy
    # Clamping the exponent at 0 only changes entries that are skipped (sigma < 0) and keeps them finite.
    vis = opac[:, None] * jnp.exp(-jnp.maximum(sigma, 0.0))
    alpha = jnp.minimum(cfg.alpha_max, vis)
    keep = (sigma >= 0) & (alpha >= cfg.alpha_min)
    return dx, dy, sigma, vis, alpha, keep


def _forward_chunk(state, start, pix, means2d, conics, opacities, features, ids, counts, cfg: RasterConfig):
    """Composite the slots [start, start + chunk) of every tile, one slot after the other.

    The slot loop is unrolled at trace time: each step is a few fused elementwise passes over the
    (tiles, pixels) arrays, which stay in cache; `state` = (T, accumulated features, stop index, done)."""
    trans, acc, stop, done = state
    _, _, mean, conic, opac, feat = _gather_chunk(means2d, conics, opacities, features, ids, counts, start,
                                                  cfg.chunk_size)
    for j in range(cfg.chunk_size):
        _, _, _, _, alpha, keep = _slot_alpha(pix, mean[:, j], conic[:, j], opac[:, j], cfg)
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


def _initial_state(num_tiles, num_pix, channels, capacity, dtype):
    return (
        jnp.ones((num_tiles, num_pix), dtype),
        jnp.zeros((num_tiles, num_pix, channels), dtype),
        jnp.full((num_tiles, num_pix), capacity, jnp.int32),
        jnp.zeros((num_tiles, num_pix), bool),
    )


def _num_chunks(counts, capacity: int, cfg: RasterConfig):
    return (jnp.minimum(jnp.max(counts), capacity) + cfg.chunk_size - 1) // cfg.chunk_size


def _tile_levels(num_tiles: int, ratio: int = 4) -> list[int]:
    """Prefix sizes of the count-sorted tiles the loop narrows to: T, T/4, T/16, ..., 1."""
    sizes = [num_tiles]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // ratio))
    return sizes


def _level_chunk_ends(counts_sorted, sizes, capacity: int, cfg: RasterConfig):
    """Chunk index where each level stops: level l serves tiles [sizes[l+1], sizes[l]), whose
    largest count is counts_sorted[sizes[l+1]] (the last level serves tile 0, the largest)."""
    nxt = [sizes[i + 1] if i + 1 < len(sizes) else 0 for i in range(len(sizes))]
    need = jnp.minimum(counts_sorted[jnp.asarray(nxt)], capacity)
    return (need + cfg.chunk_size - 1) // cfg.chunk_size


def _sort_tiles(ids, counts, pix):
    """Tiles in decreasing order of their counts, so that the tiles still busy after any chunk
    form a prefix, and the permutation that undoes it."""
    ids, counts = jnp.asarray(ids), jnp.asarray(counts)
    order = jnp.argsort(-counts, stable=True)
    inverse = jnp.argsort(order)
    return order, inverse, ids[order], counts[order], pix[order]


def _composite_forward(means2d, conics, opacities, features, background, ids, counts, pix, cfg: RasterConfig):
    """Front to back over chunks. Tiles run sorted by count and the loop narrows to the prefix of
    tiles that still have slots (T, T/4, ...), so a few crowded tiles (a small, detailed human in
    a wide shot) do not make every tile loop to their count; each level also stops once every
    pixel of its tiles has stopped."""
    capacity = ids.shape[1]
    order, inverse, ids_s, counts_s, pix_s = _sort_tiles(ids, counts, pix)
    state = _initial_state(pix.shape[0], pix.shape[1], features.shape[1], capacity, features.dtype)
    sizes = _tile_levels(pix.shape[0])
    ends = _level_chunk_ends(counts_s, sizes, capacity, cfg)
    k = jnp.int32(0)
    for level, n in enumerate(sizes):
        end = ends[level]
        part = jax.tree.map(lambda x, n=n: x[:n], state)
        level_pix, level_ids, level_counts = pix_s[:n], ids_s[:n], counts_s[:n]

        def cond(carry, end=end):
            k, st = carry
            return (k < end) & ~jnp.all(st[3])

        def body(carry, level_pix=level_pix, level_ids=level_ids, level_counts=level_counts):
            k, st = carry
            st = _forward_chunk(st, k * cfg.chunk_size, level_pix, means2d, conics, opacities, features,
                                level_ids, level_counts, cfg)
            return k + 1, st

        k, part = jax.lax.while_loop(cond, body, (k, part))
        state = jax.tree.map(lambda x, y, n=n: x.at[:n].set(y), state, part)
    trans, acc, stop, _ = (x[inverse] for x in state)
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

    Walks every tile's slots from the last to the first. A slot's transmittance is recovered
    from the one after it, T_j = T_{j+1} / (1 - alpha_j), and the colour S behind a slot (later
    slots plus the background) is carried projected on the cotangent g, one scalar per pixel:
        dL/dalpha_j = g . f_j T_j - (g . S_behind_j) / (1 - alpha_j).
    Only slots before the pixel's stop index contribute, as in the forward."""
    n = means2d.shape[0]
    b = cfg.chunk_size
    capacity = ids.shape[1]
    n_chunks = _num_chunks(counts, capacity, cfg)
    grad_behind = final_trans * jnp.einsum("tpc,c->tp", grad_out, background)
    grad_background = jnp.einsum("tpc,tp->c", grad_out, final_trans)
    init = (
        n_chunks - 1,
        final_trans,
        grad_behind,
        jnp.zeros_like(means2d),
        jnp.zeros_like(conics),
        jnp.zeros_like(opacities),
        jnp.zeros_like(features),
    )

    def cond(carry):
        return carry[0] >= 0

    def body(carry):
        k, t_after, grad_behind, g_mean, g_conic, g_opac, g_feat = carry
        start = k * b
        slot_ids, slot_valid, mean, conic, opac, feat = _gather_chunk(
            means2d, conics, opacities, features, ids, counts, start, b
        )
        grad_feat_dot = jnp.einsum("tpc,tbc->tbp", grad_out, feat)  # g . f_j for every slot
        slot_grads = [None] * b
        for j in reversed(range(b)):
            dx, dy, sigma, vis, alpha, keep = _slot_alpha(pix, mean[:, j], conic[:, j], opac[:, j], cfg)
            contrib = keep & ((start + j) < stop)
            one_minus = jnp.where(contrib, 1.0 - alpha, 1.0)
            t_j = t_after / one_minus
            weight = jnp.where(contrib, alpha * t_j, 0.0)
            gf = grad_feat_dot[:, j]
            grad_alpha = jnp.where(contrib, t_j * gf - grad_behind / one_minus, 0.0)
            grad_vis = jnp.where(vis < cfg.alpha_max, grad_alpha, 0.0)
            grad_sigma = -grad_vis * vis
            ca, cb, cc = conic[:, j, 0:1], conic[:, j, 1:2], conic[:, j, 2:3]
            slot_grads[j] = (
                jnp.stack([-jnp.sum(grad_sigma * (ca * dx + cb * dy), 1),
                           -jnp.sum(grad_sigma * (cb * dx + cc * dy), 1)], -1),
                jnp.stack([jnp.sum(grad_sigma * 0.5 * dx * dx, 1),
                           jnp.sum(grad_sigma * dx * dy, 1),
                           jnp.sum(grad_sigma * 0.5 * dy * dy, 1)], -1),
                jnp.sum(grad_vis * jnp.exp(-jnp.maximum(sigma, 0.0)), 1),
                jnp.einsum("tpc,tp->tc", grad_out, weight),
            )  # fmt: skip
            grad_behind = grad_behind + weight * gf
            t_after = t_j
        s_mean, s_conic, s_opac, s_feat = (jnp.stack(parts, 1) for parts in zip(*slot_grads, strict=True))
        target = jnp.where(slot_valid, slot_ids, n)  # out-of-range index: dropped by the scatter
        g_mean = g_mean.at[target].add(s_mean, mode="drop")
        g_conic = g_conic.at[target].add(s_conic, mode="drop")
        g_opac = g_opac.at[target].add(s_opac, mode="drop")
        g_feat = g_feat.at[target].add(s_feat, mode="drop")
        return k - 1, t_after, grad_behind, g_mean, g_conic, g_opac, g_feat

    _, _, _, g_mean, g_conic, g_opac, g_feat = jax.lax.while_loop(cond, body, init)
    return g_mean, g_conic, g_opac, g_feat, grad_background


def _composite_custom_bwd(cfg, residuals, grad_out):
    means2d, conics, opacities, features, background, ids, counts, pix, trans, stop = residuals
    args = (means2d, conics, opacities, features, background, ids, counts, pix, trans, stop, grad_out)
    if cfg.backward in ("jax", "custom"):
        grads = composite_backward(*args, cfg)
    else:  # 'auto' or 'kernel': the compiled backward where it is built
        from .kernel_backward import composite_backward_compiled

        grads = composite_backward_compiled(*args, cfg)
    return (*grads, None, None, None)


_composite_custom.defvjp(_composite_custom_fwd, _composite_custom_bwd)


def _composite_scan(means2d, conics, opacities, features, background, ids, counts, pix, cfg: RasterConfig):
    """The forward as a fixed-length scan over every chunk: plain autodiff stores each chunk."""
    init = _initial_state(pix.shape[0], pix.shape[1], features.shape[1], ids.shape[1], features.dtype)
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
    fn = _composite_scan if cfg.backward == "autodiff" else _composite_custom
    tiles = fn(means2d, conics, opacities, features, background, ids, counts, pix, cfg)
    return tiles_to_image(tiles, width, height, cfg.tile_size)
