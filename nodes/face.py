"""FaceDetectAndParse: face boxes, network crops and blend masks for a clip, computed once and reused per audio."""

import numpy as np
import torch

from ..musetalk.face import FaceSettings, FrameReader, detect_and_parse
from ..musetalk.face_boxes import FACE_SELECT, parse_bboxes
from . import inputs, sockets
from .images import flat_frames, to_image, to_uint8

BBOX_SHIFT_TIP = ("Moves the top of the face box (px). The box top is the nose bridge mirrored across the "
                  "bridge-to-chin distance; a positive value moves the bridge point down, so the box starts lower "
                  "and the mouth opens more, a negative value moves it up (less mouth opening). The bbox_shift_range "
                  "output prints the useful range for this clip. The official v1.5 scripts use 0 (recommended for "
                  "v1.5); v1.0 often needs tuning. Not applied to boxes given through bboxes.")
PARSING_TIP = ("Which face parts the paste-back mask keeps. jaw (v1.5 default): skin grown around the jaw, no nose, "
               "mouth and lips; raw: skin, mouth and lips; neck: raw plus the neck; v1.0: the original v1.0 mask "
               "(all face parts 1-13, wider blur), use it with v1.0 weights for the original look.")
SELECT_TIP = ("Which face to animate when several are visible. first: the detector's most confident face with "
              "landmarks from the whole image (official behaviour); largest / left-most / right-most: that face, with "
              "landmarks searched inside it; index: the face_index-th face counted from the left (0 = left-most).")


class FaceDetectAndParse:
    DESCRIPTION = ("Finds the face in every frame (S3FD + DWPose, the official box rule), crops the 256x256 network "
                   "input and builds the paste-back masks. Frames without a face pass through unchanged later.")
    CATEGORY = "MuseTalk"
    RETURN_TYPES = ("MUSETALK_FACES", "IMAGE", "STRING")
    RETURN_NAMES = ("faces", "crops", "bbox_shift_range")
    OUTPUT_TOOLTIPS = ("Per-frame boxes and masks for MuseTalk inference and paste-back (MuseTalk Face Masks shows "
                       "the masks).",
                       "The 256x256 face crops the network sees (black where a frame has no face).",
                       "The bbox_shift range for this clip, as the official code prints it.")
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls):
        from ..musetalk.masks import PARSING_MODES

        return {
            "required": {
                "model": sockets.MODEL,
                "images": ("IMAGE", {"tooltip": "The video frames; RGBA alpha is ignored."}),
                "bbox_shift": ("INT", {"default": 0, "min": -100, "max": 100, "step": 1, "tooltip": BBOX_SHIFT_TIP}),
                "extra_margin": ("INT", {"default": 10, "min": 0, "max": 40, "step": 1,
                                         "tooltip": "v1.5 only: px added below the chin so the jaw can move "
                                                    "(ignored for v1.0)."}),
                "parsing_mode": (list(PARSING_MODES), {"default": "jaw", "tooltip": PARSING_TIP}),
                "left_cheek_width": ("INT", {"default": 90, "min": 20, "max": 160, "step": 5,
                                             "tooltip": "jaw mode: width (px on the 512 parsing map) of the left "
                                                        "cheek band where the mask is not grown."}),
                "right_cheek_width": ("INT", {"default": 90, "min": 20, "max": 160, "step": 5,
                                              "tooltip": "jaw mode: the same for the right cheek."}),
            },
            "optional": {
                "bboxes": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "Optional JSON face boxes instead of detection: one [x1, y1, x2, y2] "
                                                 "or null (no face) per frame, or one box for all frames. Empty = "
                                                 "detect."}),
                "face_select": (list(FACE_SELECT), {"default": "first", "tooltip": SELECT_TIP}),
                "face_index": ("INT", {"default": 0, "min": 0, "max": 32,
                                       "tooltip": "face_select = index: which face, counted from the left."}),
                "smooth_boxes": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.5,
                                           "tooltip": "Steadies jittery boxes: Gaussian sigma in frames over runs of "
                                                      "face frames (never across frames without a face). "
                                                      "0 = official boxes."}),
            },
        }

    def detect(self, model, images, bbox_shift, extra_margin, parsing_mode, left_cheek_width, right_cheek_width,
               bboxes="", face_select="first", face_index=0, smooth_boxes=0.0):
        frames = image_frames(inputs.image(images, "FaceDetectAndParse", "images"))
        boxes = parse_bboxes(bboxes, frames.count, frames.size)
        settings = face_settings(bbox_shift, extra_margin, parsing_mode, left_cheek_width, right_cheek_width,
                                 face_select, face_index, smooth_boxes)
        faces, crops = detect_and_parse(model, frames, settings, boxes)
        return faces, to_image(crops), faces.bbox_shift_range


class MuseTalkFaceMasks:
    DESCRIPTION = ("The paste-back blend mask of every frame at frame size (0..1, zeros where a frame has no face), "
                   "as Blend And Decode applies it. Built only here: the faces keep crop-sized masks.")
    CATEGORY = "MuseTalk"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("masks",)
    FUNCTION = "masks"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"faces": sockets.FACES}}

    def masks(self, faces):
        return (frame_masks(faces),)


def image_frames(images):
    """A ComfyUI IMAGE batch as the engine's FrameReader: frames made uint8 a detector batch at a time, so that no
    full-size copy of the clip is made beside ComfyUI's own IMAGE."""
    images = flat_frames(images)
    return FrameReader(lambda start, stop: to_uint8(images[start:stop]), images.shape[0], tuple(images.shape[1:3]))


def frame_masks(faces, indices=None):
    """The blend masks of a FaceTrack placed on the frame: MASK float32 [B,H,W] in 0..1 (zeros without a face)."""
    indices = range(len(faces)) if indices is None else indices
    height, width = faces.frame_size
    masks = torch.zeros((len(indices), height, width), dtype=torch.float32)
    for row, i in enumerate(indices):
        if faces.blend[i] is None:
            continue
        mask, (x0, y0, x1, y1) = faces.blend[i]
        # the crop box may reach past the frame (the official PIL crop pads there); keep the overlap
        fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if fx1 <= fx0 or fy1 <= fy0:
            continue
        part = mask[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
        masks[row, fy0:fy1, fx0:fx1] = torch.from_numpy(part.astype(np.float32) / 255.0)
    return masks


def face_settings(bbox_shift, extra_margin, parsing_mode, left_cheek_width, right_cheek_width, face_select="first",
                  face_index=0, smooth_boxes=0.0):
    """The engine's FaceSettings from the inputs of FaceDetectAndParse (which MuseTalkLipSyncVideo shares)."""
    select = f"index:{int(face_index)}" if face_select == "index" else face_select
    return FaceSettings(int(bbox_shift), int(extra_margin), parsing_mode, int(left_cheek_width),
                        int(right_cheek_width), select, float(smooth_boxes))


NODE_CLASS_MAPPINGS = {"FaceDetectAndParse": FaceDetectAndParse, "MuseTalkFaceMasks": MuseTalkFaceMasks}
NODE_DISPLAY_NAME_MAPPINGS = {"FaceDetectAndParse": "MuseTalk Face Detect And Parse",
                              "MuseTalkFaceMasks": "MuseTalk Face Masks"}
