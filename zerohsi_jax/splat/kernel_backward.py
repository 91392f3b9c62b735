"""The compiled kernels of `composite`: load the built library, register them with XLA, call them.

`kernel_build` compiles the sources of `kernels/` into the cache; this module loads the library
once per process and platform, registers its handlers as FFI targets and calls them through
`jax.ffi` on arrays: the backward on every platform, the forward on the CPU (on a GPU, XLA's own
loop composites). Which backward `composite` uses (this kernel, the pure-JAX one, autodiff),
and the fallback with one warning of `RasterConfig(backward="auto")`, is decided in `composite`.

Environment:
    ZEROHSI_JAX_KERNEL_THREADS  CPU threads of the kernel (default: one per hardware thread)
    (the build's variables: see `kernel_build`)

Build ahead of time with `python -m zerohsi_jax.splat.kernel_build build` (this module's
`python -m zerohsi_jax.splat.kernel_backward build` runs the same command).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .config import RasterConfig
from .kernel_build import KernelBuildError, build_kernel

TARGET_NAME = "zerohsi_composite_backward"
"""The backward's FFI target, registered once per platform (same name, one handler each)."""

FORWARD_TARGET_NAME = "zerohsi_composite_forward"
"""The forward's FFI target, registered for the CPU only."""

_SYMBOLS = {"cpu": "ZerohsiCompositeBackwardCpu", "cuda": "ZerohsiCompositeBackwardCuda"}
_FORWARD_SYMBOLS = {"cpu": "ZerohsiCompositeForwardCpu"}
_FFI_PLATFORMS = {"cpu": "cpu", "cuda": "CUDA"}


class KernelUnavailableError(RuntimeError):
    """`backward="kernel"` was asked for on a platform where the kernel cannot be built or loaded."""


@dataclasses.dataclass
class _LoadState:
    available: bool
    reason: str = ""
    library: Path | None = None
    handle: ctypes.CDLL | None = None  # kept alive: XLA calls into it


_loaded: dict[str, _LoadState] = {}
_lock = threading.Lock()


def load_kernel(platform: str = "cpu") -> bool:
    """Build (if needed), load and register the kernel for `platform`; False, with the reason in
    `kernel_status(platform)`, when that fails. Tried once per process."""
    with _lock:
        state = _loaded.get(platform)
        if state is None:
            state = _loaded[platform] = _load(platform)
        return state.available


def _load(platform: str) -> _LoadState:
    try:
        library = build_kernel(platform)
    except KernelBuildError as err:
        return _LoadState(False, f"building it failed: {err}")
    try:
        handle = ctypes.CDLL(str(library))
        if platform == "cuda":
            probe = handle.ZerohsiCompositeBackwardCudaProbe
            probe.restype = ctypes.c_int
            message = ctypes.create_string_buffer(512)
            if probe(message, len(message)) != 0:
                return _LoadState(False, f"{library} cannot run on this GPU: {message.value.decode()}", library)
        capsule = jax.ffi.pycapsule(getattr(handle, _SYMBOLS[platform]))
        jax.ffi.register_ffi_target(TARGET_NAME, capsule, platform=_FFI_PLATFORMS[platform])
        if platform in _FORWARD_SYMBOLS:
            forward = jax.ffi.pycapsule(getattr(handle, _FORWARD_SYMBOLS[platform]))
            jax.ffi.register_ffi_target(FORWARD_TARGET_NAME, forward, platform=_FFI_PLATFORMS[platform])
    except Exception as err:  # a stale or foreign library in the cache, a jaxlib without FFI
        return _LoadState(False, f"loading {library} failed: {type(err).__name__}: {err}", library)
    return _LoadState(True, "", library, handle)


def kernel_status(platform: str = "cpu") -> str:
    """'available', 'not tried' or why it is unavailable."""
    state = _loaded.get(platform)
    if state is None:
        return "not tried"
    return "available" if state.available else state.reason


def _num_threads() -> int:
    value = os.environ.get("ZEROHSI_JAX_KERNEL_THREADS", "0")
    try:
        return max(0, int(value))
    except ValueError:
        raise ValueError(f"ZEROHSI_JAX_KERNEL_THREADS must be an integer, got {value!r}") from None


