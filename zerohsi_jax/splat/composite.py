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
kernel can replace it. This module chooses the backward, after `RasterConfig.backward`: the
compiled kernel (`kernel_backward`), `composite_backward` (the same walk in pure JAX), or the
twin `reference.composite_autodiff` (the same forward steps, `composite_step`, as a scan under
plain autodiff; the reference the tests compare the custom backward with). The forward is chosen
after `RasterConfig.forward`: on the CPU the compiled forward (`kernel_backward`, the same steps
per pixel, each pack of pixels leaving its slot loop when it has stopped), else this module's
loop, `composite_forward_jax`.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .composite_step import forward_chunk, gather_chunk, initial_state, tile_pixel_centers, tiles_to_image
from .config import RasterConfig
from .reference import composite_autodiff


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
    """The composited tiles, final transmittance and stop index, computed after
    `RasterConfig.forward`: on the CPU the compiled forward where it is built (`kernel_backward`
    loads both), elsewhere XLA's loop (`composite_forward_jax`). The choice is made when XLA lowers
    for a platform, as for the backward."""
    args = (means2d, conics, opacities, features, background, ids, counts, pix)
    if cfg.forward == "jax":
        return composite_forward_jax(*args, cfg)
    from . import kernel_backward  # not at import: see `_compiled_backward`

    built = kernel_backward.load_kernel("cpu") and kernel_backward.has_forward("cpu")
    if not built:
        if cfg.forward == "kernel":
            raise kernel_backward.KernelUnavailableError(
                f"RasterConfig(forward='kernel') but the compiled forward is unavailable on the CPU: "
                f"{kernel_backward.kernel_status('cpu')}. Use forward='auto' or 'jax' for XLA's loop."
            )
        return composite_forward_jax(*args, cfg)  # 'auto': the backward's fallback warns once for both
    return jax.lax.platform_dependent(
        *args,
        cpu=lambda *a: kernel_backward.kernel_composite_forward(*a, cfg),
        default=lambda *a: composite_forward_jax(*a, cfg),
    )


def composite_forward_jax(means2d, conics, opacities, features, background, ids, counts, pix, cfg: RasterConfig):
    """Front to back over chunks. Tiles run sorted by count and the loop narrows to the prefix of
    tiles that still have slots (T, T/4, ...), so a few crowded tiles (a small, detailed human in
    a wide shot) do not make every tile loop to their count; each level also stops once every
    pixel of its tiles has stopped."""
    capacity = ids.shape[1]
    order, inverse, ids_s, counts_s, pix_s = _sort_tiles(ids, counts, pix)
    state = initial_state(pix.shape[0], pix.shape[1], features.shape[1], capacity, features.dtype)
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
            st = forward_chunk(
                st, k * cfg.chunk_size, level_pix, means2d, conics, opacities, features, level_ids, level_counts, cfg
            )
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


def _pixel_moments_basis(pix):
    """Per tile: its centre (T, 2) and the basis [1, u, v, u^2, uv, v^2] of its pixels (T, P, 6),
    u, v the pixel offsets from the centre (within half a tile)."""
    centre = 0.5 * (jnp.min(pix, axis=1) + jnp.max(pix, axis=1))
    u, v = pix[..., 0] - centre[:, None, 0], pix[..., 1] - centre[:, None, 1]
    return centre, jnp.stack([jnp.ones_like(u), u, v, u * u, u * v, v * v], -1)


