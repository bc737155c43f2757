"""FER2013 loading: every format to the same arrays, clear errors naming file and row, the parse cache."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_fer
from PIL import Image

from fer_tune.base import DataError
from fer_tune.cli import main
from fer_tune.data import EMOTIONS, FER2013, cache_dir, describe, load_fer2013, save_csv, save_image_folder


@pytest.fixture(scope="module")
def small() -> FER2013:
    """3 Training, 2 PublicTest, 1 PrivateTest image per class (42 in all)."""
    return make_fer({"Training": 3, "PublicTest": 2, "PrivateTest": 1}, seed=1)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own cache, so one test's cache cannot hide another's parse."""
    monkeypatch.setenv("FER_TUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def same(a: FER2013, b: FER2013) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.usage, b.usage)
    assert a.images.dtype == np.uint8 and a.images.shape[1:] == (48, 48) and a.labels.dtype == np.int64


def in_tree_order(ds: FER2013) -> FER2013:
    """`ds` in the order load_fer2013 reads the tree save_image_folder wrote: split, class, file name."""
    split_dir = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    pairs = enumerate(zip(ds.usage, ds.labels, strict=True))
    keys = [(split_dir[u], EMOTIONS[c], f"{u}_{i}.png") for i, (u, c) in pairs]
    order = sorted(range(len(ds)), key=keys.__getitem__)
    return FER2013(ds.images[order], ds.labels[order], ds.usage[order])


# ------------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("layout", ["fer2013", "icml"])
def test_kaggle_csvs_load_to_the_same_arrays(small: FER2013, tmp_path: Path, layout: str) -> None:
    path = save_csv(small, tmp_path / f"{layout}.csv", layout=layout)
    header = path.read_text().splitlines()[0]
    assert header == {"fer2013": "emotion,pixels,Usage", "icml": "emotion, Usage, pixels"}[layout]
    same(load_fer2013(path), small)


def test_train_csv_is_all_training(small: FER2013, tmp_path: Path) -> None:
    train = small.split("Training")
    path = save_csv(train, tmp_path / "train.csv", layout="train")
    assert path.read_text().splitlines()[0] == "emotion,pixels"
    ds = load_fer2013(path)
    same(ds, train)
    assert ds.splits == ["Training"]
    with pytest.raises(DataError, match="Training rows only"):
        save_csv(small, tmp_path / "all.csv", layout="train")


def test_csv_variants_quotes_crlf_blank_lines(small: FER2013, tmp_path: Path) -> None:
    text = save_csv(small, tmp_path / "a.csv").read_text()
    lines = text.splitlines()
    quoted = [lines[0]] + [f'{e},"{p}",{u}' for e, p, u in (line.split(",") for line in lines[1:])]
    path = tmp_path / "b.csv"
    path.write_bytes(("\r\n".join(quoted) + "\r\n\r\n").encode())
    same(load_fer2013(path), small)


def test_image_tree_png_identical_and_jpg_close(small: FER2013, tmp_path: Path) -> None:
    save_image_folder(small, tmp_path / "png")
    png = load_fer2013(tmp_path / "png")
    same(png, in_tree_order(small))
    save_image_folder(small, tmp_path / "jpg", ext="jpg")
    jpg = load_fer2013(tmp_path / "jpg")
    np.testing.assert_array_equal(jpg.labels, png.labels)
    np.testing.assert_array_equal(jpg.usage, png.usage)
    err = np.abs(jpg.images.astype(int) - png.images.astype(int)).mean()
    assert 0 < err < 20  # lossy, but the same pictures (noise images are JPEG's worst case)


def test_single_split_folder_and_torchvision_layout(small: FER2013, tmp_path: Path) -> None:
    save_image_folder(small, tmp_path / "tree")
    ds = load_fer2013(tmp_path / "tree" / "val")  # <split>/<class>/*.png
    same(ds, in_tree_order(small.split("PublicTest")))
    save_csv(small, tmp_path / "root" / "fer2013" / "icml_face_data.csv", layout="icml")
    ds = load_fer2013(tmp_path / "root")  # torchvision's root: root/fer2013/<csv>
    assert ds.source.endswith("icml_face_data.csv")
    same(ds, small)


def test_folder_with_csv_and_images_prefers_fer2013_csv(small: FER2013, tmp_path: Path) -> None:
    save_image_folder(small.split("Training"), tmp_path)
    save_csv(small.split("Training"), tmp_path / "train.csv", layout="train")
    save_csv(small, tmp_path / "icml_face_data.csv", layout="icml")
    save_csv(small, tmp_path / "fer2013.csv")
    ds = load_fer2013(tmp_path)
    assert Path(ds.source) == (tmp_path / "fer2013.csv").resolve()
    same(ds, small)


def test_colour_and_upscaled_images_converted_with_one_warning(
    small: FER2013, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = small.split("Training")
    save_image_folder(train, tmp_path)
    for i, f in enumerate(sorted(tmp_path.rglob("*.png"))):
        gray = np.asarray(Image.open(f))
        big = gray.repeat(2, axis=0).repeat(2, axis=1)  # 96x96, nearest-neighbour upscale
        rgb = np.stack([big] * 3, axis=-1) if i % 2 else big
        Image.fromarray(rgb).save(f.with_suffix(".jpeg" if i == 0 else ".png"), quality=100)
        if i == 0:
            f.unlink()
    with caplog.at_level(logging.WARNING, logger="fer_tune.data.fer2013"):
        ds = load_fer2013(tmp_path, cache=False)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"{tmp_path}: converted 21 of 21 images to 48x48 grayscale"]
    expected = in_tree_order(train)
    np.testing.assert_array_equal(ds.images[1:], expected.images[1:])  # PNG: area-average undoes the upscale
    assert np.abs(ds.images[0].astype(int) - expected.images[0]).mean() < 8  # the JPEG one


def test_usage_from_split_folder_when_no_prefix(small: FER2013, tmp_path: Path) -> None:
    save_image_folder(small, tmp_path)
    for f in tmp_path.rglob("*.png"):
        f.rename(f.with_name(f.name.split("_", 1)[1]))  # Training_3.png -> 3.png
    (tmp_path / "val").rename(tmp_path / "validation")
    ds = load_fer2013(tmp_path)
    assert sorted(ds.usage.tolist()) == sorted(small.usage.tolist())
    assert set(ds.usage[ds.labels == 0]) == {"Training", "PublicTest", "PrivateTest"}


def test_prefix_wins_over_split_folder(small: FER2013, tmp_path: Path) -> None:
    save_image_folder(small.split("PublicTest"), tmp_path)
    (tmp_path / "val").rename(tmp_path / "test")  # as in the shared copy: test/ holds PublicTest_ files
    assert load_fer2013(tmp_path).splits == ["PublicTest"]


# ------------------------------------------------------------------------------------------------- bad input

ROW = ",".join(["3", " ".join(["7"] * 2304), "Training"])


def _rows(*rows: str, header: str = "emotion,pixels,Usage") -> str:
    return "\n".join([header, ROW, *rows, ROW]) + "\n"


BAD_CSVS = {
    "short_row": (_rows("3," + " ".join(["7"] * 2303) + ",Training"), "line 3: 2303 pixel values, expected"),
    "long_row": (_rows("3," + " ".join(["7"] * 2305) + ",Training"), "line 3: 2305 pixel values, expected"),
    "pixel_256": (_rows(ROW.replace(" 7 ", " 256 ", 1)), "line 3: pixel value 256 is not an integer 0..255"),
    "pixel_neg": (_rows(ROW.replace(" 7 ", " -1 ", 1)), "line 3: pixel value '-1' is not an integer 0..255"),
    "pixel_float": (_rows(ROW.replace(" 7 ", " 7.5 ", 1)), "line 3: pixel value '7.5' is not an integer"),
    "pixel_4digits": (_rows(ROW.replace(" 7 ", " 1007 ", 1)), "line 3: a pixel value has more than 3 digits"),
    "emotion": (_rows(ROW.replace("3", "7", 1)), "line 3: emotion '7' is not 0..6"),
    "usage": (_rows(ROW.replace("Training", "Validation")), "line 3: Usage 'Validation' is not one of"),
    "fields": (_rows("3," + " ".join(["7"] * 2304)), "line 3: 2 fields, expected 3"),
    "extra_field": (_rows(ROW + ",x"), "line 3: more than 3 fields"),
    "no_pixels_column": ("emotion,Usage\n3,Training\n", "line 1: no 'pixels' column"),
    "no_header": (ROW + "\n", "line 1: no 'pixels' column"),
    "test_csv": ("pixels\n" + " ".join(["7"] * 2304) + "\n", "no 'emotion' column, so no labels"),
    "empty": ("", "empty file"),
    "header_only": ("emotion,pixels,Usage\n", "no data rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_names_file_and_line(case: str, tmp_path: Path) -> None:
    text, message = BAD_CSVS[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        load_fer2013(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value), str(e.value)


def test_bad_row_in_a_large_file_is_located(small: FER2013, tmp_path: Path) -> None:
    big = FER2013(*(np.concatenate([x] * 30) for x in (small.images, small.labels, small.usage)))  # 1260 rows
    lines = save_csv(big, tmp_path / "a.csv").read_text().splitlines()
    lines[1000] = lines[1000].replace(" ", "  x ", 1)
    (tmp_path / "a.csv").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"a\.csv line 1001: pixel value 'x' is not an integer 0\.\.255"):
        load_fer2013(tmp_path / "a.csv")


def test_bad_image_trees(small: FER2013, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_fer2013(tmp_path / "missing")
    (tmp_path / "fer2013.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match=r"fer2013\.tar\.gz: an archive; unpack it"):
        load_fer2013(tmp_path / "fer2013.tar.gz")
    (tmp_path / "empty" / "train" / "happy").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no FER2013 data found"):
        load_fer2013(tmp_path / "empty")
    (tmp_path / "tc").mkdir()
    (tmp_path / "tc" / "test.csv").write_text("pixels\n")
    with pytest.raises(DataError, match=r"test\.csv: Kaggle's test\.csv has no labels"):
        load_fer2013(tmp_path / "tc")

    save_image_folder(small.split("Training"), tmp_path / "t")
    broken = tmp_path / "t" / "train" / "sad" / "Training_99.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"{broken}: cannot decode image"):
        load_fer2013(tmp_path / "t")
    broken.unlink()
    (tmp_path / "t" / "train" / "contempt").mkdir()
    with pytest.raises(DataError, match=r"contempt: folder name is not a class"):
        load_fer2013(tmp_path / "t")
    (tmp_path / "t" / "train" / "contempt").rmdir()
    (tmp_path / "t" / "train").rename(tmp_path / "t" / "extra")
    first = sorted((tmp_path / "t" / "extra" / "angry").iterdir())[0]
    first.rename(first.with_name("x.png"))
    with pytest.raises(DataError, match=r"angry/x\.png: cannot tell its Usage"):
        load_fer2013(tmp_path / "t")


def test_cli_data_prints_table(small: FER2013, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = save_csv(small, tmp_path / "fer2013.csv")
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "42 images" in out and "cache: " in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    assert rows["Training"] == ["3"] * 7 + ["21"]
    assert rows["PrivateTest"] == ["1"] * 7 + ["7"]
    assert rows["total"] == ["6"] * 7 + ["42"]


def test_cli_data_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "fer2013.csv"
    path.write_text(_rows("9" + ROW[1:]))
    assert main(["data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"fer-tune: error: {path} line 3: emotion '9' is not 0..6\n"


def test_cli_data_error_subprocess(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fer_tune.cli", "data", str(tmp_path / "nope.csv")],
        capture_output=True,
        text=True,
        env={**os.environ, "FER_TUNE_CACHE": str(tmp_path / "c")},
    )
    assert r.returncode == 2
    assert r.stderr == f"fer-tune: error: {tmp_path / 'nope.csv'}: no such file or folder\n"


# ------------------------------------------------------------------------------------------------- cache


def test_cache_hit_and_invalidation(small: FER2013, tmp_path: Path, _own_cache: Path) -> None:
    assert cache_dir() == _own_cache
    path = save_csv(small, tmp_path / "fer2013.csv")
    same(load_fer2013(path), small)
    files = list(_own_cache.glob("*.npz"))
    assert len(files) == 1 and not list(_own_cache.glob(".*"))  # no temporary left behind
    same(load_fer2013(path), small)  # from the cache
    assert str(files[0]) in describe(load_fer2013(path))

    other = make_fer({"Training": 1, "PublicTest": 1}, seed=2)
    save_csv(other, path)
    os.utime(path, ns=(10**18, 10**18))  # a new mtime even on coarse-clock file systems
    same(load_fer2013(path), other)
    assert len(list(_own_cache.glob("*.npz"))) == 2

    tree = save_image_folder(small, tmp_path / "tree")
    same(load_fer2013(tree), in_tree_order(small))
    victim = sorted(tree.rglob("*.png"))[0]
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(victim)
    assert any((img == 0).all() for img in load_fer2013(tree).images)


def test_corrupt_cache_file_is_reparsed(small: FER2013, tmp_path: Path, _own_cache: Path) -> None:
    path = save_csv(small, tmp_path / "fer2013.csv")
    load_fer2013(path)
    (cache_file,) = _own_cache.glob("*.npz")
    cache_file.write_bytes(b"garbage")
    same(load_fer2013(path), small)


def test_unwritable_cache_still_loads(small: FER2013, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FER_TUNE_CACHE", str(tmp_path / "file" / "cache"))  # cannot be created, even as root
    path = save_csv(small, tmp_path / "fer2013.csv")
    same(load_fer2013(path), small)
    same(load_fer2013(path), small)
    assert "cache: " in describe(load_fer2013(path, cache=False))


# ------------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_shared_copy_counts(shared_fer: Path) -> None:
    ds = load_fer2013(shared_fer)
    assert len(ds) == 28_707 + 3_589 and ds.splits == ["Training", "PublicTest"]
    counts = {u: np.bincount(ds.split(u).labels, minlength=7).tolist() for u in ds.splits}
    assert counts == {
        "Training": [3995, 436, 4097, 7214, 4830, 3170, 4965],
        "PublicTest": [467, 56, 496, 895, 653, 415, 607],
    }
    assert ds.images.shape == (32_296, 48, 48) and 60 < ds.images.mean() < 200
