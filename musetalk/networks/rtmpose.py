"""DWPose whole-body keypoints: RTMPose-l (CSPNeXt-P5 backbone + RTMCC SimCC head), key-compatible with
`dw-ll_ucoco_384.pth`, and the mmpose top-down inference around it (affine crop, flip test, SimCC decode).

It reproduces mmpose 1.3.2's `inference_topdown` with the config `rtmpose-l_8xb32-270e_coco-ubody-wholebody-384x288.py`
(BatchNorm eps 1e-5, SiLU everywhere, 288x384 input, SimCC split ratio 2, flip test on) without mmcv/mmpose. The
layer names mirror the checkpoint (`backbone.stage2.1.blocks.0.conv2.depthwise_conv.bn.weight`, `head.gau.uv.weight`)
so that the file loads strictly. MuseTalk only uses the 68 face points 23..90 of the 133.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..opencv import load_cv2
from ..weights import load_strict, read_state_dict, strip_prefix

cv2 = load_cv2()  # this module is imported where the pose model is first loaded

NUM_KEYPOINTS = 133
INPUT_SIZE = (288, 384)  # (width, height) of the crop the network sees
SIMCC_SPLIT_RATIO = 2.0  # SimCC bins per input pixel
BBOX_PADDING = 1.25
PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB order
PIXEL_STD = (58.395, 57.12, 57.375)

# COCO-WholeBody: the index of each keypoint's left/right mirror image (mmpose's `flip_indices`).
FLIP_INDICES = (
    [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]  # body 0..16
    + [20, 21, 22, 17, 18, 19]  # feet 17..22
    + list(range(39, 22, -1))  # face contour 23..39
    + list(range(49, 39, -1))  # eyebrows 40..49
    + [50, 51, 52, 53, 58, 57, 56, 55, 54]  # nose 50..58
    + [68, 67, 66, 65, 70, 69, 62, 61, 60, 59, 64, 63]  # eyes 59..70
    + list(range(77, 70, -1)) + [82, 81, 80, 79, 78]  # outer lips 71..82
    + [87, 86, 85, 84, 83, 90, 89, 88]  # inner lips 83..90
    + list(range(112, 133)) + list(range(91, 112))  # left hand 91..111 <-> right hand 112..132
)


# ---------------------------------------------------------------------------------------------------------------
# CSPNeXt-P5 backbone (mmdet `CSPNeXt`, arch P5, deepen 1, widen 1, expand 0.5, channel attention)

class ConvBNAct(nn.Module):
    """mmcv ConvModule: bias-free conv, BatchNorm, SiLU."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, cin, cout, kernel):
        super().__init__()
        self.depthwise_conv = ConvBNAct(cin, cin, kernel, groups=cin)
        self.pointwise_conv = ConvBNAct(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class CSPNeXtBlock(nn.Module):
    def __init__(self, channels, add_identity):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 3)
        self.conv2 = DepthwiseSeparableConv(channels, channels, 5)
        self.add_identity = add_identity

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class ChannelAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class CSPLayer(nn.Module):
    """Two half-width branches (one through the blocks), concatenated, re-weighted per channel, fused."""

    def __init__(self, channels, num_blocks, add_identity):
        super().__init__()
        mid = channels // 2
        self.main_conv = ConvBNAct(channels, mid, 1)
        self.short_conv = ConvBNAct(channels, mid, 1)
        self.final_conv = ConvBNAct(2 * mid, channels, 1)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(mid, add_identity) for _ in range(num_blocks)])
        self.attention = ChannelAttention(2 * mid)

    def forward(self, x):
        both = torch.cat([self.blocks(self.main_conv(x)), self.short_conv(x)], dim=1)
        return self.final_conv(self.attention(both))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: the input and its 5/9/13 max-pools side by side."""

    KERNELS = (5, 9, 13)

    def __init__(self, channels):
        super().__init__()
        mid = channels // 2
        self.conv1 = ConvBNAct(channels, mid, 1)
        self.conv2 = ConvBNAct(mid * (len(self.KERNELS) + 1), channels, 1)

    def forward(self, x):
        x = self.conv1(x)
        pooled = [F.max_pool2d(x, k, stride=1, padding=k // 2) for k in self.KERNELS]
        return self.conv2(torch.cat([x] + pooled, dim=1))


class CSPNeXt(nn.Module):
    """[B,3,H,W] -> [B,1024,H/32,W/32]."""

    # (in, out, blocks, residual blocks); the last stage adds SPP and drops the residuals
    STAGES = ((64, 128, 3, True), (128, 256, 6, True), (256, 512, 6, True), (512, 1024, 3, False))

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, 32, 3, stride=2), ConvBNAct(32, 32, 3), ConvBNAct(32, 64, 3))
        for i, (cin, cout, blocks, residual) in enumerate(self.STAGES, 1):
            layers = [ConvBNAct(cin, cout, 3, stride=2)]
            if not residual:
                layers.append(SPPBottleneck(cout))
            layers.append(CSPLayer(cout, blocks, residual))
            setattr(self, f"stage{i}", nn.Sequential(*layers))

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, len(self.STAGES) + 1):
            x = getattr(self, f"stage{i}")(x)
        return x


# ---------------------------------------------------------------------------------------------------------------
# RTMCC head: large-kernel conv -> one token per keypoint -> gated attention unit -> SimCC x/y classifiers

class ScaleNorm(nn.Module):
    """x / (||x|| / sqrt(dim)) * g, with one learned scalar g."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class Scale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.scale


