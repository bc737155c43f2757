"""Build and unpack the "device kit": what fer-tune needs on a lent GPU machine with no network and no Ray.

The GPU image has Python 3.12, torch, numpy, pandas, pyarrow and most of Ray's dependencies, but no Ray,
no Optuna and nothing can be installed there from a registry. The kit (in the git-ignored `.kit/`, carried
to the machine with the working tree, whole transfer under 64 MiB) holds:

- `ray-<ver>-<tag>-trimmed.tar.xz`: the Ray wheel's site-packages tree (package + dist-info) without what a
  local Ray Tune run never imports (`ray/jars`, `ray/rllib`, `ray/serve`, `ray/llm`, the dashboard's
  web client), unpacked as-is into a target folder (no pip, so no RECORD-hash checks);
- `wheels/*.whl`: the dependencies of `ray[tune]` and `optuna` that the image lacks, one version each;
- `fallback/*.whl`: image packages installed only if the image's copy is too old for a kit package;
- `fer2013.nl<N>.npz`: FER2013 (Training + PublicTest) coded with a MED (LOCO-I) predictor, residuals
  quantised to step 2N+1 (max pixel error N; N=0 is lossless) and xz-compressed; decoded and checked
  against a SHA-256 of the images;
- `MANIFEST.txt`: every file, its size and version, and the total (build fails above 60 MiB).

Commands:

    python benchmarks/device_kit.py build [--data ../shared/datasets/fer2013] [--out .kit]   # here, online
    python3 benchmarks/device_kit.py unpack [--kit .kit] [--target /tmp/site] [--data-out /tmp/fer2013.csv]
    export PYTHONPATH=/tmp/site:$PWD                                                       # on the device

`build --python-version 3.11` makes a kit for this machine's Python, to test the trimming here.

Size: the kit is 55 MiB; the repository's tracked files were 94 MiB on 2026-12-03: 76 MiB of them the
committed models (`model.pt` and `.onnx` under `results/*/final` and `results/cpu-amx/distilled`), 16 MiB the
rest of `results/`, 1.6 MiB everything else. A device call carries 64 MiB in all, so without the models the
tree and the kit are still 72 MiB. No device stage reads `results/` (`gpu_session.sh` writes and reads
`/tmp/results`; the `cpu` space's warm start is optional): move the whole folder out of the checkout for the
call (`mv results ../results-aside`, about 57 MiB then travel) and back afterwards; `gpu_session.sh`'s
`RETRAIN_CONFIG=results/...` example then needs that config copied under `.kit/` first.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script on the device, where fer_tune is not installed
    sys.path.insert(0, str(REPO))

RAY_VERSION = "2.60.0"
OPTUNA_VERSION = "5.0.0"
ROOTS = (f"ray[tune]=={RAY_VERSION}", f"optuna=={OPTUNA_VERSION}")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
MIB = 1 << 20
KIT_LIMIT = 60 * MIB
MARGIN = 2 * MIB  # kept free below KIT_LIMIT when choosing the data codec
# Parts of the Ray wheel a local Ray Tune run does not import (checked by running a search without them).
# ray/data must stay: ray/air/__init__.py imports it, and ray.tune imports ray.air.
RAY_EXCLUDE = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/")
# Image packages that a kit package may need newer than the image has: shipped, installed only if so.
FALLBACK = ("typing-extensions",)

# Python packages the GPU image already has (from its `pip list`); normalised names.
_IMAGE_LIST = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
    build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
    cupy-cuda13x cycler cython einops filelock flatbuffers fonttools frozenlist fsspec grpcio h11 h5py
    httpcore httpx huggingface-hub idna imageio iniconfig jax jinja2 joblib kiwisolver lightning
    markdown markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath msgpack multidict networkx
    ninja numba numpy onnx onnxruntime opencv-python-headless packaging pandas pathspec patsy pillow pip
    pluggy prometheus-client propcache protobuf psutil pyarrow pybind11 pygments pyparsing pytest
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich safetensors
    scikit-image scikit-learn scipy seaborn setuptools six sortedcontainers statsmodels sympy tabulate
    tensorboard threadpoolctl tifffile timm tqdm typing-extensions urllib3 wheel wrapt xarray yarl zipp
    torch torchvision triton
"""
IMAGE_PACKAGES = frozenset(_IMAGE_LIST.split())
IMAGE_PREFIXES = ("cuda-", "nvidia-")


