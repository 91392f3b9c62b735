"""The compiled backward of `composite`: build, load, register with XLA, call through `jax.ffi`.

The sources live in `kernels/` (one header of per-pixel arithmetic, a threaded CPU driver and a
CUDA kernel). They are compiled on first use into a cache keyed on everything that changes the
binary: the sources, the jaxlib version (whose FFI headers they include), the compiler, the
flags and, since the CPU build uses -march=native, the CPU's instruction set extensions.

Environment:
    ZEROHSI_JAX_CACHE           the package's cache root (zerohsi_jax.cache); kernels go to its kernels/
    ZEROHSI_JAX_CXX             C++ compiler (default $CXX, else g++, c++ or clang++ on PATH)
    ZEROHSI_JAX_NVCC            CUDA compiler (default nvcc on PATH, else $CUDA_HOME/bin/nvcc)
    ZEROHSI_JAX_CUDA_ARCH       GPU architecture to compile for (default: that of the first GPU)
    ZEROHSI_JAX_CXXFLAGS        extra flags of the C++ compiler
    ZEROHSI_JAX_KERNEL_SRC      directory holding the kernel sources (default: found next to the
                                package, see `kernel_source_dir`)
    ZEROHSI_JAX_KERNEL_THREADS  CPU threads of the kernel (default: one per hardware thread)

`RasterConfig(backward="auto")` (the default) uses the kernel on every platform where it is
built and the pure-JAX backward elsewhere, with one warning per platform that says why;
`backward="kernel"` raises `KernelUnavailableError` instead of falling back.

Build ahead of time (at install, in a container image) with
    python -m zerohsi_jax.splat.kernel_backward build
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import platform as host_platform
import shlex
import shutil
import site
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from .config import RasterConfig

TARGET_NAME = "zerohsi_composite_backward"
"""The FFI target, registered once per platform (same name, one handler each)."""

_SOURCES = {
    "cpu": ("composite_backward_cpu.cc", ["composite_backward.h", "composite_backward_ffi.h"]),
    "cuda": ("composite_backward_cuda.cu", ["composite_backward.h", "composite_backward_ffi.h"]),
}
_SYMBOLS = {"cpu": "ZerohsiCompositeBackwardCpu", "cuda": "ZerohsiCompositeBackwardCuda"}
_FFI_PLATFORMS = {"cpu": "cpu", "cuda": "CUDA"}
_BUILD_TIMEOUT_S = 600


class KernelBuildError(RuntimeError):
    """The compiler is missing or failed; the message holds its command and output."""


class KernelUnavailableError(RuntimeError):
    """`backward="kernel"` was asked for on a platform where the kernel cannot be built or loaded."""


# --------------------------------------------------------------------------------------------
# Locating sources, compilers and the cache


def kernel_source_dir() -> Path:
    """Directory of the kernel sources: $ZEROHSI_JAX_KERNEL_SRC, else the repository's `kernels/`
    (editable installs and source checkouts), else `<prefix>/share/zerohsi_jax/kernels` (wheels
    that ship the sources as data files)."""
    override = os.environ.get("ZEROHSI_JAX_KERNEL_SRC")
    if override:
        return Path(override)
    candidates = [
        Path(__file__).resolve().parents[2] / "kernels",
        Path(sys.prefix) / "share" / "zerohsi_jax" / "kernels",
        Path(site.USER_BASE or "~").expanduser() / "share" / "zerohsi_jax" / "kernels",  # pip --user
    ]
    for candidate in candidates:
        if (candidate / _SOURCES["cpu"][0]).is_file():
            return candidate
    raise KernelBuildError(
        "the kernel sources were not found (looked in " + ", ".join(str(c) for c in candidates) + "); "
        "set ZEROHSI_JAX_KERNEL_SRC to the directory holding composite_backward_cpu.cc"
    )


def cache_dir() -> Path:
    """The `kernels` folder of the package's cache root (`zerohsi_jax.cache`)."""
    from ..cache import cache_dir as package_cache_dir

    return package_cache_dir("kernels")


def _find_program(env_vars: list[str], defaults: list[str], what: str) -> str:
    """Absolute path of a compiler. An explicitly configured one that is missing is an error
    rather than a reason to try another: the user asked for it."""
    for var in env_vars:
        value = os.environ.get(var)
        if value:
            found = shutil.which(shlex.split(value)[0])
            if found is None:
                raise KernelBuildError(f"{what} {value!r} (from ${var}) was not found")
            return found
    for name in defaults:
        found = shutil.which(name)
        if found:
            return found
    raise KernelBuildError(f"no {what} found (tried {', '.join(defaults)}; set ${env_vars[0]})")


