"""S3FD face detector (the face_alignment variant MuseTalk vendors), key-compatible with `s3fd-619a316812.pth`.

MuseTalk uses its box only to tell whether a frame holds a face and as a fallback crop. The
post-processing follows the official `batch_detect` + `nms` + `score > 0.5` exactly, but runs batched on the device:

    logits --softmax--> face score per anchor --score > 0.05--> candidates --decode--> boxes --NMS 0.3--> score > 0.5

Two official quirks are kept for parity: the means [104, 117, 123] (BGR order) are subtracted from RGB pixels, and
the NMS areas use the `+1` pixel convention of the original Caffe code.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..weights import load_strict, read_state_dict

PIXEL_MEANS = (104.0, 117.0, 123.0)  # BGR means, subtracted from RGB pixels as the official does
CANDIDATE_SCORE = 0.05
NMS_IOU = 0.3
FACE_SCORE = 0.5
VARIANCES = (0.1, 0.2)  # centre and log-size scales of the SSD box encoding
# Frames per forward pass are chosen so that a batch holds at most this many pixels. Memory peaks at about 0.7 KB
# per input pixel (two fp32 64-channel maps at full resolution; bench/README.md), so two 1080p frames need about
# 3 GB, while 384x384 frames still go 28 at a time. One 1080p frame already keeps a GPU busy,
# so larger batches would cost memory and gain little speed.
MAX_BATCH_PIXELS = 2 * 1920 * 1080

# (name, input channels, output channels, convolutions) of the VGG16 stages; each stage ends in a 2x2 max-pool
VGG_STAGES = [("conv1", 3, 64, 2), ("conv2", 64, 128, 2), ("conv3", 128, 256, 3), ("conv4", 256, 512, 3),
              ("conv5", 512, 512, 3)]
# (feature map, channels, confidence channels) of the six detection heads, strides 4, 8, ..., 128
HEADS = [("conv3_3_norm", 256, 4), ("conv4_3_norm", 512, 2), ("conv5_3_norm", 512, 2), ("fc7", 1024, 2),
         ("conv6_2", 512, 2), ("conv7_2", 256, 2)]


class L2Norm(nn.Module):
    """Per-pixel L2 normalisation over channels with a learned per-channel scale."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        # in float32 whatever the network's dtype: the sum of squares of a VGG map overflows fp16 (65504) as soon as
        # its values reach ~16 per channel, and then every box of that head vanishes
        x32 = x.float()
        norm = x32.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
        return (x32 / norm * self.weight.float().view(1, -1, 1, 1)).to(x.dtype)


class S3FD(nn.Module):
    def __init__(self):
        super().__init__()
        for stage, cin, cout, convs in VGG_STAGES:
            for i in range(1, convs + 1):
                setattr(self, f"{stage}_{i}", nn.Conv2d(cin if i == 1 else cout, cout, 3, 1, 1))
        # padding 3 on a 3x3 kernel grows the map by 4: the official layer, kept because anchors depend on it
        self.fc6 = nn.Conv2d(512, 1024, 3, 1, 3)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.conv6_1 = nn.Conv2d(1024, 256, 1)
        self.conv6_2 = nn.Conv2d(256, 512, 3, 2, 1)
        self.conv7_1 = nn.Conv2d(512, 128, 1)
        self.conv7_2 = nn.Conv2d(128, 256, 3, 2, 1)
        self.conv3_3_norm = L2Norm(256)
        self.conv4_3_norm = L2Norm(512)
        self.conv5_3_norm = L2Norm(512)
        for name, channels, conf in HEADS:
            setattr(self, f"{name}_mbox_conf", nn.Conv2d(channels, conf, 3, 1, 1))
            setattr(self, f"{name}_mbox_loc", nn.Conv2d(channels, 4, 3, 1, 1))

    def _vgg_stage(self, stage, convs, x):
        for i in range(1, convs + 1):
            x = F.relu(getattr(self, f"{stage}_{i}")(x), inplace=True)
        return x

    def forward(self, x):
        """[B,3,H,W] mean-subtracted pixels -> per head (stride 4..128): ([B,2,h,w] logits, [B,4,h,w] offsets)."""
        features = {}
        for stage, _, _, convs in VGG_STAGES:
            x = self._vgg_stage(stage, convs, x)
            features[f"{stage}_{convs}"] = x
            x = F.max_pool2d(x, 2, 2)
        x = features["fc7"] = F.relu(self.fc7(F.relu(self.fc6(x))))
        x = features["conv6_2"] = F.relu(self.conv6_2(F.relu(self.conv6_1(x))))
        features["conv7_2"] = F.relu(self.conv7_2(F.relu(self.conv7_1(x))))
        for name in ("conv3_3", "conv4_3", "conv5_3"):
            features[f"{name}_norm"] = getattr(self, f"{name}_norm")(features[name])

        outputs = []
        for name, _, _ in HEADS:
            conf = getattr(self, f"{name}_mbox_conf")(features[name])
            if conf.shape[1] == 4:
                # "max-out background": the stride-4 head scores three background hypotheses and keeps the largest
                conf = torch.cat([conf[:, :3].amax(dim=1, keepdim=True), conf[:, 3:]], dim=1)
            outputs.append((conf, getattr(self, f"{name}_mbox_loc")(features[name])))
        return outputs


