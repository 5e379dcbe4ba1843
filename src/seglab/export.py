"""Export a trained network to ONNX or TorchScript, then check it against PyTorch.

    python -m seglab.export ckpt_path=outputs/train/runs/<time>/checkpoints/best.ckpt
    python -m seglab.export ckpt_path=<ckpt> format=torchscript
    python -m seglab.export ckpt_path=<ckpt> output=model.onnx atol=1e-3
    python -m seglab.export ckpt_path=<ckpt> dynamo=false      # the legacy ONNX exporter

Only the network is exported (`module.net`, eval mode, CPU, float32): it maps normalised
images (N, 3, H, W), `(pixel - mean) / std` with pixels on the 0-255 scale, to logits
(N, C, H, W) for segmentation or (N, C) for classification. The batch is dynamic; so are
height and width for segmentation (the net's own constraints still hold, e.g. FPN needs
multiples of 32). Sliding-window or test-time-augmented inference is not part of it.

Metadata travels in the file: ONNX `metadata_props` and the TorchScript extra file
`metadata.json` both hold `class_names`, `mean`, `std` (JSON lists), `task`,
`input_size` (the training size, [H, W]), `temperature` (1.0 unless the checkpoint was
calibrated by `seglab.evaluate calibrate=true`; the exported logits are already divided by
it, so their softmax is calibrated) and, for segmentation, `size_divisor` and
`pad_value`: `seglab.predict` pads each normalised image at the bottom and right to a
multiple of `size_divisor` with `pad_value` and crops the logits back (the README shows
the onnxruntime lines that reproduce it):

    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    class_names = json.loads(props["class_names"])

    extra = {"metadata.json": ""}
    net = torch.jit.load(path, _extra_files=extra)
    class_names = json.loads(extra["metadata.json"])["class_names"]

After writing, random inputs at two shapes (batch 2 at the check size; batch 1 at the
check size + 32 for segmentation) go through the exported file and through PyTorch; the
largest difference is logged per shape and beyond `atol + rtol * |ref|` is an error. The
ONNX check needs onnxruntime (`pip install 'seglab[export]'`); without it the check is
skipped with a warning. Hydra writes the log into outputs/export/runs/<time>/.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seglab.cli import command
from seglab.errors import SeglabError
from seglab.inference import SegmentationInference
from seglab.sizes import size_pair

if TYPE_CHECKING:  # imported in `export` itself: it loads Lightning, seconds
    from seglab.checkpoint import Run

log = logging.getLogger(__name__)

# format -> suffix of the default output path. TorchScript gets a two-part suffix so the
# default never equals a checkpoint saved as `<stem>.pt` (it used to replace it).
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"
METADATA_FILE = "metadata.json"  # TorchScript extra file holding the metadata
# The second check shape grows each side by this much: a size the export never saw.
_SIZE_STEP = 32
# Above this many bytes of weights, ONNX weights go to a side file: a protobuf (the .onnx
# file) cannot exceed 2 GiB, and the graph needs room besides the weights.
_MAX_INLINE_BYTES = 1 << 30

Runner = Callable[[np.ndarray], np.ndarray]


def default_output(ckpt_path: str | Path, fmt: str) -> Path:
    """Next to the checkpoint, same stem: `best.ckpt` -> `best.onnx` or
    `best.torchscript.pt`; never the checkpoint itself (`model.pt` -> `model.torchscript.pt`)."""
    path = Path(ckpt_path)
    return path.with_name(path.stem + FORMATS[fmt])


def _refuse_overwriting_checkpoint(output: Path, ckpt_path: Path) -> None:
    """Exporting over the checkpoint destroys the only copy of the trained weights."""
    same = output.resolve() == ckpt_path.resolve() or (
        output.exists() and output.samefile(ckpt_path)
    )
    if same:
        raise SeglabError(
            f"output={output} is the checkpoint itself; exporting would overwrite it: "
            f"choose another output, e.g. output={default_output(ckpt_path, 'onnx')}"
        )


def check_shapes(task: str, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """The input shapes the exported model is checked on. Two batch sizes prove the batch
    is dynamic; for segmentation the second also has a new height and width."""
    height, width = size
    if task == "segmentation":
        return [(2, 3, height, width), (1, 3, height + _SIZE_STEP, width + _SIZE_STEP)]
    return [(2, 3, height, width), (1, 3, height, width)]


def _shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


def verify(
    run: Runner,
    net: nn.Module,
    shapes: Sequence[Sequence[int]],
    *,
    fmt: str,
    atol: float,
    rtol: float,
    seed: int = 0,
) -> dict[str, float]:
    """Compare `run` (the exported model on a float32 array) with `net` on random inputs.

    Args:
        run: maps a float32 array (N, 3, H, W) to the exported model's logits.
        net: the PyTorch network, the reference.
        shapes: input shapes to check, one random input each.
        fmt: the format's name, for messages.
        atol, rtol: an element fails where |out - ref| > atol + rtol * |ref| (or is NaN).
        seed: seeds the random inputs, so a failure can be reproduced.

    Returns:
        the largest absolute difference per shape, keyed "NxCxHxW".

    Raises:
        SeglabError: the exported model fails on a shape, returns another output shape,
            or differs beyond tolerance.
    """
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for shape in shapes:
        shape = tuple(int(n) for n in shape)
        images = torch.randn(shape, generator=generator)
        with torch.no_grad():
            ref = net(images).numpy()
        try:
            out = np.asarray(run(images.numpy()))
        except Exception as err:  # a runtime refusing the shape: the axis is not dynamic
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise SeglabError(
                f"the exported {fmt} model fails on input shape {shape}: "
                f"{type(err).__name__}: {first_line}"
            ) from err
        if out.shape != ref.shape:
            raise SeglabError(
                f"the exported {fmt} model returns shape {out.shape} on input {shape}; "
                f"PyTorch returns {ref.shape}"
            )
        diff = np.abs(out.astype(np.float64) - ref)
        max_diff = float(diff.max()) if diff.size else 0.0
        log.info("%s vs PyTorch, input %s: max abs diff %.3g", fmt, shape, max_diff)
        # `not <=` also catches NaN, which compares false with everything.
        if not np.all(diff <= atol + rtol * np.abs(ref)):
            raise SeglabError(
                f"the exported {fmt} model differs from PyTorch on input shape {shape}: "
                f"max abs diff {max_diff:.3g} exceeds atol={atol} + rtol={rtol} * |ref|"
            )
        diffs[_shape_key(shape)] = max_diff
    return diffs


def _metadata(run: Run) -> dict[str, Any]:
    """What a deployment needs besides the weights: class names, normalisation and, for
    segmentation, the padding `seglab.predict` applies (to a multiple of `size_divisor`,
    with `pad_value` after normalisation, i.e. the mean colour; logits cropped back)."""
    metadata = {
        "class_names": list(run.class_names),
        "mean": run.mean,
        "std": run.std,
        "task": run.task,
        "input_size": list(run.datamodule.input_size),
        # The output logits are already divided by it: softmax(output) is calibrated.
        "temperature": run.module.temperature,
    }
    if run.task == "segmentation":
        metadata["size_divisor"] = SegmentationInference.size_divisor  # predict's default
        metadata["pad_value"] = 0.0
    return metadata


class TemperatureScaled(nn.Module):
    """`net`'s logits divided by a fitted temperature (`seglab.calibration`): the same
    argmax, calibrated probabilities."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net = net
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images) / self.temperature


