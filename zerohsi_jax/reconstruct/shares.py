"""A run over several processes (machines joined by `jax.distributed`): each process fits its share
of the seeds on its own devices; process 0 writes the results of every seed.

The run folder of a multi-process run (N processes, here 2 with 6 seeds):

    run.json                  the whole run's manifest (every seed's inputs; written by process 0)
    part-0-2/                 process 0's share, seeds 0..2: a run folder of its own (frames/, resume/,
                              its own run.json and lock), written by that process only; the seeds are
                              numbered inside it from 0
    part-3-5/                 process 1's share, seeds 3..5
    seed_0/ ... seed_5/       every seed's results under its index in the whole run
    losses.npz, timings.json  (process 0)
    complete.json             written last by process 0, once every share is fitted and gathered
    .lock-process<i>          each process's lock (the parts hold theirs too)

So the per-frame files, which hold every seed of a frame, are never written by two processes, and
each seed's results are written once. Readers of a run folder (`run_results.load_run`, `view`,
`export`, `continue`) find the layout of a one-process run: `complete.json` and `seed_<s>/`.

A rerun resumes each part from its own frames, so it needs the same process count (the shares,
hence the part folders, follow from it; the device count per process may change). Parts of
another split are left in place on a resume and removed by `--no-resume`. A rerun in one process
fits into the run folder itself and ignores the parts.

The results are gathered with `multihost_utils.process_allgather`, so every process returns the
whole `Reconstruction` (also without a run folder, as the bench suite runs). Loss traces cover
frames 1..T-1; a frame that a resumed process had finished before (no trace in this run) is NaN.
"""

from __future__ import annotations

import contextlib
import shutil

import jax
import numpy as np

from ..devices import Processes, SeedMesh, barrier, gather_shares, gather_values, process_share, processes
from ..splat import RasterConfig
from .run_files import RunFolder, RunMismatchError, manifest_changes


def part_name(share: range) -> str:
    """The part folder of a share of the seeds: `part-<first>-<last>`."""
    return f"part-{share.start}-{share.stop - 1}"


def reconstruct_shares(inputs, observations, initial, vposer, cfg, terms, raster: RasterConfig, mesh: SeedMesh, *,
                       run_dir, resume: bool, redo_from: int | None, progress: bool, frame_rate, on_start,
                       before_complete, log):
    """`pipeline.reconstruct` in a multi-process run (see the module docstring)."""
    from .pipeline import fit_seeds, run_manifest, write

    here = processes()
    n_seeds = int(observations.frames.shape[0])
    shares = [process_share(n_seeds, p, here.count) for p in range(here.count)]
    mine = shares[here.index]
    local_obs = jax.tree.map(lambda x: x[mine.start:mine.stop], observations)
    record = _record(mesh, here)
    top = None if run_dir is None else RunFolder(run_dir)
    with contextlib.ExitStack() as stack:
        part = None
        if top is not None:
            stack.enter_context(top.lock(f"reconstruct (process {here.index} of {here.count})"))
            _start_top(top, run_manifest(inputs, observations, initial, vposer, cfg, raster, terms, record), resume,
                       here, [part_name(s) for s in shares])
            part = RunFolder(top.root / part_name(mine))
            stack.enter_context(part.lock(f"reconstruct (process {here.index} of {here.count})"))
            part.start(run_manifest(inputs, local_obs, initial, vposer, cfg, raster, terms, mesh.record()), resume,
                       redo_from=redo_from)
        if on_start is not None and here.index == 0:
            on_start()
        if progress:
            log(f"process {here.index} of {here.count}: seeds {mine.start}..{mine.stop - 1} on {mesh.size} device(s)")
        local = fit_seeds(inputs, local_obs, initial, vposer, cfg, terms, raster, mesh, part, resume=resume,
                          progress=progress, log=log)
        result = _gather(local, [len(s) for s in shares], int(observations.frames.shape[1]), record)
        # Every share is fitted (the gather waited for them); process 0 writes the summary.
        barrier("zerohsi: every share fitted")
        if here.index == 0:
            write(top, inputs, result, frame_rate, before_complete)
        barrier("zerohsi: results written")  # no process returns before complete.json is there
        return result