def _backward_chunk(pix, stop, grad_out, centre, basis, t_after, grad_behind, start, mean, conic, opac, feat, cfg):
    """Gradients of the slots [start, start + b) of every tile in the prefix, back to front.

    Only the transmittance and the projected colour behind (one scalar each per pixel) depend on
    the slot after; they are carried one slot at a time in the exact order of the forward's
    arithmetic. Everything else is computed for the whole chunk at once as (tiles, b, pixels)
    arrays, and every per-Gaussian sum over a tile's pixels is a batched matmul per chunk:
    with d = (dx, dy) = pixel - mean and h = dL/dvis * exp(-sigma) per pixel,
        dL/dopacity = sum h,   dL/dsigma = -opacity h,
        dL/dconic = -opacity (sum h dx^2 / 2, sum h dx dy, sum h dy^2 / 2),
        dL/dmean = opacity (a sum h dx + b sum h dy, b sum h dx + c sum h dy),
    and the sums of h dx^k dy^l follow from the moments of h about the tile centre
    (sum h [1, u, v, u^2, uv, v^2]), d = (u, v) - (mean - centre). So the (tiles, b, pixels)
    arrays written to memory are few: the serial part's inputs and outputs, h and the weights."""
    b = mean.shape[1]
    dx = pix[:, None, :, 0] - mean[:, :, None, 0]  # (t, b, p)
    dy = pix[:, None, :, 1] - mean[:, :, None, 1]
    ca, cb, cc = (conic[:, :, i, None] for i in range(3))
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    gauss = jnp.exp(-jnp.maximum(sigma, 0.0))
    vis = opac[:, :, None] * gauss
    alpha = jnp.minimum(cfg.alpha_max, vis)
    slot = start + jnp.arange(b, dtype=stop.dtype)
    contrib = (sigma >= 0) & (alpha >= cfg.alpha_min) & (slot[None, :, None] < stop[:, None, :])
    one_minus = jnp.where(contrib, 1.0 - alpha, 1.0)
    weight_alpha = jnp.where(contrib, alpha, 0.0)
    gf = jnp.einsum("tpc,tbc->tbp", grad_out, feat)  # g . f_j for every slot
    # The serial part: T_j = T_{j+1} / (1 - alpha_j) and the colour behind each slot. The barrier
    # keeps XLA from fusing the whole chain into each slot's consumer (b^2 / 2 divisions).
    t_slots, behind_slots = [None] * b, [None] * b
    for j in reversed(range(b)):
        t_j = t_after / one_minus[:, j]
        t_slots[j], behind_slots[j] = t_j, grad_behind
        grad_behind = grad_behind + weight_alpha[:, j] * t_j * gf[:, j]
        t_after, grad_behind = jax.lax.optimization_barrier((t_j, grad_behind))
    t_slots, behind_slots = jnp.stack(t_slots, 1), jnp.stack(behind_slots, 1)
    weight = weight_alpha * t_slots
    grad_alpha = jnp.where(contrib, t_slots * gf - behind_slots / one_minus, 0.0)
    h = jnp.where(vis < cfg.alpha_max, grad_alpha, 0.0) * gauss
    m = jnp.einsum("tbp,tpk->tbk", h, basis)  # moments of h about the tile centre
    m1, mu, mv, muu, muv, mvv = (m[..., i] for i in range(6))
    ox, oy = mean[..., 0] - centre[:, None, 0], mean[..., 1] - centre[:, None, 1]
    sx, sy = mu - ox * m1, mv - oy * m1  # sum h dx, sum h dy
    sxx = muu - 2.0 * ox * mu + ox * ox * m1
    sxy = muv - ox * mv - oy * mu + ox * oy * m1
    syy = mvv - 2.0 * oy * mv + oy * oy * m1
    a, bb, c = conic[..., 0], conic[..., 1], conic[..., 2]
    g_mean = opac[..., None] * jnp.stack([a * sx + bb * sy, bb * sx + c * sy], -1)
    g_conic = -opac[..., None] * jnp.stack([0.5 * sxx, sxy, 0.5 * syy], -1)
    g_feat = jnp.einsum("tbp,tpc->tbc", weight, grad_out)
    slot_grads = jnp.concatenate([g_mean, g_conic, m1[..., None], g_feat], -1)  # (t, b, 6 + C)
    return t_after, grad_behind, slot_grads


