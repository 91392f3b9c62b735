"""The static scene bound once per camera: projected, coloured and binned, then merged each render
with the Gaussians that move.

In the per-frame HSI fit the camera is fixed and the scene's Gaussians never change; only the
avatar's and the object's move. `bind_static` does the scene's share of `render` once
(projection, view-dependent colours, tile lists sorted by depth, and the scene cut to the
Gaussians some tile references), and `render_bound` projects and bins only the dynamic Gaussians,
merges their depth-sorted pairs into the scene's tile lists (`merge_pairs_into_tile_lists`: a
binary search per dynamic pair, a running count per tile, no sort of the scene), and composites
with the same `composite` as `render` (its custom_vjp, compiled backward and pure-JAX fallback).
A render then costs the dynamic set, a few passes over the (tiles, tile_capacity) lists and the
compositing of those lists; the scene's size enters only through how deep its tile lists are.

Equality with the full render. `render_bound(bind_static(scene, cam, cfg), dynamic, cam, ...)`
equals `render(Gaussians.concatenate([scene, dynamic]), cam, ...)` (rgb, depth, alpha,
depth_accum, features, group_masks) up to float32 round-off:
- Order. `render` sorts the Gaussians by depth with a stable sort, so equal depths keep their
  index order; in the concatenation [scene, dynamic] a scene Gaussian therefore precedes a
  dynamic one of equal depth, and within each set the lower index comes first. The merge keeps
  exactly that order: each list is already in (depth, index) order and on equal depth the scene's
  entry goes first.
- Channels. As `Gaussians.concatenate([scene, dynamic])`: a set without `features` contributes
  zeros; a set without `groups` gets its position (scene 0, dynamic 1); SH of different degrees
  give the same colours as the zero-padded concatenation.
- The scene's screen values are those of `project(scene, camera, config)` (only its projection
  settings: `tile_size`, `eps2d`, `antialiased`, `alpha_min`, `pixel_offset`, `clip_margin`, which
  must match between bind and render; `render_bound` checks them).

Capacities and overflow. The merged list of a tile holds the first `config.tile_capacity` of the
tile's scene and dynamic Gaussians in the order above, as `render`'s tile list does. Pair buffers
are per part: the scene's pairs were written at bind into its own buffer (the bind config's
`pair_capacity`), the dynamic pairs go into one of `config.pair_capacity` pairs each render, or of
`config.dynamic_pair_capacity` when that is set (so that one config can also carry a full render's
`pair_capacity`). Size it for the dynamic set alone (`fit_bound_capacity`): a buffer sized for the
whole scene would make every render pay for the scene. The counts keep `render`'s definitions on
the concatenation:
- `num_pairs`: scene pairs + dynamic pairs (exact, whatever the capacities);
- `max_tile_count`: the largest scene + dynamic count of one tile (exact);
- `overflow`: `num_pairs` minus the pairs composited, i.e. every pair dropped, at bind (a scene tile
  list or pair buffer too small) or here (a merged tile list or the dynamic pair buffer).
So a render that fits reports 0; one that is short of tile capacity only drops the same pairs as
`render` at that tile capacity and reports the same count; when a pair buffer is short, each part
has a buffer of the given size where `render` shares one, so it drops no more than `render` would
(possibly other pairs), and reports what it dropped. Traced, `render_bound` never re-renders: with
`overflow="error"` it raises (`equinox.error_if`), otherwise the count is returned; re-bind or
re-render at `fit_bound_capacity`'s config. Eagerly, the policies act as in `render`.

Use in a per-frame fit (bind outside the optimiser's loop, render inside the loss)::

    scene_cfg = fit_capacity(Gaussians.concatenate([scene, dynamic0]), camera, config)
    cfg = None
    for frame in frames:
        bound = bind_static(scene, frame.camera, scene_cfg)   # once per frame, eager
        cfg = cfg or fit_bound_capacity(bound, dynamic0, frame.camera, scene_cfg)
        params, opt_state, overflow = fit_frame(bound, params, opt_state, frame, cfg)
        # on the host: overflow.max() > 0 -> cfg = fit_bound_capacity(bound, dynamic, ...) and redo
        # the frame (bind again with that tile capacity if the scene's own lists were short)

    @eqx.filter_jit    # `bound` is an argument: closed over, XLA would fold the scene into the program
    def fit_frame(bound, params, opt_state, frame, cfg):
        def loss(params):
            dynamic = Gaussians.concatenate([avatar_gaussians(params), object_gaussians(params)])
            out = render_bound(bound, dynamic, frame.camera, background, num_groups=3, config=cfg)
            return photometric(out.rgb, frame.image) + mask_loss(out.group_masks, frame.masks), out

        def step(carry, _):
            params, opt_state = carry
            (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, opt_state = optimiser.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), out.overflow

        (params, opt_state), overflow = jax.lax.scan(step, (params, opt_state), None, length=num_iters)
        return params, opt_state, overflow

Eager binds cut the scene's arrays to a power of two of the referenced count, so frames reuse a
few compiled `fit_frame` programs; a bind inside the jitted function keeps one static size.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .binning import TileBins, bin_gaussians, prefix_sum, sorted_tile_pairs, tile_counts, tile_grid, tile_ranges
from .camera import Camera
from .composite_step import tiles_to_image
from .config import RasterConfig
from .gaussians import Gaussians
from .projection import project
from .render import (
    RasterOverflowError,
    RenderOutput,
    _next_power_of_two,
    _round_pair_capacity,
    _round_tile_capacity,
    _tracing,
    composite_binned,
)

# The settings that shape a Gaussian's screen values and tiles: they must agree between the
# bind and the render (capacities, chunking, the backward and the overflow policy may differ).
_PROJECTION_FIELDS = ("tile_size", "eps2d", "antialiased", "alpha_min", "pixel_offset", "clip_margin")


class BoundScene(eqx.Module):
    """The static scene as one camera sees it, compacted to the Gaussians that reach a tile.

    Entry m of the per-Gaussian arrays is a scene Gaussian that some tile list references
    (entries past those, padding, have opacity 0 and are referenced by none); `ids` index them."""

    means2d: Float[Array, "M 2"]
    conics: Float[Array, "M 3"]
    opacities: Float[Array, " M"]
    """Compositing opacity (0 for padding entries)."""
    depths: Float[Array, " M"]
    colors: Float[Array, "M 3"]
    """View-dependent colour for this camera."""
    features: Float[Array, "M E"] | None
    groups: Int[Array, " M"]
    """Group ids (0 where the scene had none, as `Gaussians.concatenate` gives the first set)."""
    ids: Int[Array, "T Ks"]
    """Per tile, entries front to back (ties in scene-index order); slots at or past `counts` hold 0."""
    counts: Int[Array, " T"]
    keys: Float[Array, "T Ks"]
    """Depth of each slot's Gaussian, +inf past `counts` (the merge's sort keys)."""
    tile_counts: Int[Array, " T"]
    """Scene Gaussians touching each tile, exact (uncapped)."""
    num_pairs: Int[Array, ""]
    """Scene tile-Gaussian pairs, exact."""
    camera: Camera
    config: RasterConfig = eqx.field(static=True)
    """The bind config (its projection settings must match the render's)."""

    @property
    def num_entries(self) -> int:
        return self.means2d.shape[-2]


def bind_static(scene: Gaussians, camera: Camera, config: RasterConfig = RasterConfig()) -> BoundScene:
    """Project, colour and bin `scene` for `camera` once: the static half of `render_bound`.

    `config.tile_capacity` is the length of each scene tile list (give the tile capacity the
    merged render will use; more is useless, less drops scene pairs, counted by `render_bound`);
    `config.pair_capacity` sizes the scene's one-off pair buffer. Called eagerly, capacities left
    at None are measured on the scene (exact), and the per-Gaussian arrays are cut to the
    Gaussians some tile references (rounded up to a power of two). Traced (jit, vmap), the tile
    capacity must be given and those arrays keep min(N, tiles x tile_capacity) entries."""
    if _tracing(scene, camera):
        if config.tile_capacity is None:
            raise ValueError(
                "bind_static: RasterConfig.tile_capacity is None but bind_static is traced; pass "
                "fit_capacity(scene, camera, config) or RasterConfig(tile_capacity=...)"
            )
        bound, _ = _bind_fixed(scene, camera, config)
        return bound
    if config.tile_capacity is None or config.pair_capacity is None:
        need_tile, need_pairs = (int(x) for x in _scene_needs(scene, camera, config))
        config = config.with_capacity(
            tile_capacity=_round_tile_capacity(_next_power_of_two(need_tile), config.chunk_size)
            if config.tile_capacity is None else None,
            pair_capacity=_round_pair_capacity(need_pairs) if config.pair_capacity is None else None,
        )  # fmt: skip
    bound, used = _bind_jit(scene, camera, config)
    # Entries are in scene order with the referenced ones first, so a prefix holds them all.
    keep = min(bound.num_entries, max(1, _next_power_of_two(int(used))))
    return _take_entries(bound, keep)


def _take_entries(bound: BoundScene, keep: int) -> BoundScene:
    cut = lambda x: None if x is None else x[:keep]  # noqa: E731
    fields = ("means2d", "conics", "opacities", "depths", "colors", "features", "groups")
    return eqx.tree_at(
        lambda b: [getattr(b, f) for f in fields],
        bound,
        [cut(getattr(bound, f)) for f in fields],
        is_leaf=lambda x: x is None,
    )


@eqx.filter_jit
def _scene_needs(scene, camera, config):
    proj = project(scene, camera, config)
    ranges, n_tiles = tile_ranges(proj, camera.width, camera.height, config)
    tiles_x, tiles_y = tile_grid(camera.width, camera.height, config.tile_size)
    return jnp.max(tile_counts(ranges, n_tiles, tiles_x, tiles_y)), jnp.sum(n_tiles)


def _bind_fixed(scene: Gaussians, camera: Camera, config: RasterConfig) -> tuple[BoundScene, Int[Array, ""]]:
    """The bound scene with min(N, tiles x capacity) entries, and how many of them are referenced."""
    n = scene.num
    proj = project(scene, camera, config)
    bins = bin_gaussians(proj, camera.width, camera.height, config)
    tiles_x, tiles_y = tile_grid(camera.width, camera.height, config.tile_size)
    ranges, n_tiles = tile_ranges(proj, camera.width, camera.height, config)
    cap = bins.ids.shape[1]
    valid = jnp.arange(cap)[None, :] < bins.counts[:, None]

    # Compact to the Gaussians some tile list references: a render then gathers, concatenates
    # and scatters gradients over at most tiles x capacity entries, not the whole scene.
    size = min(n, bins.ids.size)
    referenced = jnp.zeros((n,), bool).at[bins.ids].max(valid)
    used = jnp.sum(referenced)
    entry = jnp.nonzero(referenced, size=size, fill_value=n)[0]
    padding = entry >= n
    entry_safe = jnp.where(padding, 0, entry)
    slot_of = jnp.zeros((n,), jnp.int32).at[entry].set(jnp.arange(size, dtype=jnp.int32), mode="drop")
    ids = jnp.where(valid, slot_of[bins.ids], 0)

    dtype = scene.means.dtype
    opacities = jnp.where(proj.visible, proj.opacities, 0.0)[entry_safe]
    groups = scene.groups if scene.groups is not None else jnp.zeros((n,), jnp.int32)
    bound = BoundScene(
        means2d=proj.means2d[entry_safe],
        conics=proj.conics[entry_safe],
        opacities=jnp.where(padding, 0.0, opacities),
        depths=proj.depths[entry_safe],
        colors=scene.colors(camera.position)[entry_safe],
        features=None if scene.features is None else scene.features.astype(dtype)[entry_safe],
        groups=groups[entry_safe],
        ids=ids,
        counts=bins.counts,
        keys=jnp.where(valid, jax.lax.stop_gradient(proj.depths)[bins.ids], jnp.inf),
        tile_counts=tile_counts(ranges, n_tiles, tiles_x, tiles_y),
        num_pairs=bins.num_pairs,
        camera=camera,
        config=config,
    )
    return bound, used


_bind_jit = eqx.filter_jit(_bind_fixed)


def merge_pairs_into_tile_lists(
    list_ids: Int[Array, "T K1"],
    list_counts: Int[Array, " T"],
    list_keys: Float[Array, "T K1"],
    pair_tiles: Int[Array, " P"],
    pair_ids: Int[Array, " P"],
    pair_keys: Float[Array, " P"],
    capacity: int,
) -> tuple[Int[Array, "T K"], Int[Array, " T"]]:
    """Merge per-tile lists sorted by key (`list_keys` +inf past `list_counts`) with a flat buffer of
    pairs sorted by tile, then key (pairs whose tile is >= T are padding), into per-tile lists of
    `capacity` slots, sorted by key; on equal keys a list entry precedes a pair.

    Merge by rank: a pair's merged slot is its index in its tile's run of pairs plus the number
    of list entries with a key at most its own (a binary search in its tile's row), so searching
    costs P log K1. The merged lists are then read slot by slot: a slot no pair took holds the
    list entry numbered by the slot minus the pairs before it (one running count per tile). No
    pass sorts or searches the (T, K) lists. Entries past `capacity` are dropped; the merged
    count of a tile is min(list count + its pairs, capacity)."""
    list_ids, list_keys = list_ids[:, :capacity], list_keys[:, :capacity]
    num_tiles, k1 = list_ids.shape
    list_counts = jnp.minimum(list_counts, k1)
    num_slots = pair_tiles.shape[0]
    tile_index = jnp.arange(num_tiles, dtype=pair_tiles.dtype)
    run_start = jnp.searchsorted(pair_tiles, tile_index, side="left", method="scan_unrolled")
    run_len = (jnp.searchsorted(pair_tiles, tile_index, side="right", method="scan_unrolled") - run_start).astype(
        jnp.int32
    )
    valid = pair_tiles < num_tiles
    tile = jnp.where(valid, pair_tiles, 0)
    within = jnp.arange(num_slots, dtype=jnp.int32) - run_start[tile].astype(jnp.int32)

    # Entries of the pair's row with key <= its key: a binary search over the flattened rows.
    flat_keys = list_keys.reshape(-1)
    row = tile * k1

    def search(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        right = (lo < hi) & (flat_keys[row + jnp.minimum(mid, k1 - 1)] <= pair_keys)
        return jnp.where(right, mid + 1, lo), jnp.where(right | (lo >= hi), hi, mid)

    lo = jnp.zeros((num_slots,), jnp.int32)
    rank, _ = jax.lax.fori_loop(0, max(1, k1).bit_length(), search, (lo, jnp.full((num_slots,), k1, jnp.int32)))
    slot = rank + within
    target_tile = jnp.where(valid & (slot < capacity), tile, num_tiles)  # out of range: dropped
    is_pair = jnp.zeros((num_tiles, capacity), bool).at[target_tile, slot].set(True, mode="drop")
    pair_at = jnp.zeros((num_tiles, capacity), jnp.int32).at[target_tile, slot].set(
        pair_ids.astype(jnp.int32), mode="drop"
    )
    is_pair_count = is_pair.astype(jnp.int32)
    pairs_before = prefix_sum(is_pair_count, axis=1) - is_pair_count
    list_slot = jnp.clip(jnp.arange(capacity, dtype=jnp.int32)[None, :] - pairs_before, 0, k1 - 1)
    from_list = jnp.take_along_axis(list_ids.astype(jnp.int32), list_slot, axis=1)
    counts = jnp.minimum(list_counts + run_len, capacity).astype(jnp.int32)
    merged = jnp.where(is_pair, pair_at, from_list)
    return jnp.where(jnp.arange(capacity)[None, :] < counts[:, None], merged, 0), counts


def render_bound(
    bound: BoundScene,
    dynamic: Gaussians,
    camera: Camera,
    background: Float[Array, "3"] | None = None,
    *,
    num_groups: int = 0,
    config: RasterConfig = RasterConfig(),
    static: RenderOutput | None = None,
) -> RenderOutput:
    """`render(Gaussians.concatenate([scene, dynamic]), camera, background, ...)` for the scene
    bound by `bind_static(scene, camera, ...)`: only `dynamic` is projected and binned here.

    With `static` (`render_static(bound, ...)` with the same background, groups and config), only
    the tiles some dynamic Gaussian touches are composited; every other tile is the scene alone,
    so it is taken from `static`. The render is the same; the scene then gets gradients from the
    touched tiles only (the dynamic set's are exact), and neither set may carry `features`.

    `camera` must be the bound one (checked when called eagerly). `config.tile_capacity` is the
    merged tile list's length; `config.dynamic_pair_capacity` (else `pair_capacity`) the dynamic
    set's pair buffer (see the
    module docstring for the overflow counts; `fit_bound_capacity` measures both). Gradients flow
    to `dynamic` (and to `bound`'s arrays). jit-, vmap- and grad-able (`num_groups`, `config`
    static). Eagerly, capacities left at None are measured, and `config.overflow` acts as in
    `render`: 'grow' renders again at `fit_bound_capacity`'s config (warning), 'error' raises
    `RasterOverflowError`, 'drop' returns the count; when the scene's own lists were short at
    bind, 'grow' raises too, naming the capacities to bind again with."""
    _check_compatible(bound, camera, config)
    if _tracing(bound, dynamic, camera, background):
        if config.tile_capacity is None:
            raise ValueError(
                "render_bound: RasterConfig.tile_capacity is None but render_bound is traced; pass "
                "fit_bound_capacity(bound, dynamic, camera, config)"
            )
        return _render_bound_checked(bound, dynamic, camera, background, num_groups, config, static)
    if not bool(jnp.allclose(bound.camera.viewmat, camera.viewmat)) or not all(
        bool(jnp.allclose(getattr(bound.camera, f), getattr(camera, f))) for f in ("fx", "fy", "cx", "cy")
    ):
        raise ValueError("render_bound: `camera` is not the camera the scene was bound for (bind_static again)")
    if config.tile_capacity is None or config.pair_capacity is None:
        fitted = fit_bound_capacity(bound, dynamic, camera, config, headroom=1.0)
        config = config.with_capacity(
            tile_capacity=fitted.tile_capacity if config.tile_capacity is None else None,
            pair_capacity=fitted.pair_capacity if config.pair_capacity is None else None,
        )
    if background is not None:
        background = jnp.asarray(background, dynamic.means.dtype)
    policy = config.overflow
    # The policy acts here, on the host: configs that differ only in it share one program.
    out = _render_bound_jit(bound, dynamic, camera, background, num_groups, _dropping(config), static)
    dropped = int(out.overflow)
    if dropped == 0 or policy == "drop":
        return out
    grown = fit_bound_capacity(bound, dynamic, camera, config, headroom=1.25)
    # Scene pairs dropped at bind cannot be recovered here: only a new bind brings them back.
    scene_short = int(bound.num_pairs) > int(jnp.sum(bound.counts)) or grown.tile_capacity > bound.ids.shape[1]
    shortfall = (
        f"render_bound: {dropped} tile-Gaussian pairs did not fit (tile_capacity={config.tile_capacity}, "
        f"dynamic pair_capacity={config.pair_capacity}, scene lists of {bound.ids.shape[1]})"
    )
    if policy == "error" or scene_short:
        fix = (
            f"bind again with RasterConfig(tile_capacity={grown.tile_capacity}) and render at tile_capacity="
            f"{grown.tile_capacity}, pair_capacity={grown.pair_capacity}"
            if scene_short
            else f"render at RasterConfig(tile_capacity={grown.tile_capacity}, pair_capacity={grown.pair_capacity})"
        )
        raise RasterOverflowError(f"{shortfall}; {fix}, or use overflow='drop' to keep the count.")
    warnings.warn(
        f"{shortfall}; rendered again with tile_capacity={grown.tile_capacity}, pair_capacity={grown.pair_capacity} "
        "(pass them to skip the second render, or overflow='drop').",
        RuntimeWarning,
        stacklevel=2,
    )
    return _render_bound_jit(bound, dynamic, camera, background, num_groups, _dropping(grown), static)


def _dropping(config: RasterConfig) -> RasterConfig:
    return dataclasses.replace(config, overflow="drop")


def _check_compatible(bound: BoundScene, camera: Camera, config: RasterConfig) -> None:
    diff = [f for f in _PROJECTION_FIELDS if getattr(bound.config, f) != getattr(config, f)]
    if diff:
        raise ValueError(
            f"render_bound: the config differs from the bind config in {diff}; bind and render need the same "
            f"projection settings"
        )
    tiles_x, tiles_y = tile_grid(camera.width, camera.height, config.tile_size)
    if bound.ids.shape[-2] != tiles_x * tiles_y or (bound.camera.width, bound.camera.height) != (
        camera.width,
        camera.height,
    ):
        raise ValueError(
            f"render_bound: the scene was bound for a {bound.camera.width}x{bound.camera.height} image, "
            f"not {camera.width}x{camera.height}"
        )


def _render_bound_checked(bound, dynamic, camera, background, num_groups, config, static=None):
    out = _render_bound_fixed(bound, dynamic, camera, background, num_groups, config, static)
    if config.overflow == "error":
        out = eqx.error_if(
            out, out.overflow > 0,
            "render_bound: tile-Gaussian pairs did not fit (overflow='error'); re-bind and re-render at "
            "fit_bound_capacity's config",
        )  # fmt: skip
    return out


def render_static(bound: BoundScene, background: Float[Array, "3"] | None = None, *, num_groups: int = 0,
                  config: RasterConfig | None = None) -> RenderOutput:
    """The bound scene rendered alone (no gradient): what `render_bound(..., static=...)` shows on
    the tiles the dynamic Gaussians leave untouched. `config`: the render's (its tile capacity
    cuts the scene's lists as the merged render's does); default the bind config."""
    config = config or bound.config
    if bound.features is not None:
        raise ValueError("render_static: the bound scene has features; render_bound(static=...) takes none")
    bins = _tile_bins(bound.ids[:, : config.tile_capacity], jnp.minimum(bound.counts, config.tile_capacity),
                      bound.num_pairs, bound.tile_counts)
    out = composite_binned(bound.means2d, bound.conics, bound.opacities, bound.colors, bound.depths, None,
                           bound.groups, bins, bound.camera, background, num_groups=num_groups, config=config)
    return jax.lax.stop_gradient(out)


def _tile_bins(ids, counts, num_pairs, tile_counts_exact) -> TileBins:
    """Tile lists holding `counts` of the `num_pairs` pairs (exact, whatever the capacities): what
    is not in a list was dropped, and the largest exact tile count sizes a re-run."""
    num_pairs = num_pairs.astype(jnp.int32)
    return TileBins(ids=ids, counts=counts, overflow=(num_pairs - jnp.sum(counts)).astype(jnp.int32),
                    max_tile_count=jnp.max(tile_counts_exact).astype(jnp.int32), num_pairs=num_pairs)


def _with_static_tiles(out: RenderOutput, static: RenderOutput, touched: Array, camera: Camera,
                       config: RasterConfig) -> RenderOutput:
    """`out` on the `touched` tiles, `static` elsewhere (the counts stay `out`'s)."""
    per_pixel = jnp.broadcast_to(touched[:, None], (touched.shape[0], config.tile_size**2))
    mask = tiles_to_image(per_pixel, camera.width, camera.height, config.tile_size)

    def pick(a, b):
        if a is None:
            return None
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 2))
        return jnp.where(m, a, b)

    fields = ("rgb", "depth", "alpha", "depth_accum", "features", "group_masks")
    return eqx.tree_at(lambda o: [getattr(o, f) for f in fields], out,
                       [pick(getattr(out, f), getattr(static, f)) for f in fields], is_leaf=lambda x: x is None)


