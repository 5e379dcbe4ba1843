"""Class activation maps (Grad-CAM, through Captum) for seglab's networks.

    layer = target_layer(module.net)  # which layer the maps come from (see its rule)
    cams = class_activation_maps(module, images, target=resolve_class("cat", names))
    picture = overlay_heatmap(image, cams[0].numpy())  # uint8 (H, W, 3)

For segmentation the score explained is Seg-Grad-CAM's (Vinogradova et al., AAAI 2020):
the sum of class `target`'s logits over the pixels predicted as `target`. Captum is an
optional dependency (`pip install 'seglab[explain]'`), imported only when a map is made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from segmentation_models_pytorch.base import SegmentationModel
from torch import nn

from seglab.data.base import Task
from seglab.errors import SeglabError
from seglab.inference import SegmentationInference, class_indices, pad_to
from seglab.models import FCN, SimpleCNN
from seglab.modules import TaskModule


def target_layer(net: nn.Module) -> nn.Module:
    """The layer whose output Grad-CAM weighs, chosen by architecture.

    The rule: the last layer that still holds spatial feature maps before the net turns
    them into class scores.

    - segmentation-models-pytorch models (Unet, FPN, DeepLabV3, ...): `net.decoder`,
      whose output is exactly what `net.segmentation_head` maps to logits (at the
      input's resolution for Unet, 1/4 or 1/8 of it for FPN and DeepLabV3).
    - `seglab.models.FCN`: the ReLU closing the conv block of `net.head`, on the
      stride-32 features (the 1x1 classifier and the skip scores follow it).
    - `seglab.models.SimpleCNN`: `net.features`, the last conv + ReLU before the dense
      layers.

    Raises:
        SeglabError: `net` is none of these; pass `layer=` to `class_activation_maps`.
    """
    if isinstance(net, SegmentationModel):
        return net.decoder
    if isinstance(net, FCN):
        relus = [layer for layer in net.head if isinstance(layer, nn.ReLU)]
        if relus:
            return relus[-1]
    if isinstance(net, SimpleCNN):
        return net.features
    raise SeglabError(
        f"no Grad-CAM layer known for {type(net).__name__}; known: segmentation-models-pytorch "
        "models, seglab.models.FCN and SimpleCNN; pass layer=<a conv block of the net> to "
        "class_activation_maps"
    )


def resolve_class(name_or_index: str | int, class_names: Sequence[str]) -> int:
    """The class index `name_or_index` means: a class name, or its index (int or string);
    a name wins over an index when a class is named like a number.

    Raises:
        SeglabError: neither a name nor an index in range; the message lists the classes.
    """
    names = list(class_names)
    text = str(name_or_index).strip()
    if text in names:
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        index = None
    if index is not None and 0 <= index < len(names):
        return index
    listed = ", ".join(f"{i}={name}" for i, name in enumerate(names))
    raise SeglabError(
        f"class {name_or_index!r} is neither a class name nor an index from 0 to "
        f"{len(names) - 1}; the classes are {listed}"
    )


def _layer_grad_cam():
    """Captum's (LayerGradCam, LayerAttribution), or the install line to get them."""
    try:
        from captum.attr import LayerAttribution, LayerGradCam  # noqa: PLC0415 (optional)
    except ImportError as err:
        raise SeglabError(
            f"class activation maps need Captum ({err}); pip install 'seglab[explain]'"
        ) from err
    return LayerGradCam, LayerAttribution


def class_activation_maps(
    module_or_net: TaskModule | nn.Module,
    images: torch.Tensor,
    target: int | None = None,
    task: Task | None = None,
    *,
    layer: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM maps of class `target`, one per image, at the images' size.

    Segmentation explains the sum of class `target`'s logits over the pixels predicted
    as `target` (all pixels when none is); images of any size are zero-padded to the
    net's size divisor, as `seglab.inference` does, and the maps cropped back.
    Classification explains the logit of `target`, or of each image's predicted class
    when `target` is None. Maps are ReLU'd, upsampled bilinearly from the layer's
    resolution, and divided by each image's maximum (a map without positive evidence
    stays all zero).

    The net runs in eval mode in full precision, with gradients on even inside
    `torch.inference_mode()`; every submodule's train/eval state is restored afterwards,
    Captum removes its hooks, and no parameter's `.grad` is touched.

    Args:
        module_or_net: a `TaskModule` (its `net`, memory format, task and inference's
            size divisor are used) or a bare network following seglab's contract.
        images: normalised as the net's input (`datamodule.to_input`), on its device.
        target: class index (see `resolve_class`); required for segmentation.
        task: "segmentation" or "classification"; None takes the module's task.
        layer: the layer to attribute to; None: `target_layer(net)`.

    Shape:
        images: (N, 3, H, W) -> maps: float32 (N, H, W) in [0, 1].
    """
    LayerGradCam, LayerAttribution = _layer_grad_cam()
    module = module_or_net if isinstance(module_or_net, TaskModule) else None
    net = module.net if module is not None else module_or_net
    task = _check_task(task, module)
    layer = target_layer(net) if layer is None else layer
    if images.dim() != 4:
        raise SeglabError(f"images must be (N, 3, H, W); got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if task == "segmentation":
        if target is None:
            raise SeglabError("segmentation maps need a target class (index or name)")
        inference = getattr(module, "inference", None)
        divisor = getattr(inference, "size_divisor", SegmentationInference.size_divisor)
        padded = pad_to(images, -(-height // divisor) * divisor, -(-width // divisor) * divisor)
    else:
        padded = images

    def score(x: torch.Tensor) -> torch.Tensor:  # (N, 3, H', W') -> (N,): what is explained
        logits = net(x)
        _check_target(target, logits.shape[1])
        if task == "classification":  # (N, C): the target's logit, or the predicted one's
            classes = (
                logits.detach().argmax(dim=1)
                if target is None
                else torch.full_like(logits[:, 0], target, dtype=torch.long)
            )
            return logits.gather(1, classes[:, None])[:, 0]
        logits = logits[..., :height, :width]  # (N, C, H, W): the real pixels only
        chosen = class_indices(logits.detach()) == target  # (N, H, W)
        empty = ~chosen.flatten(1).any(dim=1)  # images without a `target` pixel: all pixels
        chosen |= empty.view(-1, 1, 1)
        return (logits[:, target] * chosen).sum(dim=(1, 2))

    states = {sub: sub.training for sub in net.modules()}
    net.eval()
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(images.device.type, enabled=False),
        ):
            # A clone: an inference-mode tensor cannot be saved for backward.
            inputs = padded.detach().clone().float()
            if module is not None:
                inputs = module.formatted(inputs)
            cam = LayerGradCam(score, layer).attribute(inputs, relu_attributions=True)
            if cam.dim() != 4:
                raise SeglabError(
                    f"layer {type(layer).__name__} outputs {cam.dim()}-d tensors; Grad-CAM "
                    "needs (N, C, h, w) feature maps: pick a convolutional layer"
                )
            # (N, 1, h, w) -> (N, 1, H', W') -> (N, H, W)
            cam = LayerAttribution.interpolate(
                cam.detach(), tuple(padded.shape[-2:]), interpolate_mode="bilinear"
            )
            cam = cam[:, 0, :height, :width].contiguous()
    finally:
        for sub, training in states.items():
            sub.training = training
    peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, cam / peak.clamp(min=torch.finfo(cam.dtype).tiny), 0.0)


def _check_task(task: Task | None, module: TaskModule | None) -> Task:
    module_task = getattr(module, "task", None)
    task = module_task if task is None else task
    if task not in ("segmentation", "classification"):
        raise SeglabError(
            f"task must be 'segmentation' or 'classification'; got {task!r}"
            + ("" if module is not None else " (a bare net does not say its task)")
        )
    if module_task is not None and task != module_task:
        raise SeglabError(f"task={task} but the module is a {module_task} module")
    return task


def _check_target(target: int | None, num_classes: int) -> None:
    if target is not None and not 0 <= int(target) < num_classes:
        raise SeglabError(
            f"target class {target} is out of range: the net predicts {num_classes} classes "
            f"(0 to {num_classes - 1})"
        )


def overlay_heatmap(
    image: np.ndarray, cam: np.ndarray | torch.Tensor, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """`image` blended with `cam` drawn in a matplotlib colormap, as
    `(1 - alpha) * image + alpha * colour`, rounded (predict's overlay blend).

    Shape:
        image: uint8 (H, W, 3); cam: (H, W) in [0, 1] -> uint8 (H, W, 3).
    """
    from matplotlib import colormaps  # noqa: PLC0415 (only when drawing)

    cam = cam.detach().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SeglabError(f"image must be uint8 (H, W, 3); got {image.dtype} {tuple(image.shape)}")
    if cam.shape != image.shape[:2]:
        raise SeglabError(f"cam {tuple(cam.shape)} must match the image's (H, W) {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise SeglabError(f"alpha must be in [0, 1]; got {alpha}")
    colour = colormaps[cmap](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0  # (H, W, 3) float
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colour
    return np.rint(blend).clip(0, 255).astype(np.uint8)
