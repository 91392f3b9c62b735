"""Constants of the rasterizer, gathered in one configuration object.

The defaults follow gsplat 1.5.3 (`RasterizeToPixels3DGSFwd.cu`, `_torch_impl.py`); every one of
them is a field so that a user can match another peer (INRIA clamps alpha at 0.99, say).
"""

from __future__ import annotations

import dataclasses
import numbers

CAPACITIES = ("tile_capacity", "pair_capacity", "dynamic_pair_capacity")
"""The fields of `RasterConfig` that size its buffers (static in compiled programs; measured, grown)."""


@dataclasses.dataclass(frozen=True)
class RasterConfig:
    """Static settings of `render`. Hashable, so it can be a static argument of `jax.jit`."""

    tile_size: int = 16
    """Side of the square screen tiles, in pixels."""
    tile_capacity: int | None = None
    """Most Gaussians composited per tile. None: measured on the scene by an eager `render`
    (an error under jit/vmap/grad, where nothing can be measured: pass `fit_capacity`'s config)."""
    pair_capacity: int | None = None
    """Most tile-Gaussian pairs per image. None: measured by an eager `render`; under a trace,
    `pairs_per_gaussian * N` (a guess whose shortfall `overflow` counts)."""
    dynamic_pair_capacity: int | None = None
    """`render_bound`'s pair buffer for the dynamic set (the scene's pairs were written at bind).
    None: `pair_capacity`. A pipeline that renders the whole image in one stage and a bound scene
    in another keeps both capacities in one config this way."""
    pairs_per_gaussian: float = 4.0
    """Pair capacity per Gaussian when `pair_capacity` is None and cannot be measured."""
    overflow: str = "grow"
    """What an eager `render` does when a tile or the pair buffer is full:
    'grow': render again with capacities that fit (warns that it did, naming them), so the image
        never lacks a pair;
    'drop': keep the fixed capacities and return the image without the extra pairs, counted in
        `RenderOutput.overflow` (a fixed cost per call);
    'error': raise `RasterOverflowError` (under jit, an `equinox.error_if` runtime error).
    Under jit/vmap/grad, 'grow' and 'drop' both return the count; callers that can re-run
    use `grown_capacity` (see the package docstring)."""
    chunk_size: int = 16
    """Gaussians composited per step of the per-tile loop (a speed/memory trade-off only)."""
    backward_chunk_size: int | None = None
    """Slots per step of the pure-JAX backward (`backward="jax"`); None: min(chunk_size, 8). Its
    step holds (tiles, chunk, pixels) arrays, so past 8 they fall out of cache and it slows down
    (measured in experiments/bench/results_jax_backward.md). Speed/memory only, like chunk_size."""
    projection_backward_chunks: int = 8
    """The projection's backward recomputes it from the Gaussians in this many chunks, so that its
    intermediates are neither kept from the forward nor all alive at once (at 100k Gaussians the
    gradient's temporary memory goes from 47 to 27 MB; experiments/bench/results_jax_backward.md).
    0: plain autodiff, which keeps them from the forward to the backward. Memory only: the
    gradients are the same up to float rounding."""
    projection_backward_min_gaussians: int = 16384
    """Sets of fewer Gaussians are differentiated by plain autodiff whatever
    `projection_backward_chunks` says: their intermediates are small, and the recomputation's
    fixed cost per chunk is not (10-15% slower for a 4000-Gaussian gradient on the CPU)."""
    eps2d: float = 0.3
    """Low-pass filter added to the diagonal of every 2D covariance, in pixels squared."""
    antialiased: bool = False
    """Scale opacity by sqrt(det(cov2d) / det(cov2d + eps2d I)) (gsplat's 'antialiased' mode)."""
    alpha_max: float = 0.999
    """Per-Gaussian alpha clamp (gsplat 1.5.3: 0.999, INRIA and newer gsplat: 0.99)."""
    alpha_min: float = 1.0 / 255.0
    """Contributions with a smaller alpha are skipped; it also sets the screen extent."""
    transmittance_min: float = 1e-4
    """A pixel stops once its transmittance would fall to this value; that Gaussian is excluded."""
    pixel_offset: float = 0.5
    """Pixel (j, i) samples the image plane at (j + offset, i + offset)."""
    clip_margin: float = 0.3
    """Fraction of the half field of view beyond the image edge where the Jacobian is clamped."""
    backward: str = "auto"
    """How `composite` is differentiated:
    'kernel': the compiled back-to-front backward (kernels/, see `kernel_backward`); an error
        where it cannot be built;
    'jax' (alias 'custom'): the same recomputing backward in pure JAX;
    'auto': 'kernel' on the platforms where it is built, 'jax' elsewhere (one warning);
    'autodiff': plain autodiff of the forward scan (the reference)."""
    forward: str = "auto"
    """How `composite` composites (the image, and the final transmittance and stop index the
    backward walks back from):
    'kernel': the compiled forward on the CPU (kernels/composite_forward_cpu.cc), an error where
        it cannot be built; other platforms run XLA's loop;
    'jax': XLA's loop over chunks of slots on every (tile, pixel) at once;
    'auto': 'kernel' on the CPU where it is built, 'jax' elsewhere (GPUs: XLA's loop). The two
        agree up to rounding (the compiled one rejects slots with the same test as the compiled
        backward; at the demo's size it is 8x faster on the CPU). Ignored by 'autodiff'."""

    def __post_init__(self):
        if self.tile_size <= 0 or self.chunk_size <= 0:
            raise ValueError("tile_size and chunk_size must be positive")
        if isinstance(self.projection_backward_chunks, bool) or not isinstance(
                self.projection_backward_chunks, numbers.Integral) or self.projection_backward_chunks < 0:
            raise ValueError(f"projection_backward_chunks must be an int >= 0, got {self.projection_backward_chunks!r}")
        if self.projection_backward_min_gaussians < 0:
            raise ValueError("projection_backward_min_gaussians must be >= 0")
        if self.backward_chunk_size is not None and self.backward_chunk_size <= 0:
            raise ValueError("backward_chunk_size must be positive (or None)")
        for name in CAPACITIES:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"RasterConfig.{name} must be a positive int or None (measure), got {value!r}")
            # A NumPy integer (a measured count) would otherwise leak into reprs and saved configs.
            object.__setattr__(self, name, int(value))
        if self.overflow not in ("grow", "drop", "error"):
            raise ValueError(f"RasterConfig.overflow must be 'grow', 'drop' or 'error', got {self.overflow!r}")
        if self.backward not in ("auto", "kernel", "jax", "custom", "autodiff"):
            raise ValueError(
                f"backward must be 'auto', 'kernel', 'jax' (alias 'custom') or 'autodiff', got {self.backward!r}"
            )
        if self.forward not in ("auto", "kernel", "jax"):
            raise ValueError(f"RasterConfig.forward must be 'auto', 'kernel' or 'jax', got {self.forward!r}")
        if not 0.0 < self.alpha_min < self.alpha_max <= 1.0:
            raise ValueError("need 0 < alpha_min < alpha_max <= 1")

    def with_capacity(self, tile_capacity: int | None = None, pair_capacity: int | None = None,
                      dynamic_pair_capacity: int | None = None) -> RasterConfig:
        """A copy with new capacities (the values `check_overflow` suggests); None keeps one."""
        keep = lambda new, old: old if new is None else int(new)  # noqa: E731
        return dataclasses.replace(
            self,
            tile_capacity=keep(tile_capacity, self.tile_capacity),
            pair_capacity=keep(pair_capacity, self.pair_capacity),
            dynamic_pair_capacity=keep(dynamic_pair_capacity, self.dynamic_pair_capacity),
        )

    def without_capacities(self) -> RasterConfig:
        """A copy with every capacity unset (measured again): the settings that shape an image."""
        return dataclasses.replace(self, **dict.fromkeys(CAPACITIES))

    @property
    def capacities(self) -> dict[str, int | None]:
        """The capacities by name (what `with_capacity` takes back; a run's complete.json records them)."""
        return {name: getattr(self, name) for name in CAPACITIES}

    def at_least(self, other: RasterConfig) -> RasterConfig:
        """A copy whose every set capacity is raised to `other`'s where that is larger; a capacity
        this config leaves unset stays unset."""
        raised = {name: max(mine, theirs) for (name, mine), theirs in zip(self.capacities.items(),
                                                                          other.capacities.values(), strict=True)
                  if mine is not None and theirs is not None}
        return self.with_capacity(**raised)

    @property
    def dynamic_config(self) -> RasterConfig:
        """The config of `render_bound`'s dynamic pairs: `pair_capacity` set to `dynamic_pair_capacity`."""
        if self.dynamic_pair_capacity is None:
            return self
        return dataclasses.replace(self, pair_capacity=self.dynamic_pair_capacity)

    def capacity_text(self) -> str:
        """The capacities, as keyword arguments a user can paste (the dynamic one when set)."""
        text = f"tile_capacity={self.tile_capacity}, pair_capacity={self.pair_capacity}"
        if self.dynamic_pair_capacity is not None:
            text += f", dynamic_pair_capacity={self.dynamic_pair_capacity}"
        return text

    @property
    def jax_backward_chunk(self) -> int:
        """Slots per step of the pure-JAX backward (see `backward_chunk_size`)."""
        return self.backward_chunk_size if self.backward_chunk_size is not None else min(self.chunk_size, 8)

    def pairs_for(self, num_gaussians: int) -> int:
        if self.pair_capacity is not None:
            return int(self.pair_capacity)
        return max(1024, int(self.pairs_per_gaussian * num_gaussians))
