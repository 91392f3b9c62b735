"""Official state-dict key layout <-> Equinox modules.

A module that ports an official PyTorch module exposes `state_keys()` (official key -> accessor
of the leaf that holds it, in the official shape) and `constant_keys()` (official buffers that
are fixed filters: key -> expected value). These helpers read and write a flat
`{key: array}` dictionary through them and check every key and shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np


class StateDictError(ValueError):
    """A state dict that does not fit the module: missing, unexpected or mis-shaped keys."""


def expected_shapes(module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Every key the official state dict holds for `module`, with its shape (works on a module
    of `jax.ShapeDtypeStruct` leaves from `jax.eval_shape`, so full-size layouts cost nothing)."""
    shapes = {prefix + k: tuple(f(module).shape) for k, f in module.state_keys().items()}
    shapes.update({prefix + k: tuple(v.shape) for k, v in module.constant_keys().items()})
    return shapes


def to_state_dict(module, prefix: str = "") -> dict[str, np.ndarray]:
    """The official-layout state dict of `module` (float32 numpy arrays, constants included)."""
    out = {prefix + k: np.asarray(f(module), np.float32) for k, f in module.state_keys().items()}
    out.update({prefix + k: np.asarray(v, np.float32) for k, v in module.constant_keys().items()})
    return out


def check_state_dict(
    module, state: Mapping[str, np.ndarray], prefix: str = "", *, strict: bool = True
) -> None:
    """Raise `StateDictError` naming each missing key (with the shape it needs), each key whose
    shape differs, each fixed filter whose value differs, and (strict) each unexpected key."""
    problems = []
    for key, shape in expected_shapes(module, prefix).items():
        if key not in state:
            problems.append(f"missing key {key!r} (expected shape {shape})")
            continue
        got = tuple(np.shape(state[key]))
        if got != shape:
            problems.append(f"key {key!r} has shape {got}, expected {shape}")
    for key, value in module.constant_keys().items():
        full = prefix + key
        if full in state and tuple(np.shape(state[full])) == value.shape:
            if not np.allclose(np.asarray(state[full], np.float32), value, atol=1e-6):
                problems.append(f"fixed filter {full!r} differs from the official constant")
    if strict:
        known = set(expected_shapes(module, prefix))
        extra = sorted(k for k in state if k.startswith(prefix) and k not in known)
        problems += [f"unexpected key {k!r} with shape {tuple(np.shape(state[k]))}" for k in extra]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise StateDictError(
            f"state dict does not match {type(module).__name__} ({prefix or 'root'}):\n  {shown}{more}"
        )


def load_state_dict(
    module, state: Mapping[str, np.ndarray], prefix: str = "", *, strict: bool = True, dtype=jnp.float32
):
    """`module` with every parameter and buffer taken from `state` (checked first)."""
    check_state_dict(module, state, prefix, strict=strict)
    keys = module.state_keys()
    accessors = list(keys.values())
    values = [jnp.asarray(np.asarray(state[prefix + k]), dtype) for k in keys]
    return eqx.tree_at(lambda m: [f(m) for f in accessors], module, values, is_leaf=lambda x: x is None)
