"""Seeds over the devices of a machine, and over machines.

One machine: the seed axis of a run (every array whose leading axis is the seed) is padded to a
multiple of the device count and split over a one-axis `jax.sharding.Mesh` of the chosen local
devices (`SeedMesh`). Each compiled program of the pipeline runs under `shard_map` over that axis:
every device fits its own block of seeds with the very program a single device runs, vmapped
over a smaller batch. `shard_map` rather than letting GSPMD partition the vmapped program: the
rasterizer's backward is an FFI call (`splat.kernel_backward`), which the SPMD partitioner cannot
split, so it would gather every seed onto every device around it; the seeds are independent, so
the manual split is exact and needs no communication.

The padding repeats the last seed (a real problem: no NaN from an all-zero video can stop the
run), and `cut_leading` drops it before anything reaches results, files, losses or the NaN check.

Many machines: `initialize_distributed` joins the processes with `jax.distributed.initialize`
(flags, ZEROHSI_* variables, or a launcher JAX detects, such as SLURM's srun); each process fits a
contiguous block of the seeds (`process_share`) on its own devices, and the results are gathered
with `multihost_utils.process_allgather` (see `zerohsi_jax.reconstruct.shares`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .errors import UserError

SEED_AXIS = "seeds"
"""The one axis of the seed mesh."""


class DeviceError(UserError, ValueError):
    """A device or process count that this machine or launch cannot give; the message says which."""


# ---------------------------------------------------------------------------------- devices


def choose_devices(count: int | None = None) -> list[jax.Device]:
    """The first `count` devices of this process (its default backend's; all of them for None)."""
    available = jax.local_devices()
    if count is None:
        return list(available)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DeviceError(f"--devices {count!r}: give a whole number of 1 or more")
    if count > len(available):
        kind = available[0].platform
        raise DeviceError(
            f"--devices {count}: this process sees {len(available)} {kind} device(s) "
            f"({', '.join(str(d) for d in available)}); give --devices {len(available)} or fewer"
            + (" (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N splits the host into N devices)"
               if kind == "cpu" else "")
        )
    return list(available[:count])


def device_record(devices: Sequence[jax.Device], *, processes: int = 1, total: int | None = None) -> dict:
    """What a run records of the devices it ran on (run.json, complete.json, metrics.json): how many
    (over every process), their kinds, and the process count."""
    kinds = sorted({getattr(d, "device_kind", d.platform) for d in devices})
    return {"count": int(total if total is not None else len(devices)), "platform": devices[0].platform,
            "kinds": kinds, "processes": int(processes)}


# --------------------------------------------------------------------- the seed-leading pytree


def _is_batch(x) -> bool:
    """A leaf with a leading seed axis: an array of one dimension or more."""
    return isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) >= 1


def pad_leading(tree, size: int):
    """Every array leaf's leading axis grown to `size` by repeating its last entry (NumPy leaves
    stay NumPy, JAX leaves JAX); None and non-array leaves as they are."""
    def pad(x):
        if not _is_batch(x) or x.shape[0] == size:
            return x
        if x.shape[0] > size or x.shape[0] == 0:
            raise ValueError(f"cannot pad a leading axis of {x.shape[0]} to {size}")
        xp = np if isinstance(x, np.ndarray) else jnp
        return xp.concatenate([x, xp.repeat(x[-1:], size - x.shape[0], axis=0)])

    return jax.tree.map(pad, tree)


def cut_leading(tree, count: int):
    """The first `count` entries of every array leaf's leading axis, as NumPy arrays (the padding
    cut off, on the host)."""
    return jax.tree.map(lambda x: np.asarray(x)[:count] if _is_batch(x) else x, tree)


def _flatten2(x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]) if _is_batch(x) else x