def _start_top(top: RunFolder, manifest: dict, resume: bool, here: Processes, parts: list[str]) -> None:
    """Process 0 starts the run folder (`RunFolder.start`: checked, or emptied for a fresh run, and
    without `complete.json` until the end; the parts of another split removed by a fresh run). The
    others make the same check read-only, so that a mismatch stops every process, not only 0."""
    if here.index == 0:
        top.start(manifest, resume)
        if not resume:
            for stale in top.root.glob("part-*"):
                if stale.is_dir() and stale.name not in parts:
                    shutil.rmtree(stale, ignore_errors=True)
        return
    old = top.read_manifest() if resume else None
    if old is not None and (changed := manifest_changes(old, manifest)):
        raise RunMismatchError(top._mismatch_message(old, changed))


def _record(mesh: SeedMesh, here: Processes) -> dict:
    """The devices of the whole run: every process's count summed."""
    counts = gather_values([mesh.size])
    return {**mesh.record(), "count": int(counts.sum()), "processes": here.count}


def _gather(local, sizes: list[int], n_frames: int, record: dict):
    """Every process's `Reconstruction` of its share as one of all the seeds (on every process)."""
    from .pipeline import Reconstruction

    traces = {key: _frame_traces(local.losses.get(key, []), n_frames - 1) for key in ("camera", "hsi")}
    seeded = {
        "viewmats": local.viewmats,
        "human_stage2": local.human_stage2,
        "human": local.human,
        "object_poses": local.object_poses,
        "traces": {k: v for k, v in traces.items() if v is not None},
        "refine": local.losses.get("refine"),
    }
    # The structure must agree between processes: which traces exist, and their iteration counts.
    widths = gather_values([-1 if traces[k] is None else traces[k].shape[-1] for k in ("camera", "hsi")])
    for i, key in enumerate(("camera", "hsi")):
        width = int(widths[:, i].max())
        if width >= 0 and traces[key] is None:
            seeded["traces"][key] = np.full((len(local.viewmats), n_frames - 1, width), np.nan, np.float32)
    seeded["traces"] = dict(sorted(seeded["traces"].items()))
    whole = gather_shares(seeded, sizes)
    losses = {k: list(np.moveaxis(v, 1, 0)) for k, v in whole["traces"].items()}
    if whole["refine"] is not None:
        losses["refine"] = whole["refine"]
    keys = sorted(local.timings)
    slowest = gather_values([local.timings[k] for k in keys]).max(axis=0)
    return Reconstruction(
        viewmats=whole["viewmats"],
        human_stage2=whole["human_stage2"],
        human=whole["human"],
        object_poses=whole["object_poses"],
        timings={k: float(v) for k, v in zip(keys, slowest, strict=True)},
        losses=losses,
        raster=_largest_raster(local.raster),
        betas=local.betas,
        devices=record,
    )


def _frame_traces(traces: list, n: int) -> np.ndarray | None:
    """A stage's per-frame loss traces (the frames fitted in this run: the last ones) as (S, n,
    iterations), NaN for the frames fitted before a resume; None without any trace."""
    if not traces:
        return None
    fitted = np.stack([np.asarray(t).reshape(t.shape[0], -1) for t in traces], axis=1).astype(np.float32)
    out = np.full(fitted.shape[:1] + (n,) + fitted.shape[2:], np.nan, np.float32)
    out[:, n - fitted.shape[1]:] = fitted
    return out


def _largest_raster(raster: RasterConfig | None) -> RasterConfig | None:
    """The capacities that held in every process (each grows its own as its seeds need)."""
    if raster is None:
        return None
    mine = raster.capacities
    caps = gather_values([-1 if v is None else v for v in mine.values()]).max(axis=0)
    return raster.with_capacity(**{n: None if c < 0 else int(c) for n, c in zip(mine, caps, strict=True)})


__all__ = ["part_name", "reconstruct_shares"]