def norm(name: str) -> str:
    """PEP 503 normalised project name."""
    return name.lower().replace("_", "-").replace(".", "-")


def on_image(name: str) -> bool:
    """Whether the GPU image already has this project."""
    n = norm(name)
    return n in IMAGE_PACKAGES or n.startswith(IMAGE_PREFIXES)


# --------------------------------------------------------------------------------------------- data codec

SIDE = 48


def _codec(values: np.ndarray, near: int, encode: bool) -> tuple[np.ndarray, np.ndarray]:
    """MED-predictive near-lossless coder, vectorised over images, sequential over pixels.

    values: (48, 48, n) int16, pixels when encoding, residual codes when decoding.
    Returns (codes, reconstructed pixels), both (48, 48, n). Encoder and decoder share this loop, so they
    predict from the same reconstructed neighbours. near=0: codes are (x - p) mod 256, exactly invertible.
    """
    n = values.shape[2]
    step = 2 * near + 1
    rec = np.zeros((SIDE + 1, SIDE + 1, n), np.int16)  # one row and column of padding above/left
    codes = np.empty_like(values) if encode else values
    mid = np.full(n, 128, np.int16)
    for y in range(SIDE):
        for x in range(SIDE):
            a, b, c = rec[y + 1, x], rec[y, x + 1], rec[y, x]  # left, above, above-left
            if y == 0:
                p = mid if x == 0 else a
            elif x == 0:
                p = b
            else:
                hi, lo = np.maximum(a, b), np.minimum(a, b)
                p = np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))
            if encode:
                e = values[y, x] - p
                q = (e + 128) % 256 - 128 if near == 0 else np.sign(e) * ((np.abs(e) + near) // step)
                codes[y, x] = q
            else:
                q = codes[y, x]
            rec[y + 1, x + 1] = (p + q) % 256 if near == 0 else np.clip(p + q * step, 0, 255)
    return codes, rec[1:, 1:]


def encode_images(images: np.ndarray, near: int) -> tuple[bytes, np.ndarray]:
    """xz bytes of the zigzagged residual codes (image-major), and the images the decoder will rebuild."""
    codes, rec = _codec(np.ascontiguousarray(images.transpose(1, 2, 0), np.int16), near, encode=True)
    zig = np.where(codes >= 0, 2 * codes, -2 * codes - 1).astype(np.uint8).transpose(2, 0, 1)
    blob = lzma.compress(np.ascontiguousarray(zig).tobytes(), preset=9)
    return blob, rec.transpose(2, 0, 1).astype(np.uint8)


def decode_images(blob: bytes, n: int, near: int) -> np.ndarray:
    """Inverse of `encode_images`: (n, 48, 48) uint8."""
    zig = np.frombuffer(lzma.decompress(blob), np.uint8).reshape(n, SIDE, SIDE).transpose(1, 2, 0)
    z = zig.astype(np.int16)
    codes = (z >> 1) ^ -(z & 1)
    _, rec = _codec(np.ascontiguousarray(codes), near, encode=False)
    return np.ascontiguousarray(rec.transpose(2, 0, 1)).astype(np.uint8)


def _mosaic(images: np.ndarray, cols: int = 64) -> np.ndarray:
    """Tiles of 48x48 (6x6 JPEG blocks, so no block spans two images) in rows of `cols`."""
    rows = -(-len(images) // cols)
    pad = np.zeros((rows * cols, SIDE, SIDE), np.uint8)
    pad[: len(images)] = images
    return pad.reshape(rows, cols, SIDE, SIDE).transpose(0, 2, 1, 3).reshape(rows * SIDE, cols * SIDE)


def _unmosaic(mosaic: np.ndarray, n: int, cols: int = 64) -> np.ndarray:
    rows = mosaic.shape[0] // SIDE
    return mosaic.reshape(rows, SIDE, cols, SIDE).transpose(0, 2, 1, 3).reshape(-1, SIDE, SIDE)[:n]


def try_codecs(images: np.ndarray, full_bytes: int) -> dict[str, tuple[float, float, int]]:
    """Size of each candidate format on `images` (a subset), scaled to the full data set, with its errors.

    Returns {name: (ratio to raw, mean abs error, max error)}; near-lossless entries are keyed `nl<N>`.
    """
    from PIL import Image

    raw = images.tobytes()
    out: dict[str, tuple[float, float, int]] = {}

    def note(name: str, size: int, decoded: np.ndarray | None, secs: float) -> None:
        err = np.abs(decoded.astype(np.int16) - images) if decoded is not None else np.zeros(1, np.int16)
        out[name.split(":")[0]] = (size / len(raw), float(err.mean()), int(err.max()))
        print(
            f"  {name:34s} {size:>10,} B  x{size / len(raw):.3f}"
            f"  full ~{size / len(raw) * full_bytes / 1e6:5.1f} MB"
            f"  MAE {err.mean():.3f} max {err.max():3d}  ({secs:.1f}s)",
            flush=True,
        )

    t = time.time()
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images)
    note("np.savez_compressed (lossless)", len(buf.getvalue()), None, time.time() - t)
    for dist in (0, 1, SIDE):
        t = time.time()
        filters: list[dict[str, Any]] = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
        if dist:
            filters.insert(0, {"id": lzma.FILTER_DELTA, "dist": dist})
        size = len(lzma.compress(raw, format=lzma.FORMAT_XZ, filters=filters))
        note(f"xz -9e raw{f' delta={dist}' if dist else ''} (lossless)", size, None, time.time() - t)
    mosaic = Image.fromarray(_mosaic(images), "L")
    formats: list[tuple[str, dict[str, Any]]] = [
        ("PNG mosaic optimize (lossless)", {"format": "PNG", "optimize": True}),
        ("WebP mosaic lossless m4", {"format": "WEBP", "lossless": True, "quality": 100, "method": 4}),
        ("JPEG q95 mosaic", {"format": "JPEG", "quality": 95}),
        (
            "JPEG q95 mosaic optimize+progr.",
            {"format": "JPEG", "quality": 95, "optimize": True, "progressive": True},
        ),
        (
            "JPEG q90 mosaic optimize+progr.",
            {"format": "JPEG", "quality": 90, "optimize": True, "progressive": True},
        ),
        ("WebP q95 mosaic m6", {"format": "WEBP", "quality": 95, "method": 6}),
    ]
    for name, kw in formats:
        t = time.time()
        buf = io.BytesIO()
        mosaic.save(buf, **kw)
        dec = _unmosaic(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")), len(images))
        note(name, len(buf.getvalue()), dec, time.time() - t)
    for near in range(4):
        t = time.time()
        blob, rec = encode_images(images, near)
        note(f"nl{near}: MED near-lossless N={near} + xz", len(blob), rec, time.time() - t)
    return out


def build_data(data: Path, out: Path, budget: int, near: int | None) -> list[tuple[Path, str]]:
    """Code FER2013 from `data` into `out`: lossless if it fits `budget` bytes, else least loss that does."""
    from fer_tune.data import USAGES, load_fer2013

    ds = load_fer2013(data)
    n = len(ds)
    print(f"data: {n:,} images from {ds.source}, splits {ds.splits}, raw {ds.images.nbytes:,} B")
    if near is None:
        sub = ds.images[np.random.default_rng(0).choice(n, min(n, 1024), replace=False)]
        print(
            f"data: candidate formats on a random subset of {len(sub)} images (budget {budget / 1e6:.1f} MB):"
        )
        ratios = try_codecs(sub, ds.images.nbytes)
        fits = [k for k in range(4) if ratios[f"nl{k}"][0] * ds.images.nbytes * 1.03 <= budget]
        near = fits[0] if fits else 3
    while True:
        t = time.time()
        blob, rec = encode_images(ds.images, near)
        err = np.abs(rec.astype(np.int16) - ds.images)
        print(
            f"data: full set, N={near}: {len(blob):,} B, MAE {err.mean():.4f}, max {err.max()}"
            f" ({time.time() - t:.0f}s)"
        )
        if len(blob) <= budget or near >= 3:
            break
        near += 1
    t = time.time()
    assert np.array_equal(decode_images(blob, n, near), rec), "decoder does not rebuild the encoder's images"
    print(f"data: decode check ok ({time.time() - t:.1f}s)")
    for old in out.glob("fer2013.nl*.npz"):
        old.unlink()
    path = out / f"fer2013.nl{near}.npz"
    np.savez(
        path,
        residuals=np.frombuffer(blob, np.uint8),
        labels=ds.labels.astype(np.uint8),
        usage=_usage_codes(ds.usage, USAGES),
        near=np.int64(near),
        sha256=np.array(hashlib.sha256(rec.tobytes()).hexdigest()),
        original_sha256=np.array(hashlib.sha256(ds.images.tobytes()).hexdigest()),
        mae=np.float64(err.mean()),
        max_error=np.int64(err.max()),
    )
    what = "lossless" if near == 0 else f"near-lossless, max error {near}, MAE {err.mean():.3f}"
    return [(path, f"FER2013 {n:,} images ({', '.join(ds.splits)}), MED+xz, {what}")]


def _usage_codes(usage: np.ndarray, usages: tuple[str, ...]) -> np.ndarray:
    codes = np.full(len(usage), 255, np.uint8)
    for i, u in enumerate(usages):
        codes[usage == u] = i
    assert (codes != 255).all()
    return codes


def load_kit_data(kit: Path) -> Any:
    """Decode the kit's FER2013 file into a `fer_tune.data.fer2013.FER2013`, checked against its SHA-256."""
    from fer_tune.data import FER2013, USAGES

    files = sorted(kit.glob("fer2013.nl*.npz"))
    if len(files) != 1:
        raise SystemExit(f"{kit}: expected one fer2013.nl<N>.npz, found {[f.name for f in files]}")
    with np.load(files[0]) as z:
        near, labels, usage = int(z["near"]), z["labels"], z["usage"]
        images = decode_images(z["residuals"].tobytes(), len(labels), near)
        want = str(z["sha256"])
    if hashlib.sha256(images.tobytes()).hexdigest() != want:
        raise SystemExit(f"{files[0]}: decoded images do not match the SHA-256 recorded at build time")
    return FER2013(images, labels.astype(np.int64), np.asarray(USAGES)[usage], str(files[0]))


# --------------------------------------------------------------------------------------------- Ray, wheels


def pip_flags(python_version: str) -> list[str]:
    """pip options that select binary wheels for CPython `python_version` on manylinux x86-64."""
    flags = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for p in PLATFORMS:
        flags += ["--platform", p]
    return flags


def pip(*args: str) -> None:
    """Run pip quietly (-qq: its config's missing find-links folders would warn for every project)."""
    subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-qq"], check=True)


def resolve(python_version: str, work: Path) -> list[dict[str, Any]]:
    """pip's resolution of ROOTS for the target Python and platform (a dry run: metadata only)."""
    report = work / "report.json"
    pip(
        "install",
        "--dry-run",
        "--ignore-installed",
        "--report",
        str(report),
        "--target",
        str(work / "none"),
        *pip_flags(python_version),
        *ROOTS,
    )
    return json.loads(report.read_text())["install"]


def missing_closure(items: list[dict[str, Any]], python_version: str) -> tuple[list[dict], list[str]]:
    """The resolved projects reachable from ROOTS without passing through one the image has.

    Returns (items to ship, requirements that shipped projects put on image projects).
    """
    from packaging.requirements import Requirement

    env = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    by_name = {norm(i["metadata"]["name"]): i for i in items}
    todo = [(norm(Requirement(r).name), set(Requirement(r).extras)) for r in ROOTS]
    seen: dict[str, set[str]] = {}
    on_img: list[str] = []
    while todo:
        name, extras = todo.pop()
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        for spec in by_name[name]["metadata"].get("requires_dist", []):
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in seen[name] | {""}):
                continue
            if on_image(req.name):
                if req.specifier:
                    on_img.append(f"{norm(req.name)}{req.specifier}  # {name}")
            else:
                todo.append((norm(req.name), set(req.extras)))
    return [by_name[n] for n in sorted(seen)], sorted(set(on_img))


def trim_ray(wheel: Path, dest: Path) -> tuple[int, int, int]:
    """Repack the Ray wheel as .tar.xz, without RAY_EXCLUDE; returns (files, bytes kept, bytes dropped)."""
    kept = dropped = files = 0
    with zipfile.ZipFile(wheel) as zf, tarfile.open(dest, "w:xz", preset=9) as tar:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename
            if name.startswith(RAY_EXCLUDE):
                dropped += info.file_size
                continue
            data = zf.read(info)
            if name.endswith(".dist-info/RECORD"):  # list only what is shipped
                data = b"".join(
                    line
                    for line in data.splitlines(keepends=True)
                    if not line.decode().startswith(RAY_EXCLUDE)
                )
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 0
            ti.mode = (info.external_attr >> 16) & 0o777 or 0o644
            tar.addfile(ti, io.BytesIO(data))
            kept += len(data)
            files += 1
    return files, kept, dropped


def build_packages(out: Path, python_version: str, reuse: bool) -> tuple[list[tuple[Path, str]], list[str]]:
    """Trimmed Ray, missing wheels and fallback wheels into `out`; returns (files, image requirements)."""
    tag = "cp" + python_version.replace(".", "")
    tarball = out / f"ray-{RAY_VERSION}-{tag}-trimmed.tar.xz"
    wheels, fallback = out / "wheels", out / "fallback"
    with tempfile.TemporaryDirectory(prefix="device-kit-") as tmp:
        work = Path(tmp)
        t = time.time()
        items = resolve(python_version, work)
        ship, image_reqs = missing_closure(items, python_version)
        names = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in ship]
        print(
            f"deps: resolved {len(items)} projects for cp{python_version}; not on the image: "
            + ", ".join(names)
        )
        print(f"deps: requirements on image packages: {'; '.join(image_reqs)} ({time.time() - t:.0f}s)")
        others = [n for n in names if not n.startswith("ray==")]
        extra = [
            f"{i['metadata']['name']}=={i['metadata']['version']}"
            for i in items
            if norm(i["metadata"]["name"]) in FALLBACK
        ]
        files: list[tuple[Path, str]] = []
        if not (reuse and tarball.exists()):
            pip(
                "download",
                "--no-deps",
                *pip_flags(python_version),
                "-d",
                str(work / "ray"),
                f"ray=={RAY_VERSION}",
            )
            (wheel,) = (work / "ray").glob("ray-*.whl")
            t = time.time()
            n, kept, dropped = trim_ray(wheel, tarball.with_suffix(".tmp"))
            tarball.with_suffix(".tmp").replace(tarball)
            print(
                f"ray: {wheel.name} {wheel.stat().st_size / 1e6:.1f} MB -> {tarball.name} "
                f"{tarball.stat().st_size / 1e6:.1f} MB ({n} files, {kept / 1e6:.0f} MB unpacked, "
                f"dropped {dropped / 1e6:.0f} MB: {' '.join(RAY_EXCLUDE)}; {time.time() - t:.0f}s)"
            )
        files.append(
            (tarball, f"ray {RAY_VERSION} {tag} site-packages tree, without {' '.join(RAY_EXCLUDE)}")
        )
        for folder, pins, what in ((wheels, others, "missing dependency"), (fallback, extra, "fallback")):
            have = {p.name for p in folder.glob("*.whl")} if folder.exists() else set()
            if not (reuse and have):
                for old in folder.glob("*.whl"):
                    old.unlink()
                pip("download", "--no-deps", *pip_flags(python_version), "-d", str(folder), *pins)
            got = sorted(folder.glob("*.whl"))
            if len(got) != len(pins):
                raise SystemExit(f"{folder}: {len(got)} wheels for {len(pins)} pins {pins}")
            files += [(w, what) for w in got]
    (out / "image-requirements.txt").write_text("\n".join(image_reqs) + "\n")
    files.append((out / "image-requirements.txt", "what kit packages need from the image; checked by unpack"))
    return files, image_reqs


