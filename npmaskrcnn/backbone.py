"""The backbone: a ResNet with GroupNorm, and a Feature Pyramid Network on top of it.

ResNet (He et al. 2016) turns the image into feature maps C2..C5 at strides 4, 8, 16, 32.
GroupNorm (Wu & He 2018) replaces BatchNorm because we train from scratch with small batches.
The shapes models use BasicBlocks (ResNet-18's); `Config.block = "bottleneck"` with
`norm = "frozen_bn"` builds torchvision's ResNet-50 instead (`resnet.py`), for imported weights.
FPN (Lin et al. 2017, and Mask R-CNN section 3 "Network Architecture") adds a top-down path with
lateral 1x1 connections, giving P2..P5, all `fpn_channels` wide, each followed by a 3x3 conv;
P6 is a stride-2 subsampling of P5 used by the RPN only.

Shape shorthand:
    N images, H x W image size, C_k width of stage k, F FPN width.
    C2 (N, C_2, H/4, W/4) ... C5 (N, C_5, H/32, W/32); P2 (N, F, H/4, W/4) ... P6 (N, F, H/64, W/64)

Naming:
    c2..c5          ResNet stage outputs; p2..p6 FPN outputs
    inner_k         lateral 1x1 conv on C_k; layer_k: 3x3 output conv giving P_k
    d<name>         gradient of <name>
"""

from . import layers
from .nn import Conv2d, GroupNorm, MaxPool2d, Module, ReLU, Sequential
from .resnet import EXPANSION, Bottleneck, make_norm


