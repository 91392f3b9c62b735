"""INRIA 3DGS .ply reading and writing."""

import re

import numpy as np
import pytest
from plyfile import PlyData, PlyElement
from splat_scenes import random_scene

from zerohsi_jax.splat import PlyFormatError, load_ply, save_ply


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(degree, seed, tmp_path):
    g = random_scene(np.random.default_rng(seed), 57, sh_degree=degree)
    path = tmp_path / "g.ply"
    save_ply(path, g)
    back = load_ply(path)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(g, name)))
    props = [p.name for p in PlyData.read(str(path))["vertex"].properties]
    rest = 3 * ((degree + 1) ** 2 - 1)
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(rest)] + ["opacity"]
    expected += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    assert props == expected


def test_f_rest_is_channel_major(tmp_path):
    """f_rest[c * 15 + k - 1] holds coefficient k of channel c (the INRIA layout)."""
    g = random_scene(np.random.default_rng(0), 4, sh_degree=3)
    path = tmp_path / "g.ply"
    save_ply(path, g)
    v = PlyData.read(str(path))["vertex"]
    sh = np.asarray(g.sh)
    for c in range(3):
        for k in range(1, 16):
            np.testing.assert_array_equal(np.asarray(v[f"f_rest_{c * 15 + k - 1}"]), sh[:, k, c])


def _write(path, props, n=3, values=None):
    data = np.zeros(n, dtype=[(p, "f4") for p in props])
    for p in props:
        data[p] = 0.1 if values is None else values.get(p, 0.1)
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


BASE = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [
    f"rot_{i}" for i in range(4)
]


def _undercounted(path, declared, text=False):
    """A valid 5-Gaussian file whose header claims only `declared` vertices."""
    good = path.with_name("full_" + path.name)
    save_ply(good, random_scene(np.random.default_rng(0), 5))
    if text:
        # Written beside the binary file: plyfile memory-maps what it reads.
        ply = PlyData.read(str(good))
        ply.text = True
        good = good.with_name("text_" + good.name)
        ply.write(str(good))
    path.write_bytes(good.read_bytes().replace(b"element vertex 5", f"element vertex {declared}".encode(), 1))


def _no_vertex(path):
    data = np.zeros(3, dtype=[("x", "f4")])
    PlyData([PlyElement.describe(data, "face_points")]).write(str(path))


def _renumbered_rest(path):
    _write(path, BASE + [f"f_rest_{i}" for i in range(1, 10)])


# name: (writes the file at `path`, the error, pattern naming the problem and its fix)
BAD_FILES = {
    "missing": (lambda p: None, FileNotFoundError, r"no such Gaussian \.ply file"),
    "directory": (lambda p: (p.mkdir(), save_ply(p / "point_cloud.ply", random_scene(np.random.default_rng(0), 3))),
                  PlyFormatError, r"is a directory, not a \.ply file; give the path of the Gaussian \.ply file "
                                  r"\(it holds point_cloud\.ply\)"),
    "junk": (lambda p: p.write_text("this is not a ply file"), PlyFormatError, r"not a readable PLY file"),
    "no_vertex_element": (_no_vertex, PlyFormatError, r"no 'vertex' element \(found \['face_points'\]\)"),
    "no_opacity": (lambda p: _write(p, [q for q in BASE if q != "opacity"]), PlyFormatError,
                   r"missing vertex properties \['opacity'\]; a 3DGS file needs"),
    "ten_f_rest": (lambda p: _write(p, BASE + [f"f_rest_{i}" for i in range(10)]), PlyFormatError,
                   r"10 f_rest properties; SH degree 0-3 needs 0, 9, 24 or 45"),
    "f_rest_from_1": (_renumbered_rest, PlyFormatError, r"f_rest properties are not numbered 0\.\.8"),
    "no_gaussians": (lambda p: _write(p, BASE, n=0), PlyFormatError, r"the file holds no Gaussians"),
    "nan_means": (lambda p: _write(p, BASE, values={"x": np.nan}), PlyFormatError,
                  r"3 Gaussians have non-finite means"),
    "zero_rotation": (lambda p: _write(p, BASE, values={f"rot_{i}": 0.0 for i in range(4)}), PlyFormatError,
                      r"zero quaternion \(rot_0\.\.3 all 0\)"),
    "undercount_binary": (lambda p: _undercounted(p, 3), PlyFormatError,
                          r"the header declares 3 vertices \('element vertex 3'\) but the file holds 2 more after "
                          r"them, which would be dropped; correct the count in the header \(to 5"),
    "undercount_ascii": (lambda p: _undercounted(p, 1, text=True), PlyFormatError,
                         r"declares 1 vertices .* holds 4 more after them.*\(to 5 if they are Gaussians\)"),
    "overcount_binary": (lambda p: _undercounted(p, 9), PlyFormatError, r"not a readable PLY file .*early end-of-file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_file_is_an_error_naming_file_and_problem(case, tmp_path):
    write, error, pattern = BAD_FILES[case]
    path = tmp_path / f"{case}.ply"
    write(path)
    with pytest.raises(error) as err:
        load_ply(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


@pytest.mark.parametrize("text", [False, True])
def test_a_file_ending_where_its_header_says_loads(text, tmp_path):
    """The trailing-row check counts exactly: a correct binary or ASCII file (with a trailing
    blank line in ASCII) loads every Gaussian."""
    path = tmp_path / "g.ply"
    _undercounted(path, 5, text=text)
    if text:
        path.write_bytes(path.read_bytes() + b"\n")
    assert load_ply(path).num == 5


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    g = random_scene(np.random.default_rng(0), 5)
    path = tmp_path / "out.ply"

    def broken_write(self, stream):
        with open(stream, "wb") as f:
            f.write(b"ply\nformat binary_little_endian 1.0\n")  # a header and nothing more
        raise OSError("disk full")

    monkeypatch.setattr(PlyData, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_ply(path, g)
    assert list(tmp_path.iterdir()) == []