def _render_bound_fixed(bound, dynamic, camera, background, num_groups: int, config: RasterConfig,
                        static: RenderOutput | None = None) -> RenderOutput:
    cap = config.tile_capacity
    width, height = camera.width, camera.height
    dtype = dynamic.means.dtype
    proj = project(dynamic, camera, config)
    tiles_x, tiles_y = tile_grid(width, height, config.tile_size)
    # The dynamic pairs stay a flat buffer, merged straight into the scene's lists: the
    # dynamic set is never laid out per tile at the full capacity.
    pair_tiles, pair_gids, dyn_pairs, ranges, n_tiles = sorted_tile_pairs(proj, width, height, config.dynamic_config)
    dyn_tile_counts = tile_counts(ranges, n_tiles, tiles_x, tiles_y)
    m = bound.num_entries
    ids, counts = merge_pairs_into_tile_lists(
        bound.ids, bound.counts, bound.keys,
        pair_tiles, pair_gids + m, jax.lax.stop_gradient(proj.depths)[pair_gids],
        cap,
    )  # fmt: skip

    n_dyn = dynamic.num
    feature_widths = {f.shape[-1] for f in (bound.features, dynamic.features) if f is not None}
    if len(feature_widths) > 1:
        raise ValueError(f"render_bound: feature widths differ between scene and dynamic: {sorted(feature_widths)}")
    features = None
    if feature_widths:
        (e,) = feature_widths
        scene_f = bound.features if bound.features is not None else jnp.zeros((m, e), dtype)
        dyn_f = dynamic.features if dynamic.features is not None else jnp.zeros((n_dyn, e), dtype)
        features = jnp.concatenate([scene_f.astype(dtype), dyn_f.astype(dtype)])
    dyn_groups = dynamic.groups if dynamic.groups is not None else jnp.ones((n_dyn,), jnp.int32)

    cat = lambda a, b: jnp.concatenate([a.astype(dtype), b.astype(dtype)])  # noqa: E731
    bins = _tile_bins(ids, counts, bound.num_pairs + dyn_pairs, bound.tile_counts + dyn_tile_counts)
    if static is not None:
        if features is not None:
            raise ValueError("render_bound(static=...): neither set may carry features")
        # Tiles no dynamic pair reaches composite nothing: their image is the scene's, in `static`.
        touched = dyn_tile_counts > 0
        bins = eqx.tree_at(lambda b: b.counts, bins, jnp.where(touched, counts, 0))
    out = composite_binned(
        cat(bound.means2d, proj.means2d),
        cat(bound.conics, proj.conics),
        cat(bound.opacities, jnp.where(proj.visible, proj.opacities, 0.0)),
        cat(bound.colors, dynamic.colors(camera.position)),
        cat(bound.depths, proj.depths),
        features,
        jnp.concatenate([bound.groups, dyn_groups.astype(jnp.int32)]),
        bins,
        camera,
        background,
        num_groups=num_groups,
        config=config,
    )
    if static is None:
        return out
    return _with_static_tiles(out, static, touched, camera, config)


