"""Camera files: every field checked, each bad one an error naming the file, the field and the fix."""

import json
import math
import re

import numpy as np
import pytest
from splat_scenes import random_camera

from zerohsi_jax.splat import Camera, CameraFileError

ROT = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # a proper rotation (det +1)


def _pose(rot, t=(0.1, -0.2, 0.3)) -> list:
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = t
    return m.tolist()


GOOD = {"width": 64, "height": 48, "viewmat": _pose(ROT), "fx": 50.0, "fy": 52.0}
LOOK = {"width": 64, "height": 48, "eye": [0.0, 0.0, 0.0], "target": [0.0, 0.0, 1.0], "fov_y_deg": 50}


def _with(base, **changes):
    d = dict(base)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def _set(matrix, i, j, value=float("nan")):
    m = np.array(matrix)
    m[i, j] = value
    return m.tolist()


# name: (file contents, pattern naming the field and the problem, pattern of the fix)
BAD_CAMERAS = {
    "nan_in_viewmat": (_with(GOOD, viewmat=_set(GOOD["viewmat"], 0, 3)),
                       r"'viewmat' holds a non-finite value \(nan at index \[0, 3\]\)", r"must be a finite number"),
    "inf_in_camtoworld": (_with(GOOD, viewmat=None, camtoworld=_set(_pose(ROT), 1, 1, float("inf"))),
                          r"'camtoworld' holds a non-finite value \(inf at index \[1, 1\]\)",
                          r"must be a finite number"),
    "nan_in_eye": (_with(LOOK, eye=[float("nan"), 0, 0]), r"'eye' holds a non-finite value", r"finite number"),
    "eye_equals_target": (_with(LOOK, target=[0.0, 0.0, 0.0]), r"'eye' and 'target' are the same point",
                          r"'target' is a point the camera looks at, away from 'eye'"),
    "up_along_view": (_with(LOOK, up=[0.0, 0.0, 2.0]), r"'up' \[0.0, 0.0, 2.0\] is parallel to the viewing direction",
                      r"give an 'up' across the view"),
    "zero_up": (_with(LOOK, up=[0, 0, 0]), r"'up' is the zero vector", r"give the world direction that is up"),
    "zero_fx": (_with(GOOD, fx=0.0), r"'fx' is 0;", r"a focal length is a positive number of pixels"),
    "negative_fy": (_with(GOOD, fy=-52.0), r"'fy' is -52;", r"a flipped image axis belongs in the pose"),
    "nan_fx": (_with(GOOD, fx=float("nan")), r"'fx' is nan;", r"expected a finite number"),
    "fx_without_fy": (_with(GOOD, fy=None), r"'fx' is given without 'fy'", r"give both focal lengths"),
    "fx_as_text": (_with(GOOD, fx="50"), r"'fx' is '50';", r"expected a number"),
    "fov_0": (_with(LOOK, fov_y_deg=0), r"'fov_y_deg' is 0;", r"strictly between 0 and 180 degrees"),
    "fov_180": (_with(LOOK, fov_y_deg=180), r"'fov_y_deg' is 180;", r"strictly between 0 and 180 degrees"),
    "scaled_rotation": (_with(GOOD, viewmat=_pose(2.0 * ROT)),
                        r"rotation block of 'viewmat' \(upper-left 3x3\) is not a rotation: it is scaled by 2",
                        r"divide the upper-left 3x3 block by that factor"),
    "sheared_rotation": (_with(GOOD, viewmat=_pose(ROT @ np.array([[1.0, 0.3, 0], [0, 1, 0], [0, 0, 1]]))),
                         r"'viewmat' .* is not a rotation: it is sheared or unevenly scaled",
                         r"orthonormalise the upper-left 3x3 block"),
    "mirrored_viewmat": (_with(GOOD, viewmat=_pose(ROT @ np.diag([1.0, 1.0, -1.0]))),
                         r"rotation block of 'viewmat' .* has determinant -1: it mirrors the scene",
                         r"OpenGL to OpenCV: flip y and z"),
    "mirrored_camtoworld": (_with(GOOD, viewmat=None, camtoworld=_pose(np.diag([-1.0, 1.0, 1.0]))),
                            r"rotation block of 'camtoworld' .* has determinant -1", r"needs a second axis flipped"),
    "projective_bottom_row": (_with(GOOD, viewmat=_pose(ROT)[:3] + [[0.0, 0.0, 1.0, 1.0]]),
                              r"'viewmat' must end in the row \[0, 0, 0, 1\]", r"a camera pose is a rigid transform"),
    "viewmat_3x4": (_with(GOOD, viewmat=_pose(ROT)[:3]), r"'viewmat' must be a 4x4 matrix, got shape \(3, 4\)",
                    r"4x4 matrix"),
    "viewmat_ragged": (_with(GOOD, viewmat=[[1, 0], [0, 1, 0]]), r"'viewmat' must be a 4x4 matrix of numbers",
                       r"4x4 matrix"),
    "width_fraction": (_with(GOOD, width=64.5), r"'width' is 64.5;", r"a positive whole number of pixels"),
    "height_zero": (_with(GOOD, height=0), r"'height' is 0;", r"a positive whole number of pixels"),
    "near_beyond_far": (_with(GOOD, near=5.0, far=1.0), r"need 0 < 'near' < 'far', got near=5.0, far=1.0",
                        r"distances along the viewing axis"),
    "missing_height": (_with(GOOD, height=None), r"missing key 'height'", r"a camera needs width and height"),
    "target_without_eye": (_with(LOOK, eye=None), r"missing key 'eye'", r"a camera needs 'eye'"),
    "no_pose": (_with(GOOD, viewmat=None), r"give the pose as 'viewmat'", r"'camtoworld' \(its inverse\)"),
    "no_intrinsics": (_with(GOOD, fx=None, fy=None), r"give the intrinsics", r"'fx', 'fy' \(pixels\) or 'fov_y_deg'"),
    "not_an_object": ([1, 2, 3], r"a camera is a JSON object", r'"width": 640'),
    "not_json": ("{width: 64", r"not valid JSON", r"JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_CAMERAS))
def test_bad_camera_file_is_an_error_naming_file_field_and_fix(case, tmp_path):
    contents, problem, fix = BAD_CAMERAS[case]
    path = tmp_path / f"{case}.json"
    path.write_text(contents if isinstance(contents, str) else json.dumps(contents))
    with pytest.raises(CameraFileError) as err:
        Camera.load_json(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    assert re.search(problem, message), f"{problem!r} not in {message!r}"
    assert re.search(fix, message), f"{fix!r} not in {message!r}"
    assert isinstance(err.value, ValueError)  # the command line reports ValueErrors as input errors


def test_camera_paths_that_are_not_files(tmp_path):
    with pytest.raises(CameraFileError, match=re.escape(f"{tmp_path}: is a directory, not a camera .json file")):
        Camera.load_json(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        Camera.load_json(tmp_path / "nope.json")


def test_good_camera_files_load(seed, tmp_path):
    rng = np.random.default_rng(seed)
    # A saved camera (float32 values written as float64) passes the rotation check and loads back.
    cam = random_camera(rng, 40, 30)
    cam.save_json(tmp_path / "saved.json")
    back = Camera.load_json(tmp_path / "saved.json")
    np.testing.assert_array_equal(np.asarray(back.viewmat), np.asarray(cam.viewmat))
    for name in ("fx", "fy", "cx", "cy"):
        assert float(getattr(back, name)) == float(getattr(cam, name))
    # camtoworld is the rigid inverse of viewmat.
    c2w = np.linalg.inv(np.asarray(GOOD["viewmat"]))
    from_c2w = Camera.from_dict(_with(GOOD, viewmat=None, camtoworld=c2w.tolist()))
    np.testing.assert_allclose(np.asarray(from_c2w.viewmat), np.asarray(GOOD["viewmat"]), atol=1e-6)
    # eye/target with a field of view: principal point at the centre, square pixels.
    look = Camera.from_dict(LOOK)
    f = 0.5 * 48 / math.tan(math.radians(25.0))
    assert math.isclose(float(look.fx), f, rel_tol=1e-6) and float(look.cx) == 32.0
    np.testing.assert_allclose(np.asarray(look.position), [0.0, 0.0, 0.0], atol=1e-7)