@dataclasses.dataclass(frozen=True)
class SeedMesh:
    """The devices a process fits its seeds on: a one-axis mesh (axis `SEED_AXIS`)."""

    mesh: Mesh

    @classmethod
    def of(cls, devices: Sequence[jax.Device]) -> SeedMesh:
        return cls(Mesh(np.asarray(list(devices)), (SEED_AXIS,)))

    @property
    def devices(self) -> list[jax.Device]:
        return list(self.mesh.devices.flat)

    @property
    def size(self) -> int:
        return int(self.mesh.devices.size)

    def padded(self, count: int) -> int:
        """`count` rounded up to a multiple of the device count."""
        return self.size * math.ceil(count / self.size)

    def place(self, tree):
        """Seed-leading arrays (a multiple of the device count long) split over the devices. On one
        device nothing moves: the run is the single-device run it always was."""
        if self.size == 1:
            return tree
        split = NamedSharding(self.mesh, PartitionSpec(SEED_AXIS))
        return jax.tree.map(lambda x: jax.device_put(x, split) if _is_batch(x) else x, tree)

    def replicate(self, tree):
        """Arrays every seed reads, copied once to every device (rather than at every call)."""
        if self.size == 1:
            return tree
        whole = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(lambda x: jax.device_put(x, whole) if eqx.is_array(x) else x, tree)

    def call(self, program: Callable, args: tuple, seeds: tuple, *, batch_axes: int = 1):
        """`program(*args)` with each device running it on its block of the seeds.

        `seeds` marks, per argument, whether its arrays lead with the seed axis (True) or are
        shared by every seed (False); an argument that mixes both gives a pytree of such marks
        (a prefix of the argument: e.g. an `eqx.Module` of the same class with a bool per field).
        Every output leads with the seed axis (the programs are vmapped). With `batch_axes=2` the
        seed-marked arrays lead with (seeds, frames): their seeds x frames items are split over
        the devices as one axis (padded to a multiple of the device count), and the outputs come
        back as (seeds, frames, ...)."""
        if batch_axes == 2:
            lead = _leading_shape(args, seeds, 2)
            items = math.prod(lead)
            flat = _map_marked(lambda x: _flatten2(x), args, seeds)
            flat = _map_marked(lambda x: pad_leading(x, self.padded(items)), flat, seeds)
            out = self.call(program, flat, seeds)
            return jax.tree.map(lambda x: x[:items].reshape(lead + x.shape[1:]) if _is_batch(x) else x, out)
        if batch_axes != 1:
            raise ValueError(f"batch_axes must be 1 or 2, got {batch_axes}")
        if self.size == 1:
            return program(*args)
        count = _leading_shape(args, seeds, 1)[0]
        if count % self.size:
            raise ValueError(f"{count} seeds do not split over {self.size} devices; pad them first (SeedMesh.padded)")
        # Arrays placed elsewhere (or not at all) are moved by the compiled call as its specs say.
        return _on_mesh(program, self.mesh, seeds, args)

    def record(self) -> dict:
        return device_record(self.devices)


def _map_marked(f, args, seeds):
    """`f` on every array of the seed-marked parts of `args`."""
    return jax.tree.map(lambda mark, sub: jax.tree.map(f, sub) if mark else sub, seeds, args,
                        is_leaf=lambda x: x is None)


def _leading_shape(args, seeds, n: int) -> tuple[int, ...]:
    marked = jax.tree.leaves(jax.tree.map(lambda mark, sub: sub if mark else None, seeds, args,
                                          is_leaf=lambda x: x is None))
    shapes = {tuple(x.shape[:n]) for x in marked if _is_batch(x)}
    if len(shapes) != 1:
        raise ValueError(f"the seed-marked arguments disagree on their leading axes: {sorted(shapes)}")
    return shapes.pop()


@eqx.filter_jit
def _on_mesh(program, mesh: Mesh, seeds, args):
    """`program(*args)` under `shard_map`: each device runs it on its seeds; the shared arrays are
    whole on every device. Non-array parts of the arguments and outputs (static settings) pass
    around the map. Compiled once per program, mesh and argument shapes (`filter_jit` keys its
    cache on the non-array arguments, the program and the mesh among them)."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    seed_spec, whole = PartitionSpec(SEED_AXIS), PartitionSpec()
    specs = jax.tree.map(lambda mark, sub: jax.tree.map(lambda _: seed_spec if mark else whole, sub),
                         seeds, dynamic, is_leaf=lambda x: x is None)
    out_static = []

    def block(dyn):
        out = program(*eqx.combine(dyn, static))
        out_dyn, rest = eqx.partition(out, eqx.is_array)
        out_static.append(rest)
        return out_dyn

    # check_vma off: no output is replicated (every one leads with the seed axis), and the check
    # does not see through the programs' custom_vjp and FFI calls.
    mapped = jax.shard_map(block, mesh=mesh, in_specs=(specs,), out_specs=PartitionSpec(SEED_AXIS),
                           check_vma=False)
    out_dyn = mapped(dynamic)
    return eqx.combine(out_dyn, out_static[-1])


# -------------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run."""

    index: int = 0
    count: int = 1


