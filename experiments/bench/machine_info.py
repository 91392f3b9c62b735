"""One line naming the machine a benchmark ran on (CPU model, cores, JAX and its device)."""

from __future__ import annotations

import os
import platform

import jax


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", "")
    return f"{cpu}, {os.cpu_count()} cores, JAX {jax.__version__} on {dev.platform}" + (f" ({kind})" if kind else "")
