"""Building the compiled compositing kernels: find the sources and compilers, key the cache, compile.

The sources live in `kernels/` (one header of per-pixel arithmetic, one of the FFI signature, the
threaded CPU drivers of the backward and the forward, and the backward's CUDA kernel). They are
compiled on first use into the `kernels` folder of the package's cache root (`zerohsi_jax.cache`),
keyed on everything that changes the binary: the sources and every header beside them, the jaxlib
version (whose FFI headers they include), the compiler, the flags and, since the CPU build uses
-march=native, the CPU's instruction set extensions (for CUDA: the GPU architecture and the host
compiler nvcc drives).

Loading and calling the built library is `kernel_backward`'s; this module knows nothing of XLA
beyond the location of its FFI headers.

Environment:
    ZEROHSI_JAX_CXX             C++ compiler (default $CXX, else g++, c++ or clang++ on PATH)
    ZEROHSI_JAX_NVCC            CUDA compiler (default nvcc on PATH, else $CUDA_HOME/bin/nvcc)
    ZEROHSI_JAX_CUDA_ARCH       GPU architecture to compile for (default: that of the first GPU)
    ZEROHSI_JAX_CXXFLAGS        extra flags of the C++ compiler
    ZEROHSI_JAX_KERNEL_SRC      directory holding the kernel sources (default: found next to the
                                package, see `kernel_source_dir`)

Build ahead of time (at install, in a container image) with
    python -m zerohsi_jax.splat.kernel_build build
(`python -m zerohsi_jax.splat.kernel_backward build` runs the same command).
"""

from __future__ import annotations

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
from pathlib import Path

import jax
import jaxlib

from ..cache import cache_dir as package_cache_dir
from ..files import atomic_write

# Per platform: the translation units compiled into its one library, and the headers they include.
# The CPU library holds the compositing forward too (a CUDA forward is XLA's own loop).
_SOURCES = {
    "cpu": (["composite_backward_cpu.cc", "composite_forward_cpu.cc"],
            ["composite_backward.h", "composite_backward_ffi.h", "composite_cpu.h"]),
    "cuda": (["composite_backward_cuda.cu"], ["composite_backward.h", "composite_backward_ffi.h"]),
}
_BUILD_TIMEOUT_S = 600


class KernelBuildError(RuntimeError):
    """The compiler is missing or failed; the message holds its command and output."""


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
        if (candidate / _SOURCES["cpu"][0][0]).is_file():
            return candidate
    raise KernelBuildError(
        "the kernel sources were not found (looked in " + ", ".join(str(c) for c in candidates) + "); "
        "set ZEROHSI_JAX_KERNEL_SRC to the directory holding composite_backward_cpu.cc"
    )


def cache_dir() -> Path:
    """The `kernels` folder of the package's cache root (`zerohsi_jax.cache`)."""
    return package_cache_dir("kernels")


@functools.cache
def has_cuda() -> bool:
    """Whether JAX sees a CUDA device (the CUDA kernel is only built and registered then)."""
    try:
        return len(jax.devices("cuda")) > 0
    except RuntimeError:
        return False


def kernel_platforms() -> list[str]:
    """The platforms a kernel is built for in this process: the CPU, and CUDA where JAX sees it."""
    return ["cpu"] + (["cuda"] if has_cuda() else [])


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
    if not has_cuda():
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
    units, headers = _SOURCES[platform]
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
    command = [compiler, *flags, "-isystem", include, "-I", str(source_dir), *(str(source_dir / u) for u in units)]

    digest = hashlib.sha256()
    for name in (*units, *headers):
        if not (source_dir / name).is_file():
            raise KernelBuildError(f"kernel source {source_dir / name} is missing")
    # Every header beside the sources, not only the listed ones: a header newly included
    # changes the build too.
    for name in sorted({*units, *headers, *(p.name for p in source_dir.glob("*.h"))}):
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

    def compile_to(tmp: str) -> None:
        try:
            proc = subprocess.run([*plan.command, "-o", tmp], capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelBuildError(f"{shlex.join(plan.command)}\n{err}") from err
        if proc.returncode != 0:
            raise KernelBuildError(
                f"{shlex.join(plan.command)} exited with status {proc.returncode}:\n"
                f"{(proc.stderr or '') + (proc.stdout or '')}".rstrip()
            )

    # Concurrent builds (test workers, several processes) never load a half-written library.
    return atomic_write(plan.library, compile_to)


def main(argv: list[str], prog: str = "python -m zerohsi_jax.splat.kernel_build") -> int:
    """`build` compiles the kernels into the cache now; `status` prints what would be built."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="compile the kernel into the cache now")
    build.add_argument("--platform", choices=["cpu", "cuda", "all"], default="all")
    build.add_argument("--force", action="store_true", help="recompile even on a cache hit")
    sub.add_parser("status", help="print what would be built and whether it is cached")
    args = parser.parse_args(argv)

    platforms = kernel_platforms()
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
    sys.exit(main(sys.argv[1:]))