_render_bound_jit = eqx.filter_jit(_render_bound_checked)


def _dynamic_needs(bound, dynamic, camera, config):
    proj = project(dynamic, camera, config)
    ranges, n_tiles = tile_ranges(proj, camera.width, camera.height, config)
    tiles_x, tiles_y = tile_grid(camera.width, camera.height, config.tile_size)
    merged = bound.tile_counts + tile_counts(ranges, n_tiles, tiles_x, tiles_y)
    return jnp.max(merged), jnp.sum(n_tiles)


@eqx.filter_jit
def _dynamic_needs_batch(bound, dynamic, camera, config):
    return eqx.filter_vmap(_dynamic_needs, in_axes=(None, 0, None, None))(bound, dynamic, camera, config)


def fit_bound_capacity(
    bound: BoundScene,
    dynamic: Gaussians,
    camera: Camera,
    config: RasterConfig = RasterConfig(),
    headroom: float = 1.5,
) -> RasterConfig:
    """`config` with capacities for `render_bound(bound, dynamic, camera, ...)`, times `headroom`:
    a tile capacity for the merged lists (largest scene + dynamic count of a tile) and a pair
    capacity for the dynamic set alone (also as `dynamic_pair_capacity` when `config` sets that).
    Eager (reads counts back to the host).

    If the merged need exceeds the scene lists' length (`bound.ids.shape[1]`), scene pairs
    were already dropped at bind: bind again with this config. `dynamic` (and `bound`) may carry
    leading axes (frames, seeds, steps): the largest need is taken."""
    if _tracing(bound, dynamic, camera):
        raise ValueError("fit_bound_capacity reads counts back to the host: call it outside jit, vmap and grad")
    lead = dynamic.means.ndim - 2
    batch = math.prod(dynamic.means.shape[:lead])
    flat = jax.tree.map(lambda x: x.reshape((batch,) + x.shape[lead:]), dynamic)
    tile, pairs = _dynamic_needs_batch(bound, flat, camera, config)
    tile, pairs = int(np.max(np.asarray(tile))), int(np.max(np.asarray(pairs)))
    dynamic_pairs = _round_pair_capacity(pairs * headroom)
    return config.with_capacity(
        tile_capacity=_round_tile_capacity(math.ceil(tile * headroom), config.chunk_size),
        pair_capacity=dynamic_pairs,
        dynamic_pair_capacity=None if config.dynamic_pair_capacity is None else dynamic_pairs,
    )
