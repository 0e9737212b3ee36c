"""BiSeNet face parsing (CelebAMask-HQ, 19 classes), key-compatible with `79999_iter.pth`.

The layer names mirror the checkpoint (`cp.resnet.*`, `cp.arm16`, `ffm.*`, `conv_out*`) so that the file loads strictly.
Only the main head is evaluated; the two auxiliary heads exist so that their weights are accounted for.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..weights import load_strict, read_state_dict, strip_prefix

NUM_CLASSES = 19


def _global_pool(x):
    # avg_pool2d rather than mean(): the same summation order as the original module, so argmax ties break alike
    return F.avg_pool2d(x, x.shape[2:])


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, kernel=3, stride=1, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """The torchvision ResNet-18 trunk without its classifier; returns the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (cin, cout, stride) in enumerate(layers, 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer1(x)
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(_global_pool(feat))))
        return feat * attention


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        global_context = self.conv_avg(_global_pool(f32))
        s32 = self.arm32(f32) + F.interpolate(global_context, f32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(s32, f16.shape[2:], mode="nearest"))
        s16 = self.arm16(f16) + up32
        up16 = self.conv_head16(F.interpolate(s16, f8.shape[2:], mode="nearest"))
        return f8, up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin=256, cout=256):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat([spatial, context], 1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_pool(feat)))))
        return feat * attention + feat


class Head(nn.Module):
    def __init__(self, cin, mid):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, NUM_CLASSES, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion()
        self.conv_out = Head(256, 256)
        self.conv_out16 = Head(128, 64)  # training-time auxiliary heads: loaded, never run
        self.conv_out32 = Head(128, 64)

    def classifier_input(self, x):
        """[B,3,H,W] ImageNet-normalised RGB -> the [B,256,H/8,W/8] features the main classifier sees."""
        f8, up16, _ = self.cp(x)
        return self.conv_out.conv(self.ffm(f8, up16))

    def forward(self, x):
        """[B,3,H,W] -> [B,19,H,W] logits of the main head, upsampled as the official parser does."""
        logits = self.conv_out.conv_out(self.classifier_input(x))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


def load_bisenet(path, expected, fix):
    """`79999_iter.pth` (it holds the ResNet-18 trunk too, so the separate resnet18 file is never needed)."""
    state = strip_prefix(read_state_dict(path, expected, fix), "module.")
    return load_strict(BiSeNet(), state, path, expected, fix)
