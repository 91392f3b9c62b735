"""Keeping a long-lived process under the kernel's limit on memory mappings.

XLA:CPU maps the machine code of every compiled program into memory regions of its own (about
three per program), and JAX keeps every program it compiled for reuse. A process that compiles
thousands of distinct programs (a test session, a benchmark sweep over many settings) reaches
Linux's `vm.max_map_count` (65,530 by default); the next compilation then fails inside LLVM and
the process dies with a segmentation fault, far from the cause. `release_if_near_limit` drops
JAX's compiled programs before that happens; they are recompiled on their next call.
"""

from __future__ import annotations

import gc
from pathlib import Path

import jax

_MAPS = Path("/proc/self/maps")
_LIMIT = Path("/proc/sys/vm/max_map_count")


def memory_map_count() -> int | None:
    """Memory mappings of this process, or None where the system does not say (not Linux)."""
    try:
        with _MAPS.open() as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def memory_map_limit() -> int | None:
    try:
        return int(_LIMIT.read_text())
    except (OSError, ValueError):
        return None


def release_if_near_limit(fraction: float = 0.5) -> bool:
    """Clear JAX's caches of compiled programs when this process holds more than `fraction` of
    the allowed memory mappings. Returns True if it cleared them. Call between jobs, never
    inside a traced function."""
    count, limit = memory_map_count(), memory_map_limit()
    if count is None or limit is None or count < fraction * limit:
        return False
    jax.clear_caches()
    gc.collect()
    return True
