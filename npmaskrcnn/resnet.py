"""The ResNet-50 bottleneck block (He et al. 2016, figure 5 right) and the norm layers blocks use.

ResNet-50/101 replace the two 3x3 convs of a basic block by 1x1 (reduce to `planes` channels),
3x3, 1x1 (expand to 4 * planes), which gives a deeper network for the same cost. As torchvision
builds it ("ResNet v1.5"), the stride of a downsampling block sits on the 3x3 conv, not on the first
1x1, and the first block of every stage — layer1's too, which widens 64 to 256 at stride 1 — has a
projection shortcut (`downsample`, a strided 1x1 conv and a norm). Mask R-CNN's backbone (paper
section 3, "Network Architecture") is this ResNet-50 with stages of 3, 4, 6 and 3 blocks giving
C2..C5 of 256, 512, 1024 and 2048 channels, under an FPN (`backbone.py`).

Norm layers: `make_norm` gives GroupNorm (training from scratch, Wu & He 2018) or frozen batch
norm (`batch_norm.py`: an imported, pre-trained model). Child names follow torchvision's
`Bottleneck` (conv1, bn1, conv2, bn2, conv3, bn3, downsample.0, downsample.1), with "gn" in place
of "bn" for GroupNorm, so a torchvision state dict maps onto it name by name.

Shape shorthand:
    N images, C_in input channels, P planes (the 3x3 width), 4P output channels, H x W input size,
    s the block's stride: output (N, 4P, ceil(H / s), ceil(W / s))

Naming:
    planes      the width of the block's 1x1 reduce and 3x3 convs; out = EXPANSION * planes
    downsample  the projection shortcut (1x1 conv with the block's stride + norm)
"""

from .batch_norm import FrozenBatchNorm2d
from .nn import Conv2d, GroupNorm, Module, ReLU, Sequential

EXPANSION = 4
NORMS = ("group", "frozen_bn")


def make_norm(kind, channels, groups=32, eps=1e-5, zero_init=False):
    """The norm layer a config names: "group" (GroupNorm, min(groups, channels) groups; zero_init
    starts gamma at 0) or "frozen_bn" (FrozenBatchNorm2d with this eps)."""
    if kind == "group":
        return GroupNorm(min(groups, channels), channels, zero_init=zero_init)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels, eps=eps)
    raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")


class Bottleneck(Module):
    """1x1 -> norm -> ReLU -> 3x3 (stride) -> norm -> ReLU -> 1x1 -> norm, + shortcut, ReLU.

    forward(x (N, C_in, H, W)) -> (N, 4P, H/s, W/s); backward(dy) -> dx.

    Inputs:
    - in_ch: C_in; planes: P; stride: 1 or 2 (on the 3x3 conv and on the shortcut)
    - norm: "group" or "frozen_bn"; groups: GroupNorm groups; eps: frozen BN's eps
    - rng: np.random.Generator for the conv weights
    With GroupNorm the last norm starts at gamma = 0, so the block starts as its shortcut
    (Goyal et al. 2017), as backbone.BasicBlock does; frozen BN starts as the identity affine.
    """

    def __init__(self, in_ch, planes, stride, norm, rng, groups=32, eps=1e-5):
        super().__init__()
        out_ch = EXPANSION * planes
        n = "bn" if norm == "frozen_bn" else "gn"
        self.norm_names = (n + "1", n + "2", n + "3")
        self.add("conv1", Conv2d(in_ch, planes, 1, 1, 0, bias=False, rng=rng))
        self.add(n + "1", make_norm(norm, planes, groups, eps))
        self.add("relu1", ReLU())
        self.add("conv2", Conv2d(planes, planes, 3, stride, 1, bias=False, rng=rng))
        self.add(n + "2", make_norm(norm, planes, groups, eps))
        self.add("relu2", ReLU())
        self.add("conv3", Conv2d(planes, out_ch, 1, 1, 0, bias=False, rng=rng))
        self.add(n + "3", make_norm(norm, out_ch, groups, eps, zero_init=True))
        self.has_shortcut = stride != 1 or in_ch != out_ch
        if self.has_shortcut:
            self.add("downsample", Sequential(Conv2d(in_ch, out_ch, 1, stride, 0, bias=False, rng=rng),
                                              make_norm(norm, out_ch, groups, eps)))
        self.add("relu3", ReLU())

    def forward(self, x):
        n1, n2, n3 = (self.children[k] for k in self.norm_names)
        out = self.relu1(n1(self.conv1(x)))
        out = self.relu2(n2(self.conv2(out)))
        out = n3(self.conv3(out))
        shortcut = self.downsample(x) if self.has_shortcut else x
        return self.relu3(out + shortcut)

    def backward(self, dy):
        n1, n2, n3 = (self.children[k] for k in self.norm_names)
        dsum = self.relu3.backward(dy)
        dx_short = self.downsample.backward(dsum) if self.has_shortcut else dsum
        dout = self.conv3.backward(n3.backward(dsum))
        dout = self.conv2.backward(n2.backward(self.relu2.backward(dout)))
        dx = self.conv1.backward(n1.backward(self.relu1.backward(dout)))
        return dx + dx_short