def load_s3fd(path, expected, fix):
    """`s3fd-619a316812.pth`: a raw state dict of face_alignment's S3FD."""
    # the file is a raw dict; unwrapping a "state_dict" container too turns another network's mmpose/lightning file
    # into a "does not match the network" error that lists the keys, instead of a vaguer "no tensor dictionary"
    state = read_state_dict(path, expected, fix, unwrap=("state_dict",))
    return load_strict(S3FD(), state, path, expected, fix)


# ---- post-processing ----------------------------------------------------------------------------------------------

def score_anchors(net, images):
    """Run the network and decode every anchor.

    images: [B,H,W,3] uint8 RGB on the network's device; the network may hold any float dtype, which its input gets.
    Returns (scores [B,A] face probabilities, boxes [B,A,4] x1,y1,x2,y2 in pixels), float32, anchors in the official
    candidate order: head by head (stride 4 first), then row-major over the head's map.
    """
    means = torch.tensor(PIXEL_MEANS, device=images.device)
    x = (images.float() - means).permute(0, 3, 1, 2)
    dtype = next(net.parameters()).dtype
    scores, boxes = [], []
    for level, (conf, loc) in enumerate(net(x.to(dtype))):
        # softmax and box decoding in float32: exp() of half-precision offsets loses the box corners' pixels
        conf, loc = conf.float(), loc.float()
        stride = 2 ** (level + 2)
        batch, _, height, width = conf.shape
        scores.append(F.softmax(conf, dim=1)[:, 1].reshape(batch, -1))
        # each map position has one square anchor of side 4*stride centred on its stride cell
        ys, xs = torch.meshgrid(torch.arange(height, device=x.device), torch.arange(width, device=x.device),
                                indexing="ij")
        centres = torch.stack([xs, ys], dim=-1).reshape(-1, 2) * stride + stride / 2
        boxes.append(_decode(loc.permute(0, 2, 3, 1).reshape(batch, -1, 4), centres.float(), float(stride * 4)))
    return torch.cat(scores, dim=1), torch.cat(boxes, dim=1)


def _decode(loc, centres, size):
    """SSD decoding of offsets [B,N,4] against anchors (centres [N,2], side `size`) -> corner boxes [B,N,4].

    The operations follow the official `batch_decode` one by one, so that float32 rounding matches."""
    centre = centres + loc[..., :2] * VARIANCES[0] * size
    wh = size * torch.exp(loc[..., 2:] * VARIANCES[1])
    top_left = centre - wh / 2
    return torch.cat([top_left, wh + top_left], dim=-1)


