"""Dropping compiled programs returns their memory mappings (the cause of late segfaults in
long sessions: see zerohsi_jax.compiled_memory)."""

import sys

import jax
import jax.numpy as jnp
import pytest

from zerohsi_jax.compiled_memory import memory_map_count, memory_map_limit, release_if_near_limit


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory maps are read from /proc (Linux only)")
def test_release_returns_the_mappings_of_compiled_programs():
    assert memory_map_limit() > 0
    assert not release_if_near_limit(fraction=1.01)  # nowhere near the limit: keeps the caches
    for i in range(60):  # distinct programs, each with machine code of its own
        jax.jit(lambda x, i=i: jnp.sin(x) * i)(jnp.ones(i + 1)).block_until_ready()
    before = memory_map_count()
    assert release_if_near_limit(fraction=0.0)
    after = memory_map_count()
    assert after < before - 60, (before, after)