@contextmanager
def _quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the named loggers to `level` for a while: under Hydra's INFO root logger the
    ONNX optimiser logs every pass it runs (dozens of lines per export)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels, strict=True):
            logger.setLevel(old)


def _require(*packages: str, purpose: str) -> None:
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise SeglabError(f"{purpose} needs {', '.join(missing)}: pip install 'seglab[export]'")


def export_onnx(
    net: nn.Module,
    example: torch.Tensor,
    path: Path,
    task: str,
    metadata: dict[str, Any],
    *,
    opset: int | None = 18,
    dynamo: bool = True,
) -> None:
    """Write `net` as ONNX with a dynamic batch (and height, width for segmentation), the
    metadata in `metadata_props`, weights inline unless they are too large for that."""
    _require("onnx", *(["onnxscript"] if dynamo else []), purpose="ONNX export")
    import onnx  # noqa: PLC0415 (the export extra)

    weight_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    if dynamo:
        # Plain named dims suffice: in torch 2.14 nets that need sizes divisible by 32
        # (smp FPN) export without a `32 * Dim` constraint and fail only at run time, as
        # they do in PyTorch; UNet (smp >= 0.5) and FCN accept any size. Batch 2 in the
        # example keeps torch.export from specialising the batch to 1.
        dims = {0: torch.export.Dim("batch")}
        if task == "segmentation":
            dims.update({2: torch.export.Dim("height"), 3: torch.export.Dim("width")})
        try:
            with _quiet("onnxscript", "onnx_ir"):
                torch.onnx.export(
                    net,
                    (example,),
                    str(path),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamo=True,
                    # A tuple, not a dict: dict keys must be forward()'s argument name, which
                    # differs between nets (x, images, ...).
                    dynamic_shapes=(dims,),
                    external_data=weight_bytes > _MAX_INLINE_BYTES,
                    verbose=False,
                )
        except Exception:
            # torch.export cannot trace some nets (data-dependent control flow, ...).
            log.error("The torch.export-based exporter failed; dynamo=false tries the legacy one")
            raise
    else:
        axes = {0: "batch"}
        if task == "segmentation":
            axes.update({2: "height", 3: "width"})
        with warnings.catch_warnings():
            # The user chose the legacy exporter; its deprecation notice adds nothing.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            # Tracing turns shape checks into constants; `verify` tests other shapes.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            )
    # Metadata is added after writing so both exporters share it; external weights (if
    # any) stay where the exporter put them, next to the model.
    model = onnx.load(str(path), load_external_data=False)
    onnx.helper.set_model_props(
        model,
        {
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in metadata.items()
        },
    )
    onnx.save(model, str(path))