class GatedAttentionUnit(nn.Module):
    """mmpose RTMCCBlock (self-attention, SiLU, no relative-position bias, no RoPE) with a scaled residual.

    One projection gives the gate u, the values v and a shared base from which per-dimension affine maps make
    q and k; the attention kernel is relu(q k^T / sqrt(s))^2, without softmax."""

    def __init__(self, dim=256, expansion=2, s=128):
        super().__init__()
        self.e = dim * expansion
        self.s = s
        self.ln = ScaleNorm(dim)
        self.uv = nn.Linear(dim, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.ones(2, s))
        self.beta = nn.Parameter(torch.zeros(2, s))
        self.o = nn.Linear(self.e, dim, bias=False)
        self.res_scale = Scale(dim)

    def forward(self, x):
        u, v, base = torch.split(F.silu(self.uv(self.ln(x))), [self.e, self.e, self.s], dim=2)
        q, k = torch.unbind(base.unsqueeze(2) * self.gamma + self.beta, dim=2)
        kernel = torch.square(F.relu(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.s)))
        return self.res_scale(x) + self.o(u * torch.bmm(kernel, v))


class RTMCCHead(nn.Module):
    """[B,1024,12,9] -> SimCC logits x [B,133,576] and y [B,133,768]."""

    def __init__(self, channels=1024, feature_size=(9, 12), hidden=256):
        super().__init__()
        tokens = feature_size[0] * feature_size[1]
        self.final_layer = nn.Conv2d(channels, NUM_KEYPOINTS, 7, padding=3)
        self.mlp = nn.Sequential(ScaleNorm(tokens), nn.Linear(tokens, hidden, bias=False))
        self.gau = GatedAttentionUnit(hidden)
        self.cls_x = nn.Linear(hidden, int(INPUT_SIZE[0] * SIMCC_SPLIT_RATIO), bias=False)
        self.cls_y = nn.Linear(hidden, int(INPUT_SIZE[1] * SIMCC_SPLIT_RATIO), bias=False)

    def forward(self, features):
        tokens = self.gau(self.mlp(torch.flatten(self.final_layer(features), 2)))
        return self.cls_x(tokens), self.cls_y(tokens)


class RTMPose(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = CSPNeXt()
        self.head = RTMCCHead()

    def forward(self, x):
        """[B,3,384,288] normalised RGB -> (SimCC x logits [B,133,576], y logits [B,133,768])."""
        return self.head(self.backbone(x))


def load_rtmpose(path, expected, fix):
    """`dw-ll_ucoco_384.pth`: mmengine's `{"state_dict": ...}` (extra top-level keys ignored) or a raw state dict."""
    state = strip_prefix(read_state_dict(path, expected, fix, unwrap=("state_dict",)), "module.")
    return load_strict(RTMPose(), state, path, expected, fix)


# ---------------------------------------------------------------------------------------------------------------
# Top-down inference (mmpose GetBBoxCenterScale -> TopdownAffine -> PoseDataPreprocessor -> flip test -> decode)

def _crop_geometry(box):
    """(x1,y1,x2,y2) -> padded center and (w, h) scale with the input's aspect ratio, in float32 as mmpose."""
    box = np.asarray(box, dtype=np.float32)
    center = (box[2:] + box[:2]) * np.float32(0.5)
    w, h = (box[2:] - box[:2]) * np.float32(BBOX_PADDING)
    aspect = INPUT_SIZE[0] / INPUT_SIZE[1]
    scale = np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], dtype=np.float32)
    return center, scale


def _warp_matrix(center, scale):
    """The image -> crop affine matrix, built from the same three float32 point pairs as mmpose's get_warp_matrix."""
    def third_point(a, b):  # a - b turned 90 degrees anticlockwise about b
        d = a - b
        return b + np.array([-d[1], d[0]], dtype=np.float32)

    out_w, out_h = INPUT_SIZE
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([scale[0] * -0.5, 0.0])
    src[2] = third_point(src[0], src[1])
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = [0.0, out_h * 0.5]
    dst[2] = third_point(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def _check_frames(frames_bgr):
    frames = list(frames_bgr)
    for i, frame in enumerate(frames):
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
            got = f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}"
            raise ValueError(f"estimate_keypoints: frame {i} must be a uint8 BGR numpy array [H,W,3], got {got}")
    # cv2 rejects negative-stride views such as rgb[..., ::-1]
    return [np.ascontiguousarray(frame) for frame in frames]


