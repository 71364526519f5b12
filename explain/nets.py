"""PyTorch twins of the shipped ONNX models (architectures only; weights come from the
package's state_dict, loaded with ``torch.load(..., weights_only=True)``).

``UNet2p5D``: a small 2-D U-Net (Ronneberger et al., MICCAI 2015) over ``2k+1`` neighbouring
axial slices as channels (2.5-D). Conv-BN-ReLU blocks, max-pool down, nearest upsample: every
op has a fused INT8 kernel in ONNX Runtime's CPU provider (2-D convs quantize well there; 3-D
ones barely gain, see DEVELOPERS.md).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet2p5D", "TriPlanarNet", "build_from_card"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet2p5D(nn.Module):
    """Input ``(n, in_ch, h, w)`` (h, w divisible by ``2**depth``), output logits ``(n, n_cls, h, w)``."""

    def __init__(self, in_ch: int = 3, n_cls: int = 7, base: int = 16, depth: int = 3) -> None:
        super().__init__()
        chs = [base * 2**i for i in range(depth + 1)]
        self.enc = nn.ModuleList([_block(in_ch if i == 0 else chs[i - 1], chs[i]) for i in range(depth)])
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(chs[depth - 1], chs[depth])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.ModuleList([_block(chs[i + 1] + chs[i], chs[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chs[0], n_cls, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for dec in self.dec:
            x = dec(torch.cat([self.up(x), skips.pop()], dim=1))
        return self.head(x)


class TriPlanarNet(nn.Module):
    """2.5-D candidate classifier of ``ct-nodule-2p5d`` >= 0.2 (tri-planar, as Setio et al.,
    IEEE TMI 2016, with one shared 2-D trunk).

    Input ``(n, 3 * k, P, P)``: ``k`` neighbouring axial, then coronal, then sagittal planes
    through the candidate centre (``inference.classify.extract_views``). Each plane triple goes
    through the same 2-D trunk (three Conv-BN-ReLU layers, 2x2 max-pool between them); the
    ``features`` layer (the trunk's last stage, the Grad-CAM layer) is average-pooled per view,
    the three view vectors are concatenated and a small MLP gives the output ``(n, 2 + n_types)``:
    the question logit pair (other, solid/part-solid nodule >= 6 mm) then the nodule-type logits.
    """

    def __init__(self, in_ch: int = 9, views: int = 3, base: int = 16, n_types: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.views, self.per_view = views, in_ch // views
        c1, c2, c3 = base, base * 2, base * 4
        self.stem = nn.Sequential(_cbr(self.per_view, c1), nn.MaxPool2d(2), _cbr(c1, c2), nn.MaxPool2d(2))
        self.features = _cbr(c2, c3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(views * c3, hidden), nn.ReLU(inplace=True), nn.Dropout(0.2),
                                  nn.Linear(hidden, 2 + n_types))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        v = x.reshape(n * self.views, self.per_view, x.shape[2], x.shape[3])
        f = self.pool(self.features(self.stem(v))).reshape(n, -1)
        return self.head(f)


def build_from_card(meta: dict) -> nn.Module:
    """Instantiate the architecture named in a model card's ``architecture`` block.

    Raises
    ------
    ValueError
        Unknown architecture name.
    """
    arch = dict(meta["architecture"])
    name = arch.pop("name")
    if name == "UNet2p5D":
        return UNet2p5D(**arch)
    if name == "TriPlanarNet":
        return TriPlanarNet(**arch)
    raise ValueError(f"unknown architecture {name!r}")