def composite_backward(
    means2d: Float[Array, "N 2"],
    conics: Float[Array, "N 3"],
    opacities: Float[Array, " N"],
    features: Float[Array, "N C"],
    background: Float[Array, " C"],
    ids: Int[Array, "T K"],
    counts: Int[Array, " T"],
    pix: Float[Array, "T P 2"],
    final_trans: Float[Array, "T P"],
    stop: Int[Array, "T P"],
    grad_out: Float[Array, "T P C"],
    cfg: RasterConfig,
) -> tuple[Float[Array, "N 2"], Float[Array, "N 3"], Float[Array, " N"], Float[Array, "N C"], Float[Array, " C"]]:
    """Gradients of the composited tiles w.r.t. means2d, conics, opacities, features, background.

    Walks every tile's slots from the last to the first. A slot's transmittance is recovered
    from the one after it, T_j = T_{j+1} / (1 - alpha_j), and the colour S behind a slot (later
    slots plus the background) is carried projected on the cotangent g, one scalar per pixel:
        dL/dalpha_j = g . f_j T_j - (g . S_behind_j) / (1 - alpha_j).
    Only slots before the pixel's stop index contribute, as in the forward. Its compiled twin
    is `kernel_backward.kernel_composite_backward` (same arguments, same results)."""
    n = means2d.shape[0]
    b = cfg.jax_backward_chunk
    num_tiles, capacity = ids.shape
    ids, counts, pix, stop = (jnp.asarray(x) for x in (ids, counts, pix, stop))
    grad_behind = final_trans * jnp.einsum("tpc,c->tp", grad_out, background)
    grad_background = jnp.einsum("tpc,tp->c", grad_out, final_trans)
    # The slots a tile needs walking: its count, cut at the largest stop index of its pixels (no
    # slot at or past a pixel's stop contributes to it). Tiles are sorted by it, decreasing, so
    # that the tiles with a slot at or past any chunk form a prefix: the walk starts on the
    # busiest tile alone and widens to T/4^k, ..., T tiles as it comes forward (the forward's
    # narrowing, reversed), instead of walking every tile through the largest count.
    live = jnp.minimum(jnp.minimum(counts, capacity), jnp.max(stop, axis=1))
    order = jnp.argsort(-live, stable=True)
    ids, live, pix, stop, grad_out = ids[order], live[order], pix[order], stop[order], grad_out[order]
    centre, basis = _pixel_moments_basis(pix)
    # One accumulator for every per-Gaussian gradient (mean 2, conic 3, opacity 1, features C):
    # one scatter-add per chunk.
    grads = jnp.zeros((n, 6 + features.shape[1]), features.dtype)
    t_after, grad_behind = final_trans[order], grad_behind[order]

    def chunks_needed(tile):
        return (live[tile] + b - 1) // b

    k = chunks_needed(0) - 1  # the last chunk of the busiest tile
    for size in reversed(_tile_levels(num_tiles)):
        # Chunks k >= `lo` hold slots of the first `size` tiles only.
        lo = chunks_needed(size) if size < num_tiles else jnp.zeros((), k.dtype)
        tiles = (pix[:size], stop[:size], grad_out[:size], centre[:size], basis[:size], ids[:size], live[:size])

        def body(carry, tiles=tiles):
            k, t_after, grad_behind, grads = carry
            t_pix, t_stop, t_grad_out, t_centre, t_basis, t_ids, t_live = tiles
            slot_ids, slot_valid, mean, conic, opac, feat = gather_chunk(
                means2d, conics, opacities, features, t_ids, t_live, k * b, b
            )
            t_after, grad_behind, slot_grads = _backward_chunk(
                t_pix, t_stop, t_grad_out, t_centre, t_basis, t_after, grad_behind, k * b, mean, conic, opac, feat, cfg
            )
            target = jnp.where(slot_valid, slot_ids, n)  # out-of-range index: dropped by the scatter
            grads = grads.at[target.reshape(-1)].add(slot_grads.reshape(-1, slot_grads.shape[-1]), mode="drop")
            return k - 1, t_after, grad_behind, grads

        k, t_part, behind_part, grads = jax.lax.while_loop(
            lambda carry, lo=lo: carry[0] >= lo, body, (k, t_after[:size], grad_behind[:size], grads)
        )
        t_after, grad_behind = t_after.at[:size].set(t_part), grad_behind.at[:size].set(behind_part)
    return grads[:, 0:2], grads[:, 2:5], grads[:, 5], grads[:, 6:], grad_background