def _frame_boxes(frames, boxes):
    if boxes is None:
        boxes = [None] * len(frames)
    if len(boxes) != len(frames):
        raise ValueError(f"estimate_keypoints: {len(boxes)} boxes for {len(frames)} frames; give one (x1,y1,x2,y2) "
                         "or None per frame, or boxes=None for whole frames")
    result = []
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        if box is None:
            box = (0, 0, frame.shape[1], frame.shape[0])  # inference_topdown without boxes: the whole image
        if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"estimate_keypoints: box {i} {tuple(box)} is not an (x1,y1,x2,y2) box with x2>x1, y2>y1")
        result.append(box)
    return result


def _predict_logits(network, crops_bgr, device, dtype, flip_test):
    """[N,384,288,3] uint8 BGR crops -> SimCC logits (x [N,133,576], y [N,133,768]), flip-averaged if asked."""
    pixels = torch.from_numpy(crops_bgr).to(device).permute(0, 3, 1, 2).flip(1).float()  # BGR -> RGB
    mean = torch.tensor(PIXEL_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).to(dtype)
    if not flip_test:
        x, y = network(pixels)
        return x.float(), y.float()
    # Two calls rather than one batch of both, as mmpose does: the convolutions' rounding depends on the batch
    # size, and the flip-averaged logits of mirror-symmetric points can tie within that rounding.
    x, y = network(pixels)
    x_flip, y_flip = network(pixels.flip(-1))
    # the mirrored crop's left wrist is the original's right wrist, and its x bins run backwards
    x_flip = x_flip[:, FLIP_INDICES].flip(-1)
    y_flip = y_flip[:, FLIP_INDICES]
    # mmpose averages the logits, not the decoded coordinates (here in float32 whatever the network's dtype)
    return (x.float() + x_flip.float()) * 0.5, (y.float() + y_flip.float()) * 0.5


def _decode(simcc_x, simcc_y):
    """SimCC argmax per axis -> crop coordinates [N,133,2] and scores [N,133] (mmpose get_simcc_maximum)."""
    max_x, loc_x = simcc_x.max(dim=-1)
    max_y, loc_y = simcc_y.max(dim=-1)
    scores = torch.minimum(max_x, max_y)
    locs = torch.stack([loc_x, loc_y], dim=-1).float()
    locs[scores <= 0] = -1.0  # mmpose marks non-positive maxima as invalid (-1 bin) before scaling
    return (locs / SIMCC_SPLIT_RATIO).cpu().numpy(), scores.cpu().numpy()


@torch.no_grad()
def estimate_keypoints(pose, runtime, frames_bgr, boxes=None, flip_test=True, batch_size=8):
    """COCO-WholeBody keypoints of one person per frame, as mmpose `inference_topdown` + `merge_data_samples`.

    pose: the DWPose ManagedModel (`MuseTalkModels.dwpose()`).
    frames_bgr: uint8 frames in **BGR** channel order (cv2's order; convert ComfyUI's RGB IMAGE first), either an
        array [B,H,W,3] or a list of [H,W,3] arrays of different sizes.
    boxes: None (every frame whole, as MuseTalk does) or one (x1,y1,x2,y2) or None per frame.
    flip_test: also run the mirrored crop and average the logits (the DWPose config's default).
    batch_size: frames per network call (twice as many crops with the flip test).
    Returns (keypoints float32 [B,133,2] in frame pixels (x, y), scores float32 [B,133]). Scores are SimCC logit
    maxima, not probabilities; MuseTalk ignores them and uses keypoints[:, 23:91] (the 68 face points).
    """
    frames = _check_frames(frames_bgr)
    geometry = [_crop_geometry(box) for box in _frame_boxes(frames, boxes)]
    keypoints = np.zeros((len(frames), NUM_KEYPOINTS, 2), dtype=np.float32)
    scores = np.zeros((len(frames), NUM_KEYPOINTS), dtype=np.float32)
    runtime.load(pose)
    for start in range(0, len(frames), batch_size):
        runtime.check_interrupt()
        chunk = range(start, min(start + batch_size, len(frames)))
        crops = np.stack([cv2.warpAffine(frames[i], _warp_matrix(*geometry[i]), INPUT_SIZE, flags=cv2.INTER_LINEAR)
                          for i in chunk])
        with pose.computing():
            logits = _predict_logits(pose.module, crops, pose.device, pose.dtype, flip_test)
        crop_points, chunk_scores = _decode(*logits)
        for j, i in enumerate(chunk):
            center, scale = geometry[i]
            # back to the frame in float64 then float32, as mmpose's add_pred_to_datasample does
            keypoints[i] = crop_points[j] / np.array(INPUT_SIZE) * scale + center - 0.5 * scale
            scores[i] = chunk_scores[j]
    return keypoints, scores