def has_forward(platform: str) -> bool:
    """Whether `platform`'s library holds the compiled forward (the CPU's does)."""
    return platform in _FORWARD_SYMBOLS


def kernel_composite_forward(
    means2d: Float[Array, "*B N 2"],
    conics: Float[Array, "*B N 3"],
    opacities: Float[Array, "*B N"],
    features: Float[Array, "*B N C"],
    background: Float[Array, "*B C"],
    ids: Int[Array, "*B T K"],
    counts: Int[Array, "*B T"],
    pix: Float[Array, "*B T P 2"],
    cfg: RasterConfig,
) -> tuple[Float[Array, "*B T P C"], Float[Array, "*B T P"], Int[Array, "*B T P"]]:
    """The compiled twin of `composite`'s forward: the composited tiles, the final transmittance
    and the stop index of every pixel. Registered for the CPU only (`load_kernel("cpu")`)."""
    floats = (means2d, conics, opacities, features, background, pix)
    compute = jnp.float64 if any(x.dtype == jnp.float64 for x in floats) else jnp.float32
    num_tiles, num_pix = pix.shape[-3], pix.shape[-2]
    batch = pix.shape[:-3]
    out_types = (
        jax.ShapeDtypeStruct((*batch, num_tiles, num_pix, features.shape[-1]), compute),
        jax.ShapeDtypeStruct((*batch, num_tiles, num_pix), compute),
        jax.ShapeDtypeStruct((*batch, num_tiles, num_pix), jnp.int32),
    )
    call = jax.ffi.ffi_call(FORWARD_TARGET_NAME, out_types, vmap_method="broadcast_all")
    out, trans, stop = call(
        *(x.astype(compute) for x in floats[:5]),
        ids.astype(jnp.int32),
        counts.astype(jnp.int32),
        pix.astype(compute),
        alpha_max=np.float64(cfg.alpha_max),
        alpha_min=np.float64(cfg.alpha_min),
        transmittance_min=np.float64(cfg.transmittance_min),
        tile_size=np.int64(cfg.tile_size),
        num_threads=np.int64(_num_threads()),
    )
    return out.astype(features.dtype), trans.astype(features.dtype), stop


def kernel_composite_backward(
    means2d: Float[Array, "*B N 2"],
    conics: Float[Array, "*B N 3"],
    opacities: Float[Array, "*B N"],
    features: Float[Array, "*B N C"],
    background: Float[Array, "*B C"],
    ids: Int[Array, "*B T K"],
    counts: Int[Array, "*B T"],
    pix: Float[Array, "*B T P 2"],
    final_trans: Float[Array, "*B T P"],
    stop: Int[Array, "*B T P"],
    grad_out: Float[Array, "*B T P C"],
    cfg: RasterConfig,
) -> tuple[
    Float[Array, "*B N 2"], Float[Array, "*B N 3"], Float[Array, "*B N"], Float[Array, "*B N C"], Float[Array, "*B C"]
]:
    """The compiled twin of `composite.composite_backward` (same arguments, same results).
    The target must be registered for the platform it runs on (`load_kernel`)."""
    floats = (means2d, conics, opacities, features, background)
    compute = jnp.float64 if any(x.dtype == jnp.float64 for x in floats) else jnp.float32
    out_types = tuple(jax.ShapeDtypeStruct(x.shape, compute) for x in floats)
    # broadcast_all: under vmap every argument gets the batch axes in front and the handler
    # loops over them, one launch for the whole batch.
    call = jax.ffi.ffi_call(TARGET_NAME, out_types, vmap_method="broadcast_all")
    grads = call(
        *(x.astype(compute) for x in floats),
        ids.astype(jnp.int32),
        counts.astype(jnp.int32),
        pix.astype(compute),
        final_trans.astype(compute),
        stop.astype(jnp.int32),
        grad_out.astype(compute),
        alpha_max=np.float64(cfg.alpha_max),
        alpha_min=np.float64(cfg.alpha_min),
        tile_size=np.int64(cfg.tile_size),
        num_threads=np.int64(_num_threads()),
    )
    return tuple(g.astype(x.dtype) for g, x in zip(grads, floats, strict=True))


if __name__ == "__main__":
    from .kernel_build import main

    sys.exit(main(sys.argv[1:], prog="python -m zerohsi_jax.splat.kernel_backward"))
