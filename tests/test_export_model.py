"""`fer-tune export-model`: ONNX Runtime gives PyTorch's logits (<= 1e-4) for every registered family, the
seed ensemble is one graph, the batch is dynamic, and the metadata is enough to feed the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_models import EXTREMES
from test_predict import save_untrained

import fer_tune
from fer_tune.cli import main
from fer_tune.inference import export_model
from fer_tune.inference import load as load_predictor
from fer_tune.inference.model_export import STACK_TRACE, TORCHSCRIPT_META, onnx_parity
from fer_tune.models import list_models
from fer_tune.training import Ensemble
from fer_tune.training.ensemble import load

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def nodes(proto) -> list:
    """Every node of an ONNX model: its graph's, its functions' and those of subgraphs (If, Loop, Scan)."""
    found, graphs = [], [proto.graph, *proto.functions]
    while graphs:
        for node in graphs.pop().node:
            found.append(node)
            graphs += [a.g for a in node.attribute if a.HasField("g")] + [
                g for a in node.attribute for g in a.graphs
            ]
    return found


def family_config(arch: str) -> dict:
    """The family's smallest structure (test_models.EXTREMES), trained on 44-px crops (a center crop)."""
    model = {"arch": arch, **EXTREMES[arch]["small"]}
    if arch == "attention":
        model["pool"] = "cls"  # the class token's path is the one that once fixed the batch size
    return {"model": model, "augment": {"crop": 44}, "seed": 1}


@pytest.mark.parametrize("arch", list_models())
def test_onnx_runtime_matches_pytorch(arch, tmp_path, one_thread, monkeypatch):
    run = save_untrained(family_config(arch), tmp_path / "run")
    out = export_model(run, tmp_path / "m.onnx", check=False)
    proto = onnx.load(out)  # the exporter's stack traces named this machine's files: dropped from each node
    assert not [p for n in nodes(proto) for p in n.metadata_props if p.key == STACK_TRACE]
    model, meta = load(run, device="cpu")
    assert onnx_parity(out, model, 44, n=7) <= 1e-4  # a batch of 7: the export's example had 2
    # Through the predictors: uint8 faces -> normalise, crop -> logits -> probabilities, flip TTA too; in
    # fp32 (on a CPU with AMX or AVX512-BF16, PyTorch predicts under bf16 autocast, which ONNX Runtime's fp32
    # graph is not).
    monkeypatch.setattr("fer_tune.training.device.cpu_has_native_bf16", lambda: False)
    faces = np.random.default_rng(0).integers(0, 256, (9, 48, 48), dtype=np.uint8)
    torch_pred, onnx_pred = load_predictor(run, device="cpu"), load_predictor(out)
    for tta in ("none", "flip"):
        assert np.abs(onnx_pred.predict(faces, tta) - torch_pred.predict(faces, tta)).max() <= 1e-4
    assert onnx_pred.classes == torch_pred.classes


def test_seed_ensemble_is_one_graph_with_metadata(tmp_path, capsys):
    for seed in (0, 1):
        save_untrained({**family_config("cnn"), "seed": seed}, tmp_path / "final" / f"seed_{seed}")
    assert main(["export-model", str(tmp_path / "final"), "-o", str(tmp_path / "ens.onnx")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'ens.onnx'}"
    proto = onnx.load(tmp_path / "ens.onnx")
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == [
        "logits"
    ]
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # symbolic: any batch size
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert (
        props["classes"][3] == "happy"
        and props["input_size"] == 44
        and props["members"] == ["seed_0", "seed_1"]
    )
    assert props["mean"] == pytest.approx(129.48) and props["config"]["augment"]["crop"] == 44
    # The exporter's per-node Python stack traces named this machine's paths (the checkout, the venv).
    assert str(Path(fer_tune.__file__).parent).encode() not in (tmp_path / "ens.onnx").read_bytes()
    assert not [p for n in nodes(proto) for p in n.metadata_props if p.key == STACK_TRACE]
    assert any(n.metadata_props for n in nodes(proto))  # the rest of the node metadata stays
    model, _ = load(tmp_path / "final", device="cpu")
    assert isinstance(model, Ensemble)
    assert onnx_parity(tmp_path / "ens.onnx", model, 44, n=3) <= 1e-4


def test_torchscript_keeps_metadata_and_dynamic_batch(tmp_path, one_thread):
    run = save_untrained(family_config("attention"), tmp_path / "run")
    out = export_model(run, tmp_path / "m.pt", "torchscript")
    extra = {TORCHSCRIPT_META: ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    meta = {k: json.loads(v) for k, v in json.loads(extra[TORCHSCRIPT_META]).items()}
    assert meta["input_size"] == 44 and meta["arch"] == "attention"
    model, _ = load(run, device="cpu")
    x = torch.randn(5, 1, 44, 44)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export-model", str(tmp_path / "missing"), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny CNN trained 4 epochs on synthetic faces it can learn, and that data's CSV."""
    import yaml
    from conftest import make_fer

    from fer_tune.data import save_csv

    root = tmp_path_factory.mktemp("int8")
    csv = save_csv(make_fer({"Training": 40, "PublicTest": 10}, seed=5), root / "fer2013.csv")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_TRAIN))
    argv = ["train", str(config), "--data", str(csv), "--out", str(root / "run"), "--device", "cpu"]
    assert main(argv) == 0
    return root / "run", csv


TINY_TRAIN = {
    "model": {"arch": "cnn", "kernels": [8, 16], "head_width": 0},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.01, "warmup_epochs": 0.0},
    "augment": {"crop": 44, "rotation": 0.0},
    "seed": 0,
}


def test_int8_export_is_quantized_and_agrees(trained, tmp_path, capsys, one_thread):
    run, csv = trained
    out = tmp_path / "m8.onnx"
    argv = ["export-model", str(run), "-o", str(out), "--quantize", "int8", "--data", str(csv)]
    assert main([*argv, "--calibration", "64"]) == 0
    assert "int8: the float model's answer on" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m8.onnx"]  # no intermediate file left behind
    proto = onnx.load(out)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # int8 weights and activations around convs
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["quantized"] == "int8" and props["int8_agreement"] >= 0.95 and props["input_size"] == 44
    # predict reads it like any export, and answers as the float model does on faces it never calibrated on
    from conftest import make_fer

    faces = make_fer({"PublicTest": 10}, seed=9).images
    float_pred, int8_pred = load_predictor(run, device="cpu"), load_predictor(out)
    same = (float_pred.predict(faces).argmax(1) == int8_pred.predict(faces).argmax(1)).mean()
    assert same >= 0.95, same


def test_int8_export_refuses_what_disagrees_and_bad_flags(trained, tmp_path, capsys, monkeypatch):
    run, csv = trained
    out = tmp_path / "m8.onnx"
    monkeypatch.setattr("fer_tune.inference.model_export.MIN_AGREEMENT", 1.01)  # nothing can agree this much
    argv = ["export-model", str(run), "-o", str(out), "--quantize", "int8", "--calibration", "16"]
    assert main([*argv, "--data", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not written" in err and str(out) in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its intermediates
    assert main(argv) == 2 and "needs --data" in capsys.readouterr().err
    assert main([*argv, "--data", str(csv), "--format", "torchscript"]) == 2
    assert "ONNX only" in capsys.readouterr().err
