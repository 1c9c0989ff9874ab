"""The networks of the cascade (PyTorch; only training and export import this module).

- `SmallCNN` and `SmallUNet`: the demo models, a few MB, trained on synthetic radiographs.
- `vgg19_classifier` and `densenet_unet`: the seed's architectures (VGG19 with ImageNet
  features, U-Net with a DenseNet121 encoder), for real data and the full-size benchmarks.

Every network takes (N, C, H, W) float32 and returns logits: (N, 1) for a classifier,
(N, 1, H, W) for a segmenter.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A compact classifier: five conv blocks, global average and max pooling, one logit."""

    def __init__(self, channels: int = 1, width: int = 8):
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8, width * 8]
        layers, cin = [], channels
        for w in widths:
            layers += [_block(cin, w), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * cin, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


class SmallUNet(nn.Module):
    """A compact U-Net: four levels down, four up, skip connections, one logit per pixel."""

    def __init__(self, channels: int = 1, width: int = 8):
        super().__init__()
        w = [width, width * 2, width * 4, width * 8, width * 16]
        self.down = nn.ModuleList()
        cin = channels
        for c in w:
            self.down.append(_block(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in range(len(w) - 1, 0, -1):
            self.up.append(nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2))
            self.merge.append(_block(2 * w[i - 1], w[i - 1]))
        self.out = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge in zip(self.up, self.merge):
            x = up(x)
            x = merge(torch.cat([x, skips.pop()], dim=1))
        return self.out(x)


def vgg19_classifier(imagenet_weights: str | None = None) -> nn.Module:
    """The seed's classifier: VGG19 features (frozen when ImageNet weights are given), new head.

    `imagenet_weights` is a path to torchvision's `vgg19-*.pth`; nothing is downloaded.
    """
    from torchvision.models import vgg19

    model = vgg19(weights=None)
    if imagenet_weights:
        model.load_state_dict(torch.load(imagenet_weights, map_location="cpu"))
        for p in model.features.parameters():
            p.requires_grad = False
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, 1))
    return model


def densenet_unet(imagenet_encoder: bool = False) -> nn.Module:
    """The seed's segmenter: U-Net with a DenseNet121 encoder (segmentation-models-pytorch)."""
    import segmentation_models_pytorch as smp

    return smp.Unet("densenet121", encoder_weights="imagenet" if imagenet_encoder else None, in_channels=3, classes=1)


ARCHITECTURES = {
    "small-cnn": lambda: SmallCNN(),
    "small-unet": lambda: SmallUNet(),
    "vgg19": lambda: vgg19_classifier(),
    "unet-densenet121": lambda: densenet_unet(),
}