_warned_fallback: set[str] = set()
"""Platforms whose fallback to the pure-JAX backward was already reported (once per process)."""


def _warn_fallback(platform: str, reason: str) -> None:
    if platform in _warned_fallback:
        return
    _warned_fallback.add(platform)
    warnings.warn(
        f"zerohsi_jax: the compiled compositing backward is unavailable on {platform}, so the "
        f"pure-JAX backward is used there (the same gradients up to rounding, slower). Set "
        f"RasterConfig(backward='jax') to silence this. Reason: {reason}",
        RuntimeWarning,
        stacklevel=3,
    )


def _compiled_backward(args, cfg: RasterConfig):
    """The backward `RasterConfig.backward` = 'auto' or 'kernel' selects: the kernel on each
    platform where it is built, the pure-JAX `composite_backward` on the others. The choice is
    made when XLA lowers for a platform, so one traced function serves CPU and GPU."""
    # Imported at the first trace of this backward rather than with the package: importing
    # zerohsi_jax.splat then loads no compiler machinery, and `python -m ...kernel_backward build`
    # runs its module as __main__ without a copy of it already imported.
    from . import kernel_backward
    from .kernel_build import kernel_platforms

    platforms = kernel_platforms()
    built = {p: kernel_backward.load_kernel(p) for p in platforms}
    if cfg.backward == "kernel":
        wanted = "cuda" if jax.default_backend() == "gpu" else "cpu"
        if not built.get(wanted, False):
            raise kernel_backward.KernelUnavailableError(
                f"RasterConfig(backward='kernel') but the kernel is unavailable on {wanted}: "
                f"{kernel_backward.kernel_status(wanted)}. Use backward='auto' to fall back to the pure-JAX "
                f"backward."
            )
    else:
        for p in platforms:
            if not built[p]:
                _warn_fallback(p, kernel_backward.kernel_status(p))

    def with_kernel(*a):
        return kernel_backward.kernel_composite_backward(*a, cfg)

    def with_jax(*a):
        return composite_backward(*a, cfg)

    branches = {p: with_kernel for p in platforms if built[p]}
    if not branches:
        return with_jax(*args)
    return jax.lax.platform_dependent(*args, **branches, default=with_jax)


def _composite_custom_bwd(cfg, residuals, grad_out):
    means2d, conics, opacities, features, background, ids, counts, pix, trans, stop = residuals
    args = (means2d, conics, opacities, features, background, ids, counts, pix, trans, stop, grad_out)
    if cfg.backward in ("jax", "custom"):
        grads = composite_backward(*args, cfg)
    else:  # 'auto' or 'kernel': the compiled backward where it is built
        grads = _compiled_backward(args, cfg)
    return (*grads, None, None, None)


_composite_custom.defvjp(_composite_custom_fwd, _composite_custom_bwd)


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
    """Composite `features` (any channels) of the binned Gaussians over `background`.

    Differentiated after `cfg.backward` (see `RasterConfig`); its plain twin is
    `reference.composite_autodiff`, which `backward="autodiff"` selects."""
    pix = tile_pixel_centers(width, height, cfg).astype(features.dtype)
    background = jnp.broadcast_to(background, features.shape[1:]).astype(features.dtype)
    fn = composite_autodiff if cfg.backward == "autodiff" else _composite_custom
    tiles = fn(means2d, conics, opacities, features, background, ids, counts, pix, cfg)
    return tiles_to_image(tiles, width, height, cfg.tile_size)
