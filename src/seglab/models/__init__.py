"""seglab's own networks; segmentation-models-pytorch nets are built straight from config.

Every network follows one contract: `Net(in_channels, num_classes, ...)` (smp spells the
second `classes`) returning logits `(N, num_classes, H, W)` for segmentation or
`(N, num_classes)` for classification.
"""

from seglab.models.cnn import SimpleCNN
from seglab.models.fcn import FCN

__all__ = ["FCN", "SimpleCNN"]
