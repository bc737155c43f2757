"""fer_tune.base.storage on S3: moto's S3 server in this process (a thread), reached the way a cluster reaches
a real store (pyarrow's S3 with `AWS_ENDPOINT_URL` and keys from the environment). Seconds, no Ray; the
two-node search that writes a real search folder to S3 is in test_cluster.py (`long`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fer_tune.base import DataError, OutputError, storage

BUCKET = "fer-results"


@pytest.fixture(scope="module")
def moto_endpoint() -> str:
    """moto's S3 on 127.0.0.1 at a free port (the OS picks it), one bucket; its URL."""
    server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    moto = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint
    moto.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The environment pyarrow's S3 reads (as every node of a cluster needs it), a private FER_TUNE_CACHE
    (where mirrors go), and a boto3 client for what Ray would write to the store itself."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FER_TUNE_CACHE": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def keys(client, prefix: str) -> set[str]:
    """The objects under `prefix/` (not the empty `prefix/` marker pyarrow leaves for a folder)."""
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1 :] for o in listed if not o["Key"].endswith("/")}


# What fer-tune writes into a search folder (pushed), and what Ray writes there (left to Ray).
OWN = {
    "fer_tune.json": b'{"name": "x", "finished": true}\n',
    "space.yaml": b"model: {arch: cnn}\n",
    "optuna.db": os.urandom(3000),  # binary, not only text
    "trials.csv": b"trial_id,best_val_acc\nt1,0.5\n",
    "report/index.md": b"# x\n",
    "phase2/space.yaml": b"model: {arch: vgg}\n",
}
RAYS = {
    "experiment_state-2026.json": b"{}",
    "trial_t1/result.json": b'{"epoch": 1}\n',
    ".hidden": b"not fer-tune's",
}


def test_uri_names_and_joins() -> None:
    assert storage.is_uri("s3://bucket/x") and storage.is_uri("gs://b/x")
    assert not storage.is_uri("file:///tmp/x") and not storage.is_uri("results/x")
    assert not storage.is_uri(Path("/tmp/x"))
    assert storage.join("s3://bucket/x/", "trial_1", "result.json") == "s3://bucket/x/trial_1/result.json"
    with pytest.raises(OutputError, match=r"^nope://x: cannot open: "):
        storage.filesystem("nope://x")


def test_push_then_pull_round_trip_on_s3(s3, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/x"
    fs, path = storage.filesystem(uri)
    assert type(fs).__name__ == "S3FileSystem" and path == f"{BUCKET}/x"
    assert storage.check_writable_uri(uri, "--results") == uri
    assert keys(s3, "x") == set()  # the probe object was deleted
    with pytest.raises(OutputError, match=r"^--results s3://no-such-bucket/x: cannot write there: "):
        storage.check_writable_uri("s3://no-such-bucket/x", "--results")

    local = tmp_path / "local"
    for name, data in {**OWN, **RAYS}.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    storage.push(local, uri)
    assert keys(s3, "x") == set(OWN)  # fer-tune's own files only: Ray writes its own to the store
    # What Ray writes there itself: a trial's results, and its checkpoints (never downloaded).
    s3.put_object(Bucket=BUCKET, Key="x/trial_t1/result.json", Body=RAYS["trial_t1/result.json"])
    s3.put_object(Bucket=BUCKET, Key="x/trial_t1/checkpoint_000001/checkpoint.pt", Body=b"weights")

    back = storage.pull(uri, tmp_path / "back")
    pulled = {p.relative_to(back).as_posix(): p.read_bytes() for p in back.rglob("*") if p.is_file()}
    assert pulled == {**OWN, "trial_t1/result.json": RAYS["trial_t1/result.json"]}

    # A file newer here than in the store (a driver killed before its last upload) is kept.
    (back / "optuna.db").write_bytes(b"newer")
    storage.pull(uri, back)
    assert (back / "optuna.db").read_bytes() == b"newer"

    # The mirror: under FER_TUNE_CACHE, one per URI, filled by local_folder.
    mirror = storage.mirror_of(uri + "/")
    assert mirror == storage.mirror_of(uri) and mirror.name == "x"
    assert mirror.is_relative_to(Path(os.environ["FER_TUNE_CACHE"]) / "searches")
    assert storage.local_folder(uri) == mirror and (mirror / "optuna.db").read_bytes() == OWN["optuna.db"]
    assert storage.local_folder(tmp_path / "local") == tmp_path / "local"

    with pytest.raises(DataError, match=rf"^s3://{BUCKET}/empty: no fer_tune.json; not a fer-tune search"):
        storage.pull(f"s3://{BUCKET}/empty", tmp_path / "empty")