class BasicBlock(Module):
    """Two 3x3 conv + GN, a shortcut (1x1 conv + GN when the shape changes), ReLU after the sum.

    The last GN starts with gamma = 0, so every block starts as the identity (Goyal et al. 2017),
    which makes from-scratch training stable.
    """

    def __init__(self, in_ch, out_ch, stride, groups, rng):
        super().__init__()
        self.add("conv1", Conv2d(in_ch, out_ch, 3, stride, 1, bias=False, rng=rng))
        self.add("gn1", GroupNorm(min(groups, out_ch), out_ch))
        self.add("relu1", ReLU())
        self.add("conv2", Conv2d(out_ch, out_ch, 3, 1, 1, bias=False, rng=rng))
        self.add("gn2", GroupNorm(min(groups, out_ch), out_ch, zero_init=True))
        self.has_shortcut = stride != 1 or in_ch != out_ch
        if self.has_shortcut:
            self.add("down_conv", Conv2d(in_ch, out_ch, 1, stride, 0, bias=False, rng=rng))
            self.add("down_gn", GroupNorm(min(groups, out_ch), out_ch))
        self.add("relu2", ReLU())

    def forward(self, x):
        out = self.relu1(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        shortcut = self.down_gn(self.down_conv(x)) if self.has_shortcut else x
        return self.relu2(out + shortcut)

    def backward(self, dy):
        dsum = self.relu2.backward(dy)
        dx_short = self.down_conv.backward(self.down_gn.backward(dsum)) if self.has_shortcut else dsum
        dout = self.conv2.backward(self.gn2.backward(dsum))
        dx = self.conv1.backward(self.gn1.backward(self.relu1.backward(dout)))
        return dx + dx_short


class ResNet(Module):
    """Stem (7x7 stride-2 conv + norm + ReLU, 3x3 stride-2 max-pool) and four stages of blocks.

    cfg.block "basic": BasicBlocks with GroupNorm (the shapes models); "bottleneck": ResNet-50's
    Bottleneck blocks (stage_channels are their outputs, 4x their planes), with cfg.norm
    ("group" or "frozen_bn", eps cfg.bn_eps) in the stem and every block.
    forward(x (N, 3, H, W)) -> [c2, c3, c4, c5]; backward([dc2, dc3, dc4, dc5]) -> None
    (the image needs no gradient).
    """

    def __init__(self, cfg, rng):
        super().__init__()
        stem_conv = Conv2d(3, cfg.stem_channels, 7, 2, 3, bias=False, rng=rng, need_input_grad=False)
        self.add("stem", Sequential(stem_conv, make_norm(cfg.norm, cfg.stem_channels, cfg.gn_groups,
                                                         cfg.bn_eps), ReLU()))
        self.add("pool", MaxPool2d(3, 2, 1))
        in_ch = cfg.stem_channels
        self.stages = []
        for i, (ch, n) in enumerate(zip(cfg.stage_channels, cfg.stage_blocks)):
            stride = 1 if i == 0 else 2
            if cfg.block == "bottleneck":
                blocks = [Bottleneck(in_ch if j == 0 else ch, ch // EXPANSION, stride if j == 0 else 1,
                                     cfg.norm, rng, cfg.gn_groups, cfg.bn_eps) for j in range(n)]
            else:
                blocks = [BasicBlock(in_ch if j == 0 else ch, ch, stride if j == 0 else 1,
                                     cfg.gn_groups, rng) for j in range(n)]
            self.stages.append(self.add(f"layer{i + 1}", Sequential(*blocks)))
            in_ch = ch

    def forward(self, x):
        x = self.pool(self.stem(x))
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats                                            # [c2, c3, c4, c5]

    def backward(self, dfeats):
        dx = None
        for stage, dc in zip(reversed(self.stages), reversed(dfeats)):
            dx = dc if dx is None else dx + dc                  # C_k feeds P_k and stage k+1
            dx = stage.backward(dx)
        self.stem.backward(self.pool.backward(dx))


class FPN(Module):
    """Feature Pyramid Network: laterals, nearest-neighbour top-down path, 3x3 outputs, P6.

    forward([c2..c5]) -> [p2, p3, p4, p5, p6]; backward([dp2..dp6]) -> [dc2..dc5].
    """

    def __init__(self, in_channels, out_ch, rng, norm_groups=0):
        super().__init__()
        self.inner, self.layer = [], []

        def conv(c_in, k):
            if not norm_groups:                                 # plain conv with bias (paper)
                return Conv2d(c_in, out_ch, k, 1, k // 2, rng=rng, init="kaiming_uniform")
            return Sequential(Conv2d(c_in, out_ch, k, 1, k // 2, bias=False, rng=rng, init="kaiming_uniform"),
                              GroupNorm(min(norm_groups, out_ch), out_ch))

        for k, c in zip(range(2, 6), in_channels):
            self.inner.append(self.add(f"inner{k}", conv(c, 1)))
            self.layer.append(self.add(f"layer{k}", conv(out_ch, 3)))
        self.add("p6_pool", MaxPool2d(1, 2, 0))                 # torchvision's LastLevelMaxPool

    def forward(self, feats):
        # 1) top-down: last_5 = inner_5(c5); last_k = inner_k(c_k) + up2(last_{k+1})
        last = self.inner[3](feats[3])
        outs = [self.layer[3](last)]
        up_caches = []
        for k in (2, 1, 0):
            up, cache = layers.upsample_nearest_forward(last, scale=2)
            up_caches.append(cache)
            last = self.inner[k](feats[k]) + up
            outs.insert(0, self.layer[k](last))
        self._push(up_caches)
        # 2) P6 by subsampling P5 (RPN only)
        outs.append(self.p6_pool(outs[3]))
        return outs                                             # [p2, p3, p4, p5, p6]

    def backward(self, douts):
        dp = list(douts[:4])
        dp[3] = dp[3] + self.p6_pool.backward(douts[4])
        up_caches = self._pop()
        dfeats = [None] * 4
        dlast = None
        for k in (0, 1, 2):                                     # undo the top-down loop: k = 2, 3, 4
            dlast_k = self.layer[k].backward(dp[k])
            if dlast is not None:
                dlast_k = dlast_k + dlast
            dfeats[k] = self.inner[k].backward(dlast_k)
            dlast = layers.upsample_nearest_backward(dlast_k, up_caches.pop())
        dlast5 = self.layer[3].backward(dp[3]) + dlast
        dfeats[3] = self.inner[3].backward(dlast5)
        return dfeats


class Backbone(Module):
    """ResNet + FPN: image (N, 3, H, W) -> [p2, p3, p4, p5, p6]."""

    def __init__(self, cfg, rng):
        super().__init__()
        self.add("body", ResNet(cfg, rng))
        self.add("fpn", FPN(cfg.stage_channels, cfg.fpn_channels, rng,
                            norm_groups=cfg.gn_groups if cfg.fpn_norm else 0))

    def forward(self, x):
        return self.fpn(self.body(x))

    def backward(self, dps):
        self.body.backward(self.fpn.backward(dps))

