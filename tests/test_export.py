"""Export: checkpoint -> ONNX / TorchScript file that matches PyTorch and carries metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image

from seglab.checkpoint import load_run
from seglab.config import compose
from seglab.data import ShapesClassificationDataModule, ShapesDataModule
from seglab.errors import SeglabError
from seglab.export import METADATA_FILE, export, verify
from seglab.predict import predict
from seglab.train import train

# A run of one tiny epoch: enough for a real checkpoint, not for a good model (parity with
# PyTorch does not need one). Like conftest.TINY, without the test split.
TINY_RUN = [
    "data.num_train=8",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=4",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_model_summary=false",
    "trainer.max_epochs=1",
    "logger=none",
    "test=false",
]
SEG_SIZE, CLS_SIZE = 64, 32
# The test's own torch.jit.load calls; the export itself logs the deprecation once.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
# Parity with PyTorch in float32; the exports differ by about 1e-6.
ATOL, RTOL = 1e-4, 1e-3


def _train(output_dir: Path, *overrides: str) -> Path:
    train(compose([*TINY_RUN, *overrides], output_dir=output_dir))
    record = json.loads((output_dir / "metrics.json").read_text())
    path = Path(record["best_model_path"])
    assert path.is_file(), record
    return path


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> Path:
    """A UNet segmentation checkpoint (the default recipe), trained once per module."""
    return _train(tmp_path_factory.mktemp("seg"), f"data.image_size={SEG_SIZE}")


@pytest.fixture(scope="module")
def cls_ckpt(tmp_path_factory) -> Path:
    """A plain-CNN classification checkpoint (experiment=shapes_cnn)."""
    return _train(
        tmp_path_factory.mktemp("cls"), "experiment=shapes_cnn", f"data.image_size={CLS_SIZE}"
    )


def _export_cfg(ckpt: Path, *overrides: str) -> DictConfig:
    return compose([f"ckpt_path={ckpt}", *overrides], config_name="export")


@pytest.fixture(scope="module")
def seg_onnx(seg_ckpt) -> dict:
    """The default export (ONNX, torch.export-based, output next to the checkpoint), once:
    at about 8 s it is the slowest step here."""
    return export(_export_cfg(seg_ckpt))


def _reference(ckpt: Path, images: np.ndarray) -> np.ndarray:
    """The checkpoint's network in PyTorch, rebuilt independently of the export."""
    net = load_run(ckpt).module.net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(images)).numpy()