def processes() -> Processes:
    """Where this process stands: (0 of 1) unless `jax.distributed` joined it to others. Asks JAX
    only once it is joined, so that a call before `initialize_distributed` starts no backend."""
    if not jax.distributed.is_initialized():
        return Processes()
    return Processes(jax.process_index(), jax.process_count())


# Launchers that start several processes and whose variables `jax.distributed.initialize()` reads
# itself: (the variable holding the process count, a variable only the launcher's tasks carry).
_LAUNCHERS = {
    "SLURM (srun)": ("SLURM_NTASKS", "SLURM_STEP_NODELIST"),
    "Open MPI (mpirun)": ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise DeviceError(f"{name}={value!r}: expected a whole number") from None


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> Processes:
    """Join this process to the others of a multi-process run, when it is one: from the arguments
    (the CLI's --coordinator ADDRESS:PORT --num-processes N --process-id I), else the variables
    ZEROHSI_COORDINATOR, ZEROHSI_NUM_PROCESSES, ZEROHSI_PROCESS_ID, else a launcher JAX detects
    (srun with more than one task, mpirun). Without any of them, nothing happens: one process.
    Must run before JAX starts a backend (before the first computation)."""
    coordinator = coordinator or os.environ.get("ZEROHSI_COORDINATOR") or None
    if num_processes is None:
        num_processes = _env_int("ZEROHSI_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("ZEROHSI_PROCESS_ID")
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if jax.distributed.is_initialized():
        return processes()
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise DeviceError(f"a multi-process run needs --coordinator, --num-processes and --process-id (or "
                              f"ZEROHSI_COORDINATOR, ZEROHSI_NUM_PROCESSES, ZEROHSI_PROCESS_ID); missing {missing}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DeviceError(f"--process-id {process_id} with --num-processes {num_processes}: the process ids "
                              f"are 0..{num_processes - 1}, one per process")
        if num_processes == 1:
            return Processes()
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    else:
        launched = [name for name, (count, marker) in _LAUNCHERS.items()
                    if (_env_int(count) or 1) > 1 and marker in os.environ]
        if not launched:
            return Processes()
        jax.distributed.initialize()  # JAX reads the launcher's variables (coordinator, count, id)
    here = processes()
    if num_processes is not None and here.count != num_processes:
        raise DeviceError(f"--num-processes {num_processes}, but {here.count} processes joined the coordinator; "
                          "start every process with the same --num-processes")
    return here


def process_share(n_seeds: int, index: int, count: int) -> range:
    """The seeds process `index` of `count` fits: contiguous blocks whose sizes differ by one at
    most (the first `n_seeds % count` processes take one more)."""
    if n_seeds < count:
        raise DeviceError(f"{n_seeds} seed(s) for {count} processes: every process needs a seed of its own; "
                          f"start {n_seeds} process(es) or fewer, or fit more seeds")
    base, extra = divmod(n_seeds, count)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def gather_shares(tree, sizes: Sequence[int]):
    """Every process's seed-leading `tree` (process p's with `sizes[p]` seeds, every process the
    same structure) as one tree of all the seeds in process order, on every process (NumPy)."""
    from jax.experimental import multihost_utils

    width = max(sizes)
    # process_allgather stacks equal shapes: each process pads its block to the widest.
    stacked = multihost_utils.process_allgather(pad_leading(jax.tree.map(np.asarray, tree), width), tiled=False)
    return jax.tree.map(lambda x: np.concatenate([np.asarray(x[p, :n]) for p, n in enumerate(sizes)]), stacked)


def gather_values(values: Sequence[float]) -> np.ndarray:
    """(processes, len(values)): a few numbers of every process, on every process."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.float64), tiled=False))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing to wait for in one process)."""
    if processes().count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


__all__ = [
    "SEED_AXIS",
    "DeviceError",
    "Processes",
    "SeedMesh",
    "barrier",
    "choose_devices",
    "cut_leading",
    "device_record",
    "gather_shares",
    "gather_values",
    "initialize_distributed",
    "pad_leading",
    "process_share",
    "processes",
]
