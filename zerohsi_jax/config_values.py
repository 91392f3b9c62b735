"""Checking a config's values: the numbers every key may take, and `ConfigError`, the one error a
wrong key or value raises. Apart from the run config so that the pipeline checks its own config
with the same rules without importing the run config (which imports the pipeline's package)."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A config file with a wrong key or value; the message names the file and the key."""


# ------------------------------------------------------------------------------ ranges

_POSITIVE, _NON_NEGATIVE, _UNIT = (lambda v: v > 0, "more than 0"), (lambda v: v >= 0, "0 or more"), \
    (lambda v: 0 <= v <= 1, "in [0, 1]")
_RANGES = [  # (key pattern, test, what the value must be): the first pattern that matches applies
    ("*learning_rate", *_POSITIVE),
    ("*iterations", *_NON_NEGATIVE),
    ("reconstruct.hsi.ssim_weight", *_UNIT),
    ("reconstruct.background[[]*]", *_UNIT),
    ("*loss_weights.*", *_NON_NEGATIVE),
    ("*_weight*", *_NON_NEGATIVE),
    ("reconstruct.hsi.color_every", *_NON_NEGATIVE),
    ("reconstruct.hsi.network_every", *_NON_NEGATIVE),
    ("reconstruct.parallel_warmup_frames", *_NON_NEGATIVE),
    ("reconstruct.refine.dynamic_threshold", *_NON_NEGATIVE),
    ("reconstruct.refine.*", *_POSITIVE),  # contact_epsilon, contact_chunk, max_contact_points, ...
    ("reconstruct.tile_capacity", *_POSITIVE),
    ("reconstruct.tile_size", *_POSITIVE),
    ("video.stride", *_POSITIVE),
    ("video.max_frames", *_POSITIVE),
    ("segment.num_points", *_POSITIVE),
    ("segment.num_negative", *_NON_NEGATIVE),
    ("init_frame.*", *_POSITIVE),
    ("render_size[[]*]", *_POSITIVE),
    ("human.avatar_gaussians", *_POSITIVE),
]


def _range_problem(key: str, value) -> str | None:
    """'key: what it must be' when a number is NaN, infinite or out of its key's range, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"{key}: must be a finite number, got {value}"
    rule = next(((test, what) for pattern, test, what in _RANGES if fnmatch.fnmatchcase(key, pattern)), None)
    if rule is not None and not rule[0](value):
        return f"{key}: must be {rule[1]}, got {value}"
    return None


def in_range(key: str, value):
    """`value`, checked as it is read (before a section's own checks, which would misname the cause)."""
    problem = _range_problem(key, value)
    if problem:
        raise ConfigError(problem)
    return value


def _leaves(obj, where: str):
    """(dotted key, value) of every plain value of a config."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.metadata.get("help", "") is not None:
                yield from _leaves(getattr(obj, f.name), f"{where}.{f.name}" if where else f.name)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _leaves(v, f"{where}.{k}")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{where}[{i}]")
    else:
        yield where, obj


def range_problems(cfg, prefix: str = "") -> list[str]:
    """What is out of range in a config section (`prefix` its dotted key), one 'key: what it must
    be' per problem."""
    return [problem for key, value in _leaves(cfg, prefix) if (problem := _range_problem(key, value))]


def check_values(cfg, prefix: str = "") -> None:
    """`ConfigError` naming every key of a config section out of range (see `range_problems`)."""
    problems = range_problems(cfg, prefix)
    if problems:
        raise ConfigError("; ".join(problems))
