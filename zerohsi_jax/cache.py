"""The one cache root: generated bodies, the demo pose prior, compiled kernels, SDF grids and XLA's
compiled programs live under it, each in a folder of its own.

    $ZEROHSI_JAX_CACHE                the root, if set
    $XDG_CACHE_HOME/zerohsi_jax       else, if XDG_CACHE_HOME is set
    ~/.cache/zerohsi_jax              else

Every entry is keyed by what produced it (its producers' sources, inputs and versions), so a
stale entry is never read; deleting the root is always safe.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("ZEROHSI_JAX_CACHE"):
        return Path(os.environ["ZEROHSI_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zerohsi_jax"


def cache_dir(name: str) -> Path:
    """The folder of one kind of cached file (`kernels`, `xla`, ...), not created."""
    return cache_root() / name


def enable_compilation_cache(path: str | os.PathLike | None = None, min_compile_seconds: float = 1.0) -> Path:
    """Keep XLA's compiled programs on disk (default: the cache root's `xla` folder), so that a
    second run, or a program compiled again after `compiled_memory.release_if_near_limit`, loads
    in seconds instead of compiling for a minute. JAX keys every entry by the program, its
    compile options, the device and the jax/jaxlib versions. Returns the folder."""
    import jax

    folder = Path(path) if path is not None else cache_dir("xla")
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return folder