def write_manifest(out: Path, files: list[tuple[Path, str]], header: str) -> int:
    """Write MANIFEST.txt (file, size, what) and return the kit's total size; fail above KIT_LIMIT."""
    lines = [header, ""]
    for path, what in files:
        lines.append(f"{path.stat().st_size:>12,}  {path.relative_to(out)}  {what}")
    manifest = out / "MANIFEST.txt"
    body = "\n".join(lines) + "\n"
    total = sum(p.stat().st_size for p, _ in files) + len(body) + 60  # + the total line
    body += f"{total:>12,}  total ({total / MIB:.2f} MiB; limit {KIT_LIMIT / MIB:.0f} MiB)\n"
    manifest.write_text(body)
    print(body, end="")
    if total > KIT_LIMIT:
        raise SystemExit(f"kit is {total / MIB:.2f} MiB, over the {KIT_LIMIT / MIB:.0f} MiB limit")
    return total


def cmd_build(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    files, _ = build_packages(out, args.python_version, args.reuse)
    used = sum(p.stat().st_size for p, _ in files)
    budget = KIT_LIMIT - MARGIN - used
    files += build_data(Path(args.data), out, budget, args.near)
    header = (
        f"fer-tune device kit: ray[tune]=={RAY_VERSION}, optuna=={OPTUNA_VERSION}, cp{args.python_version} "
        f"manylinux x86-64; built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"unpack: python3 benchmarks/device_kit.py unpack --kit {args.out} --target /tmp/site "
        "--data-out /tmp/fer2013.csv && export PYTHONPATH=/tmp/site:$PWD"
    )
    write_manifest(out, files, header)
    print(f"build: {time.time() - t0:.0f}s")


# --------------------------------------------------------------------------------------------- unpack


def check_image_requirements(kit: Path, target: Path) -> None:
    """Check image packages against what kit packages need; install a fallback wheel where one is too old."""
    from importlib import metadata

    from packaging.requirements import Requirement

    path = kit / "image-requirements.txt"
    reqs = [Requirement(line.split("#")[0]) for line in path.read_text().splitlines() if line.strip()]
    for req in reqs:
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            have = None
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        wheels = [w for w in (kit / "fallback").glob("*.whl") if norm(w.name.split("-")[0]) == norm(req.name)]
        if wheels:
            print(f"unpack: image has {req.name} {have}, need {req.specifier}: installing {wheels[0].name}")
            pip_target(target, wheels[:1])
        else:
            print(f"unpack: WARNING: image has {req.name} {have}, a kit package needs {req}", file=sys.stderr)


def pip_target(target: Path, wheels: list[Path]) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--upgrade",
            "--disable-pip-version-check",
            "--target",
            str(target),
            *map(str, wheels),
        ],
        check=True,
    )