@contextmanager
def _no_jit_warnings() -> Iterator[None]:
    """Silence torch.jit's deprecation notices (one per call, logged once instead) and
    tracer warnings (shape checks become constants; `verify` tests other shapes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def export_torchscript(
    net: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any]
) -> None:
    """Trace `net` and save it with the metadata as the extra file `metadata.json`.

    Tracing records shape arithmetic (interpolate to a skip's size, ...) as graph ops, so
    the traced net takes other sizes; a size a net turns into a Python number becomes a
    constant, which `verify` catches at its second shape.
    """
    log.warning("TorchScript is deprecated by PyTorch; prefer format=onnx for new deployments")
    with _no_jit_warnings():
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
    traced.save(str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def _onnx_runner(path: Path) -> Runner | None:
    """An onnxruntime session on `path` as a function, or None without onnxruntime."""
    try:
        import onnxruntime as ort  # noqa: PLC0415 (the export extra)
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {INPUT_NAME: images})[0]


def _torchscript_runner(path: Path) -> Runner:
    with _no_jit_warnings():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(images)).numpy()

    return run


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the checkpoint's network as configured, then check it against PyTorch.

    Args:
        cfg: the composed `export` config (conf/export.yaml): ckpt_path, format, output,
            opset, dynamo, atol, rtol, check_size.

    Returns:
        `path` (str) of the written file, `format`, `verified` (False only when the
        ONNX check was skipped for want of onnxruntime) and `max_abs_diff`, the largest
        difference from PyTorch per checked input shape ("NxCxHxW" -> float).

    Raises:
        SeglabError: a missing or non-seglab checkpoint, an unknown format, missing
            export packages, a check size the net refuses, or an exported model that
            disagrees with PyTorch (the file is kept, for inspection).
    """
    fmt = cfg.format
    if fmt not in FORMATS:
        raise SeglabError(f"format={fmt} is not supported; choose one of: {', '.join(FORMATS)}")
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise SeglabError("ckpt_path is required: python -m seglab.export ckpt_path=<ckpt>")
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():  # as load_run says, before seconds of importing Lightning
        raise SeglabError(f"checkpoint {ckpt_path} does not exist")
    from seglab.checkpoint import load_run  # noqa: PLC0415 (Lightning: after the checks)

    run = load_run(ckpt_path, map_location="cpu")
    metadata = _metadata(run)
    task = run.task
    net = run.module.net.to(device="cpu", dtype=torch.float32).eval()
    if run.module.temperature != 1.0:
        # A calibrated checkpoint (seglab.evaluate calibrate=true): the exported model's
        # logits are divided by the temperature, so softmax of them is calibrated.
        net = TemperatureScaled(net, run.module.temperature).eval()

    check_size = cfg.get("check_size")
    size = size_pair(check_size if check_size is not None else metadata["input_size"])
    shapes = check_shapes(task, size)
    example = torch.randn(shapes[0], generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            net(example)
    except Exception as err:  # e.g. a classifier built for another size
        raise SeglabError(
            f"{type(net).__name__} fails on the example input {tuple(example.shape)}: {err} "
            f"(check_size={check_size})"
        ) from err

    output = Path(cfg.output) if cfg.get("output") else default_output(ckpt_path, fmt)
    output = output.expanduser().resolve()
    _refuse_overwriting_checkpoint(output, ckpt_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    log.info("Exporting %s (%s) from %s to %s", type(net).__name__, task, ckpt_path, output)

    if fmt == "onnx":
        opset = cfg.get("opset")
        export_onnx(
            net, example, output, task, metadata, opset=opset, dynamo=cfg.get("dynamo", True)
        )
        run = _onnx_runner(output)
    else:
        export_torchscript(net, example, output, metadata)
        run = _torchscript_runner(output)

    diffs: dict[str, float] = {}
    if run is None:
        log.warning(
            "onnxruntime is not installed, so the exported model was NOT checked against "
            "PyTorch; pip install 'seglab[export]' to verify"
        )
    else:
        try:
            diffs = verify(run, net, shapes, fmt=fmt, atol=cfg.atol, rtol=cfg.rtol)
        except SeglabError as err:  # keep the file for inspection, but say it failed
            raise SeglabError(f"{err} ({output} is written but failed the check)") from err
    log.info("Wrote %s", output)
    return {"path": str(output), "format": fmt, "verified": run is not None, "max_abs_diff": diffs}


@command("export")
def main(cfg: DictConfig) -> None:
    """Command-line entry point; prints the exported file's path as the last line."""
    print(export(cfg)["path"])


if __name__ == "__main__":
    main()