def _cxx() -> str:
    return _find_program(["ZEROHSI_JAX_CXX", "CXX"], ["g++", "c++", "clang++"], "C++ compiler")


def _nvcc() -> str:
    defaults = ["nvcc"]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        defaults.append(str(Path(cuda_home) / "bin" / "nvcc"))
    defaults.append("/usr/local/cuda/bin/nvcc")
    return _find_program(["ZEROHSI_JAX_NVCC"], defaults, "CUDA compiler (nvcc)")


def _cpu_features() -> str:
    """The instruction set extensions -march=native compiles for (Linux: /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return host_platform.processor() or host_platform.machine()


def _cuda_arch() -> str:
    """$ZEROHSI_JAX_CUDA_ARCH, else sm_XY of the first CUDA device JAX sees."""
    override = os.environ.get("ZEROHSI_JAX_CUDA_ARCH")
    if override:
        return override
    if not _has_cuda():
        raise KernelBuildError("no CUDA device is visible to JAX (set ZEROHSI_JAX_CUDA_ARCH to build anyway)")
    capability = getattr(jax.devices("cuda")[0], "compute_capability", None)
    if not capability:
        raise KernelBuildError("could not read the compute capability of the CUDA device")
    major, minor = str(capability).split(".")[:2]
    return f"sm_{major}{minor}"


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    platform: str
    command: list[str]
    """Compiler command line, without the output file."""
    library: Path
    """Where the built library is cached."""


def build_plan(platform: str = "cpu", source_dir: Path | None = None) -> BuildPlan:
    """The compile command and cache path for `platform` ('cpu' or 'cuda'). Raises
    `KernelBuildError` when there is no compiler or no source."""
    if platform not in _SOURCES:
        raise ValueError(f"platform must be 'cpu' or 'cuda', got {platform!r}")
    source_dir = Path(source_dir) if source_dir is not None else kernel_source_dir()
    main, headers = _SOURCES[platform]
    include = jax.ffi.include_dir()
    if platform == "cpu":
        compiler = _cxx()
        extra = shlex.split(os.environ.get("ZEROHSI_JAX_CXXFLAGS", ""))
        flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", *extra]
        machine = _cpu_features()
    else:
        compiler = _nvcc()
        arch = _cuda_arch()
        flags = ["-O3", f"-arch={arch}", "-std=c++17", "-shared", "-Xcompiler", "-fPIC"]
        # nvcc compiles the host code with the system C++ compiler: it is part of the build too.
        host = _cxx()
        host_stat = os.stat(host)
        machine = f"{arch}|{host}|{host_stat.st_size}|{host_stat.st_mtime_ns}"
    command = [compiler, *flags, "-isystem", include, "-I", str(source_dir), str(source_dir / main)]

    digest = hashlib.sha256()
    for name in (main, *headers):
        if not (source_dir / name).is_file():
            raise KernelBuildError(f"kernel source {source_dir / name} is missing")
    # Every header beside the sources, not only the listed ones: a header newly included
    # changes the build too.
    for name in sorted({main, *headers, *(p.name for p in source_dir.glob("*.h"))}):
        digest.update(name.encode() + b"\0" + (source_dir / name).read_bytes() + b"\0")
    stat = os.stat(compiler)
    for part in (
        platform,
        jaxlib.__version__,
        compiler,
        str(stat.st_size),
        str(stat.st_mtime_ns),
        *flags,
        machine,
    ):
        digest.update(part.encode() + b"\0")
    library = cache_dir() / f"composite_backward_{platform}_{digest.hexdigest()[:20]}.so"
    return BuildPlan(platform, command, library)


def build_kernel(platform: str = "cpu", *, force: bool = False, source_dir: Path | None = None) -> Path:
    """Compile the kernel for `platform` into the cache (a cache hit compiles nothing) and
    return the library's path. Raises `KernelBuildError` with the compiler's output."""
    plan = build_plan(platform, source_dir)
    if plan.library.is_file() and not force:
        return plan.library
    plan.library.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a private name and rename: concurrent builds (test workers, several
    # processes) never load a half-written library.
    fd, tmp = tempfile.mkstemp(prefix=plan.library.stem + ".", suffix=".tmp", dir=plan.library.parent)
    os.close(fd)
    try:
        try:
            proc = subprocess.run(
                [*plan.command, "-o", tmp], capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelBuildError(f"{shlex.join(plan.command)}\n{err}") from err
        if proc.returncode != 0:
            raise KernelBuildError(
                f"{shlex.join(plan.command)} exited with status {proc.returncode}:\n"
                f"{(proc.stderr or '') + (proc.stdout or '')}".rstrip()
            )
        os.replace(tmp, plan.library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return plan.library


# --------------------------------------------------------------------------------------------
# Loading and registering, once per process and platform


@dataclasses.dataclass
class _LoadState:
    available: bool
    reason: str = ""
    library: Path | None = None
    handle: ctypes.CDLL | None = None  # kept alive: XLA calls into it
    warned: bool = False


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
                return _LoadState(
                    False, f"{library} cannot run on this GPU: {message.value.decode()}", library
                )
        capsule = jax.ffi.pycapsule(getattr(handle, _SYMBOLS[platform]))
        jax.ffi.register_ffi_target(TARGET_NAME, capsule, platform=_FFI_PLATFORMS[platform])
    except Exception as err:  # a stale or foreign library in the cache, a jaxlib without FFI
        return _LoadState(False, f"loading {library} failed: {type(err).__name__}: {err}", library)
    return _LoadState(True, "", library, handle)


def kernel_status(platform: str = "cpu") -> str:
    """'available', 'not tried' or why it is unavailable."""
    state = _loaded.get(platform)
    if state is None:
        return "not tried"
    return "available" if state.available else state.reason


@functools.cache
def _has_cuda() -> bool:
    try:
        return len(jax.devices("cuda")) > 0
    except RuntimeError:
        return False


def _warn_fallback(platform: str) -> None:
    state = _loaded[platform]
    if state.warned:
        return
    state.warned = True
    warnings.warn(
        f"zerohsi_jax: the compiled compositing backward is unavailable on {platform}, so the "
        f"pure-JAX backward is used there (the same gradients up to rounding, slower). Set "
        f"RasterConfig(backward='jax') to silence this. Reason: {state.reason}",
        RuntimeWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------------------------
# Calling it


def _num_threads() -> int:
    value = os.environ.get("ZEROHSI_JAX_KERNEL_THREADS", "0")
    try:
        return max(0, int(value))
    except ValueError:
        raise ValueError(f"ZEROHSI_JAX_KERNEL_THREADS must be an integer, got {value!r}") from None


def kernel_composite_backward(
    means2d,
    conics,
    opacities,
    features,
    background,
    ids,
    counts,
    pix,
    final_trans,
    stop,
    grad_out,
    cfg: RasterConfig,
):
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


def composite_backward_compiled(
    means2d,
    conics,
    opacities,
    features,
    background,
    ids,
    counts,
    pix,
    final_trans,
    stop,
    grad_out,
    cfg: RasterConfig,
):
    """The backward `RasterConfig.backward` = 'auto' or 'kernel' selects: the kernel on each
    platform where it is built, the pure-JAX `composite_backward` on the others. The choice is
    made when XLA lowers for a platform, so one traced function serves CPU and GPU."""
    from .composite import composite_backward

    args = (means2d, conics, opacities, features, background, ids, counts, pix, final_trans, stop, grad_out)
    platforms = ["cpu"] + (["cuda"] if _has_cuda() else [])
    built = {p: load_kernel(p) for p in platforms}
    if cfg.backward == "kernel":
        wanted = "cuda" if jax.default_backend() == "gpu" else "cpu"
        if not built.get(wanted, False):
            raise KernelUnavailableError(
                f"RasterConfig(backward='kernel') but the kernel is unavailable on {wanted}: "
                f"{kernel_status(wanted)}. Use backward='auto' to fall back to the pure-JAX backward."
            )
    else:
        for p in platforms:
            if not built[p]:
                _warn_fallback(p)

    def with_kernel(*a):
        return kernel_composite_backward(*a, cfg)

    def with_jax(*a):
        return composite_backward(*a, cfg)

    branches = {p: with_kernel for p in platforms if built[p]}
    if not branches:
        return with_jax(*args)
    return jax.lax.platform_dependent(*args, **branches, default=with_jax)


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m zerohsi_jax.splat.kernel_backward")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="compile the kernel into the cache now")
    build.add_argument("--platform", choices=["cpu", "cuda", "all"], default="all")
    build.add_argument("--force", action="store_true", help="recompile even on a cache hit")
    sub.add_parser("status", help="print what would be built and whether it is cached")
    args = parser.parse_args(argv)

    platforms = ["cpu"] + (["cuda"] if _has_cuda() else [])
    if args.command == "build" and args.platform != "all":
        platforms = [args.platform]
    status = 0
    for p in platforms:
        try:
            if args.command == "build":
                print(f"{p}: built {build_kernel(p, force=args.force)}")
            else:
                plan = build_plan(p)
                print(f"{p}: {'cached' if plan.library.is_file() else 'not built'} {plan.library}")
                print(f"    {shlex.join(plan.command)}")
        except KernelBuildError as err:
            print(f"{p}: unavailable: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