def cmd_unpack(args: argparse.Namespace) -> None:
    kit, target = Path(args.kit).resolve(), Path(args.target)
    target.mkdir(parents=True, exist_ok=True)
    t0 = t = time.time()
    (tarball,) = kit.glob(f"ray-{RAY_VERSION}-*-trimmed.tar.xz")
    with tarfile.open(tarball) as tar:
        tar.extractall(target, filter="data")
    print(f"unpack: {tarball.name} -> {target} ({time.time() - t:.1f}s)")
    t = time.time()
    wheels = sorted((kit / "wheels").glob("*.whl"))
    pip_target(target, wheels)
    print(f"unpack: {len(wheels)} wheels -> {target} ({time.time() - t:.1f}s)")
    check_image_requirements(kit, target)
    if args.data_out:
        from fer_tune.data import save_csv

        t = time.time()
        ds = load_kit_data(kit)
        save_csv(ds, args.data_out, layout="fer2013")
        print(
            f"unpack: {len(ds):,} images ({', '.join(ds.splits)}) -> {args.data_out} ({time.time() - t:.1f}s)"
        )
    print(f"unpack: done in {time.time() - t0:.1f}s; now run:\n  export PYTHONPATH={target}:{REPO}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the kit (here, online)")
    b.add_argument("--data", default=str(REPO / ".." / "shared" / "datasets" / "fer2013"))
    b.add_argument("--out", default=".kit")
    b.add_argument("--python-version", default="3.12", help="the device's Python (3.11: a kit to test here)")
    b.add_argument("--near", type=int, choices=range(4), help="max pixel error; default: least that fits")
    b.add_argument("--reuse", action="store_true", help="keep the Ray tarball and wheels already in --out")
    u = sub.add_parser("unpack", help="install the kit into --target and write the data CSV (on the device)")
    u.add_argument("--kit", default=".kit")
    u.add_argument("--target", default="/tmp/site")
    u.add_argument("--data-out", default="/tmp/fer2013.csv", help="'' to skip the data")
    args = ap.parse_args(argv)
    cmd_build(args) if args.cmd == "build" else cmd_unpack(args)


if __name__ == "__main__":
    main()