def _images(*shape: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


def _run_onnx(path: str | Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _onnx_input_dims(path: str | Path) -> list[str | int]:
    (tensor,) = onnx.load(str(path)).graph.input
    return [d.dim_param or d.dim_value for d in tensor.type.tensor_type.shape.dim]


def _onnx_metadata(path: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_onnx_default_export_next_to_checkpoint_with_small_diffs(seg_ckpt, seg_onnx):
    path = Path(seg_onnx["path"])
    assert path == seg_ckpt.with_suffix(".onnx") and path.is_file()
    assert seg_onnx["format"] == "onnx" and seg_onnx["verified"] is True
    # Both check shapes, the second one at a size the export never saw.
    assert set(seg_onnx["max_abs_diff"]) == {"2x3x64x64", "1x3x96x96"}
    assert all(0.0 <= diff < ATOL for diff in seg_onnx["max_abs_diff"].values())
    # One self-contained file: the small net's weights are not written beside it.
    assert not list(path.parent.glob("*.onnx.data"))


def test_onnx_segmentation_matches_pytorch_at_a_new_size(seg_ckpt, seg_onnx):
    """Dynamic batch, height and width: batch 3 of non-square 128x96 images."""
    assert _onnx_input_dims(seg_onnx["path"]) == ["batch", 3, "height", "width"]
    images = _images(3, 3, 128, 96)
    out = _run_onnx(seg_onnx["path"], images)
    assert out.shape == (3, 4, 128, 96)
    np.testing.assert_allclose(out, _reference(seg_ckpt, images), atol=ATOL, rtol=RTOL)


def test_onnx_metadata_round_trip(seg_ckpt, seg_onnx):
    meta = _onnx_metadata(seg_onnx["path"])
    assert json.loads(meta["class_names"]) == load_run(seg_ckpt).class_names
    assert json.loads(meta["class_names"]) == ["background", "ellipse", "rectangle", "triangle"]
    assert meta["task"] == "segmentation"
    assert json.loads(meta["mean"]) == pytest.approx(ShapesDataModule.mean)
    assert json.loads(meta["std"]) == pytest.approx(ShapesDataModule.std)
    assert json.loads(meta["input_size"]) == [SEG_SIZE, SEG_SIZE]
    assert json.loads(meta["temperature"]) == 1.0


def test_torchscript_segmentation_parity_and_metadata(seg_ckpt):
    result = export(_export_cfg(seg_ckpt, "format=torchscript"))
    path = Path(result["path"])
    assert path == seg_ckpt.with_name(seg_ckpt.stem + ".torchscript.pt") and path.is_file()
    assert result["format"] == "torchscript"
    assert all(diff < ATOL for diff in result["max_abs_diff"].values())

    extra = {METADATA_FILE: ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert meta["class_names"] == load_run(seg_ckpt).class_names
    assert meta["task"] == "segmentation"
    assert meta["mean"] == pytest.approx(ShapesDataModule.mean)

    images = _images(3, 3, 128, 96)
    with torch.no_grad():
        out = loaded(torch.from_numpy(images)).numpy()
    assert out.shape == (3, 4, 128, 96)
    np.testing.assert_allclose(out, _reference(seg_ckpt, images), atol=ATOL, rtol=RTOL)


def test_a_calibrated_checkpoints_onnx_output_is_divided_by_its_temperature(seg_ckpt, tmp_path):
    """evaluate calibrate=true stores a temperature; the exported logits carry it (softmax
    of them is calibrated, argmax unchanged) and the metadata names it."""
    from seglab.checkpoint import RECORD_KEY, read_checkpoint  # noqa: PLC0415

    checkpoint = read_checkpoint(seg_ckpt)
    checkpoint[RECORD_KEY]["temperature"] = 2.0
    calibrated = tmp_path / "calibrated.ckpt"
    torch.save(checkpoint, calibrated)
    result = export(_export_cfg(calibrated, "dynamo=false", f"output={tmp_path / 'c.onnx'}"))
    assert json.loads(_onnx_metadata(result["path"])["temperature"]) == 2.0
    images = _images(1, 3, 64, 96)
    out = _run_onnx(result["path"], images)
    reference = _reference(seg_ckpt, images)
    np.testing.assert_allclose(out, reference / 2.0, atol=ATOL, rtol=RTOL)
    assert (out.argmax(1) == reference.argmax(1)).all()


def test_legacy_onnx_exporter_keeps_dynamic_height_and_width(seg_ckpt, tmp_path):
    """dynamo=false (the fast legacy exporter), with check_size as [height, width]."""
    output = tmp_path / "legacy.onnx"
    result = export(_export_cfg(seg_ckpt, "dynamo=false", f"output={output}", "check_size=[32,64]"))
    assert result["path"] == str(output)
    assert set(result["max_abs_diff"]) == {"2x3x32x64", "1x3x64x96"}
    assert _onnx_input_dims(output) == ["batch", 3, "height", "width"]
    images = _images(1, 3, 160, 64)
    np.testing.assert_allclose(
        _run_onnx(result["path"], images), _reference(seg_ckpt, images), atol=ATOL, rtol=RTOL
    )


def test_metadata_carries_the_runs_own_mean_and_std_with_the_data_gone(tmp_path):
    """A classifier trained with `data.mean`/`data.std` given exports those statistics,
    not its datamodule class's ImageNet defaults, and needs only the checkpoint."""
    root = tmp_path / "photos"
    for k, name in enumerate(("ant", "bee")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), (60 * k + i, 90, 30)).save(
                root / "train" / name / f"{i}.png"
            )
    mean, std = [10.0, 20.0, 30.0], [2.0, 3.0, 4.0]
    cfg = [
        "experiment=folder_cnn",
        f"data.root={root}",
        f"data.mean={mean}",
        f"data.std={std}",
        f"data.image_size={CLS_SIZE}",
        *(o for o in TINY_RUN if not o.startswith("data.num_")),
    ]
    train(compose(cfg, output_dir=tmp_path / "run"))
    ckpt = json.loads((tmp_path / "run" / "metrics.json").read_text())["best_model_path"]
    shutil.rmtree(root)
    result = export(_export_cfg(ckpt, "format=torchscript", f"output={tmp_path / 'cnn.pt'}"))
    extra = {METADATA_FILE: ""}
    torch.jit.load(result["path"], _extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert (meta["mean"], meta["std"]) == (mean, std)
    assert meta["class_names"] == ["ant", "bee"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_classification_export_has_dynamic_batch(cls_ckpt, tmp_path, fmt):
    suffix = {"onnx": ".onnx", "torchscript": ".pt"}[fmt]
    result = export(_export_cfg(cls_ckpt, f"format={fmt}", f"output={tmp_path / 'cnn'}{suffix}"))
    # Same size (the CNN's dense layer fixes it), two batch sizes.
    assert set(result["max_abs_diff"]) == {"2x3x32x32", "1x3x32x32"}
    assert all(diff < ATOL for diff in result["max_abs_diff"].values())

    images = _images(5, 3, CLS_SIZE, CLS_SIZE)
    if fmt == "onnx":
        assert _onnx_input_dims(result["path"]) == ["batch", 3, CLS_SIZE, CLS_SIZE]
        meta = {
            k: json.loads(v) if k != "task" else v
            for k, v in _onnx_metadata(result["path"]).items()
        }
        out = _run_onnx(result["path"], images)
    else:
        extra = {METADATA_FILE: ""}
        loaded = torch.jit.load(result["path"], _extra_files=extra)
        meta = json.loads(extra[METADATA_FILE])
        with torch.no_grad():
            out = loaded(torch.from_numpy(images)).numpy()
    assert meta["task"] == "classification"
    assert meta["class_names"] == ["ellipse", "rectangle", "triangle"]
    assert meta["std"] == pytest.approx(ShapesClassificationDataModule.std)
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, _reference(cls_ckpt, images), atol=ATOL, rtol=RTOL)


def test_onnx_without_onnxruntime_exports_and_warns(cls_ckpt, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    result = export(_export_cfg(cls_ckpt, f"output={tmp_path / 'cnn.onnx'}"))
    assert Path(result["path"]).is_file()
    assert result["verified"] is False and result["max_abs_diff"] == {}
    assert "pip install 'seglab[export]'" in caplog.text


def _cls_net(cls_ckpt: Path) -> torch.nn.Module:
    return load_run(cls_ckpt).module.net.eval()


def test_verify_rejects_an_output_beyond_tolerance(cls_ckpt):
    net = _cls_net(cls_ckpt)

    def off_by_a_bit(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(images)).numpy() + 0.01

    shape = (2, 3, CLS_SIZE, CLS_SIZE)
    with pytest.raises(SeglabError, match=r"onnx .*\(2, 3, 32, 32\).*max abs diff 0\.01"):
        verify(off_by_a_bit, net, [shape], fmt="onnx", atol=1e-4, rtol=1e-3)
    # Within a looser tolerance the same output passes, and the diff is reported.
    diffs = verify(off_by_a_bit, net, [shape], fmt="onnx", atol=0.02, rtol=0.0)
    assert diffs["2x3x32x32"] == pytest.approx(0.01, rel=1e-3)


def test_verify_reports_a_shape_the_export_refuses(cls_ckpt):
    net = _cls_net(cls_ckpt)

    def fixed_batch(images: np.ndarray) -> np.ndarray:
        if images.shape[0] != 2:
            raise RuntimeError("Got invalid dimensions for input: images\nmore detail")
        with torch.no_grad():
            return net(torch.from_numpy(images)).numpy()

    shapes = [(2, 3, CLS_SIZE, CLS_SIZE), (1, 3, CLS_SIZE, CLS_SIZE)]
    with pytest.raises(SeglabError, match=r"torchscript model fails on input shape \(1, 3, 32"):
        verify(fixed_batch, net, shapes, fmt="torchscript", atol=1e-4, rtol=1e-3)


def test_check_size_the_classifier_refuses_is_one_error(cls_ckpt, tmp_path):
    cfg = _export_cfg(cls_ckpt, "check_size=40", f"output={tmp_path / 'cnn.onnx'}")
    with pytest.raises(SeglabError, match=r"SimpleCNN fails on the example input \(2, 3, 40, 40\)"):
        export(cfg)
    assert not list(tmp_path.iterdir())  # refused before writing anything


def test_unknown_format_lists_the_formats(cls_ckpt):
    with pytest.raises(SeglabError, match=r"format=tflite .* onnx, torchscript"):
        export(_export_cfg(cls_ckpt, "format=tflite"))


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seglab.export", *args, f"hydra.run.dir={cwd / 'run'}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_torchscript_default_next_to_a_model_pt_keeps_the_checkpoint(cls_ckpt, tmp_path):
    # A checkpoint named model.pt: the old default output (same stem, .pt) was the
    # checkpoint itself. Exporting twice (the README command rerun) must work too.
    ckpt = tmp_path / "model.pt"
    shutil.copyfile(cls_ckpt, ckpt)
    before = ckpt.read_bytes()
    for _ in range(2):
        result = export(_export_cfg(ckpt, "format=torchscript"))
        assert Path(result["path"]) == tmp_path / "model.torchscript.pt"
    assert ckpt.read_bytes() == before


def test_output_equal_to_the_checkpoint_is_refused(cls_ckpt, tmp_path):
    ckpt = tmp_path / "model.pt"
    shutil.copyfile(cls_ckpt, ckpt)
    before = ckpt.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(ckpt)
    for output in (ckpt, link):
        with pytest.raises(SeglabError, match="is the checkpoint itself"):
            export(_export_cfg(ckpt, "format=torchscript", f"output={output}"))
    assert ckpt.read_bytes() == before


def test_cli_exports_and_prints_the_path(cls_ckpt, tmp_path):
    output = tmp_path / "model.onnx"
    result = _run_cli(f"ckpt_path={cls_ckpt}", f"output={output}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.is_file()
    assert result.stdout.strip().splitlines()[-1] == str(output)
    assert "max abs diff" in result.stdout  # the check ran and reported
    assert (tmp_path / "run" / "export.log").is_file()


def _assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("seglab: error:"), last
    for text in expected:
        assert text in last, last


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    missing = tmp_path / "nope" / "best.ckpt"
    _assert_one_line_error(_run_cli(f"ckpt_path={missing}", cwd=tmp_path), str(missing))


def test_cli_unknown_format_is_one_line(cls_ckpt, tmp_path):
    result = _run_cli(f"ckpt_path={cls_ckpt}", "format=tflite", cwd=tmp_path)
    _assert_one_line_error(result, "format=tflite", "onnx", "torchscript")


def _readme_snippet(marker: str) -> str:
    """The python block that follows `<!-- marker -->` in README.md, verbatim."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split(f"<!-- {marker} -->", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


def test_readme_onnxruntime_lines_reproduce_predict_on_an_odd_sized_image(
    seg_ckpt, seg_onnx, tmp_path, monkeypatch
):
    """100x80 is no multiple of 32: without the recorded padding the ONNX model's mask
    differs from predict's at the borders."""
    meta = _onnx_metadata(seg_onnx["path"])
    assert json.loads(meta["size_divisor"]) == 32 and json.loads(meta["pad_value"]) == 0.0

    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    (tmp_path / "inputs").mkdir()
    Image.fromarray(photo).save(tmp_path / "inputs" / "photo.png")
    predict(
        compose(
            [f"ckpt_path={seg_ckpt}", f"input={tmp_path / 'inputs'}", f"output={tmp_path / 'out'}",
             "device=cpu"],
            config_name="predict",
        )
    )  # fmt: skip
    expected = np.asarray(Image.open(tmp_path / "out" / "masks" / "photo.png"))

    shutil.copy(seg_onnx["path"], tmp_path / "model.onnx")
    shutil.copy(tmp_path / "inputs" / "photo.png", tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(_readme_snippet("onnx-predict"), namespace)  # the README's lines, as written
    assert namespace["mask"].shape == (80, 100)
    np.testing.assert_array_equal(namespace["mask"], expected)