def nms(boxes, scores, valid, threshold=NMS_IOU):
    """Greedy non-maximum suppression for a batch of frames at once, as the official `bbox.nms`.

    boxes [B,A,4], scores [B,A], valid [B,A] bool (the candidates; the rest is ignored).
    Returns [B] tensors of kept anchor indices, highest score first.
    """
    # official: numpy `argsort()[::-1]`; a stable ascending sort reversed gives its order on ties when numpy's sort
    # happens to be stable (it may not be: its SIMD sorts are not)
    order = torch.argsort(torch.where(valid, scores, -1.0), dim=1, stable=True).flip(1)
    counts = valid.sum(dim=1)
    order = order[:, :int(counts.max())]  # the candidates sort first: probabilities are >= 0, the rest is set to -1
    x1, y1, x2, y2 = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4)).unbind(-1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    alive = torch.arange(order.shape[1], device=order.device) < counts[:, None]
    rows = torch.arange(order.shape[0], device=order.device)
    picked, picked_valid = [], []
    # one iteration keeps one box in every frame that still has candidates left
    while bool(alive.any()):
        has_any = alive.any(dim=1)
        best = alive.to(torch.uint8).argmax(dim=1)  # first alive position = highest remaining score
        bx1, by1, bx2, by2 = (c[rows, best, None] for c in (x1, y1, x2, y2))
        w = torch.clamp(torch.minimum(bx2, x2) - torch.maximum(bx1, x1) + 1, min=0.0)
        h = torch.clamp(torch.minimum(by2, y2) - torch.maximum(by1, y1) + 1, min=0.0)
        overlap = w * h / (areas[rows, best, None] + areas - w * h)
        alive &= overlap <= threshold
        alive[rows, best] = False
        picked.append(best)
        picked_valid.append(has_any)
    if not picked:
        return [order.new_zeros(0) for _ in range(order.shape[0])]
    picked, picked_valid = torch.stack(picked, dim=1), torch.stack(picked_valid, dim=1)
    return [order[b, picked[b][picked_valid[b]]] for b in range(order.shape[0])]


@dataclass
class FrameDetections:
    """One frame's detection stages, on the device.

    candidates: [K,5] x1,y1,x2,y2,score of every anchor scoring above 0.05, in the official candidate order.
    keep: [M] indices into `candidates` that survive NMS, highest score first.
    """

    candidates: torch.Tensor
    keep: torch.Tensor

    @property
    def after_nms(self):
        return self.candidates[self.keep]

    @property
    def faces(self):
        """[F,5] the boxes the official returns: after NMS, score above 0.5, highest score first."""
        kept = self.after_nms
        return kept[kept[:, 4] > FACE_SCORE]


def detect_batch(net, images, candidate_score=CANDIDATE_SCORE):
    """images [B,H,W,3] uint8 RGB on the network's device -> B FrameDetections.

    `candidate_score` is the official 0.05; `detect_faces` passes 0.5, see there."""
    scores, boxes = score_anchors(net, images)
    valid = scores > candidate_score
    keeps = nms(boxes, scores, valid)
    detections = torch.cat([boxes, scores[..., None]], dim=-1)
    # anchor index -> position in the frame's candidate list
    candidate_index = torch.cumsum(valid, dim=1) - 1
    return [FrameDetections(detections[b][valid[b]], candidate_index[b, keeps[b]]) for b in range(len(images))]


def detect_faces(detector, runtime, frames_rgb):
    """Face boxes for every frame, as the official S3FD `detect_from_batch` returns them.

    detector: the ManagedModel of `load_s3fd`; frames_rgb: uint8 [B,H,W,3] array or a list of [H,W,3] arrays (sizes
    may differ; frames of one size are batched together).
    Returns a list of float32 arrays [F,5] (x1,y1,x2,y2,score), one per frame, highest score first.
    """
    frames = [np.asarray(f) for f in frames_rgb]
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"detect_faces: frame {i} must be a uint8 RGB image [H,W,3], "
                             f"got {frame.dtype} {list(frame.shape)}")
    runtime.load(detector)
    by_size = {}
    for i, frame in enumerate(frames):
        by_size.setdefault(frame.shape[:2], []).append(i)
    results = [None] * len(frames)
    with torch.inference_mode(), detector.computing():
        for (height, width), indices in by_size.items():
            per_batch = max(1, MAX_BATCH_PIXELS // (height * width))
            for start in range(0, len(indices), per_batch):
                runtime.check_interrupt()
                chunk = indices[start:start + per_batch]
                images = torch.from_numpy(np.stack([frames[i] for i in chunk])).to(detector.device)
                # NMS over the boxes scoring above 0.5 only gives the same faces as over all candidates: greedy NMS
                # lets a box be suppressed only by kept boxes of equal or higher score, so boxes at or below 0.5
                # never decide about one above it. It saves most NMS rounds on real footage.
                for i, found in zip(chunk, detect_batch(detector.module, images, candidate_score=FACE_SCORE)):
                    results[i] = found.faces.cpu().numpy()
    return results


def first_face_box(dets):
    """The box MuseTalk uses: the first detection clipped at 0 and truncated to ints, or None without a face.

    dets: [F,5] array from `detect_faces`. Returns (x1, y1, x2, y2)."""
    if len(dets) == 0:
        return None
    x1, y1, x2, y2 = (int(v) for v in np.clip(dets[0, :4], 0, None))
    return x1, y1, x2, y2
