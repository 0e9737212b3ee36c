"""The whole lip-sync job of the command line: a video (or images) and a speech file in, an H.264/AAC mp4 out.

It runs the same stages as the ComfyUI nodes, in the same order, on the standalone runtime:
audio -> features, frames -> faces -> source latents -> mouth latents -> pasted frames. Host memory stays flat in
the video's length: source frames are read a detector batch at a time for the face analysis (whose crops go straight
into the VAE) and again, in runs, to paste on; the UNet makes every mouth latent and is dropped, then the output
frames are decoded, pasted and written a batch at a time, the H.264 encoding on a worker thread. What grows with the
length is small per frame: boxes, compressed blend masks (~20 KB at 1080p), source latents (32 KB), the whisper
encoder output (15 KB per output frame at 25 fps; each batch's tokens are built from it when the UNet needs them)
and the mouth latents (16 KB per output frame).
"""
import os
from dataclasses import dataclass, field

import torch

from .audio import extract_features
from .face import FaceSettings, FrameReader, detect_and_parse
from .face_boxes import parse_bboxes
from .inpaint import cycle_indices
from .lipsync import LatentStream, generate_latents, render_frames
from .video import BackgroundWriter, FrameWindow, VideoWriter, open_frames, read_audio

CHUNK_BATCHES = 8  # a progress line every batch_size * CHUNK_BATCHES frames
# source frames held for pasting: a run read in one go (about 21 frames of 1080p), at least one batch
WINDOW_BYTES = 128 * 2 ** 20


@dataclass
class LipSyncOptions:
    face: FaceSettings = field(default_factory=FaceSettings)
    batch_size: int = 8
    cycle: str = "pingpong"
    fps: float = 25.0  # for image and folder inputs; a video keeps its own rate
    bboxes: str = ""  # JSON: one [x1,y1,x2,y2] or null per frame, replacing detection (like saved coordinates)


def lipsync(models, video, audio, out, options=None, frames_dir=None, log=print):
    """Lip-sync `video` (file, image or folder of frames) to the speech in `audio`; writes `out` (mp4).

    Returns the number of frames written: floor(seconds * fps) for v1.5 (per `options.cycle`).
    """
    options = options or LipSyncOptions()
    source = open_frames(video, options.fps)
    waveform, sample_rate = read_audio(audio)
    log(f"{video}: {source.count} frames of {source.size[1]}x{source.size[0]} at {source.fps:g} fps; "
        f"{audio}: {waveform.shape[1] / sample_rate:.2f} s")
    features = extract_features(models, torch.from_numpy(waveform), sample_rate, source.fps)
    models.release("whisper")

    source_index = cycle_indices(source.count, features.frame_count, options.cycle)
    if not len(source_index):
        raise ValueError(f"{audio}: the speech is shorter than one frame at {source.fps:g} fps; nothing to generate")
    # every cycle starts at frame 0, so the output uses a prefix of the source: frames past it (a long video under a
    # short speech) need no detection, parsing or encoding
    used = int(source_index.max()) + 1
    boxes = parse_bboxes(options.bboxes, source.count, source.size)
    face = options.face
    latents = LatentStream(models, options.batch_size)
    faces, _ = detect_and_parse(models, FrameReader(source.frames, used, source.size), face.bbox_shift,
                                face.extra_margin, face.parsing_mode, face.left_cheek_width, face.right_cheek_width,
                                boxes and boxes[:used], face.face_select, face.smooth, latents.add)
    models.release("s3fd", "dwpose", "face_parsing")
    log(faces.bbox_shift_range)
    sources = latents.sources(faces)
    log(f"generating {len(source_index)} frames from source frames 0..{used - 1} "
        f"({sum(faces.has_face)} with a face)")

    # All mouth latents first (16 KB per frame), then the UNet goes before anything is decoded: its fp32 weights
    # (3.2 GB) and the decoder's activations (1.7 GB at batch 8) never share the memory.
    chunk = options.batch_size * CHUNK_BATCHES
    samples = []
    for start in range(0, len(source_index), chunk):
        index = source_index[start:start + chunk]
        samples.append(generate_latents(models, sources, features.window(start, start + len(index)), index,
                                        options.batch_size))
        log(f"  mouths {start + len(index)}/{len(source_index)}")
    samples = torch.cat(samples)
    del features
    models.release("unet")

    if frames_dir:
        os.makedirs(frames_dir, exist_ok=True)
    height, width = source.size
    window = FrameWindow(source, max(options.batch_size, WINDOW_BYTES // (height * width * 3)))
    writer = BackgroundWriter(VideoWriter(out, source.fps, source.size, audio=(waveform, sample_rate)))
    try:
        for batch in render_frames(models, faces, samples, source_index, window, options.batch_size):
            if frames_dir:
                _write_pngs(batch.numpy(), frames_dir, writer.frames_written)
            writer.write(batch.numpy())
            if writer.frames_written % chunk < len(batch) or writer.frames_written == len(source_index):
                log(f"  frames {writer.frames_written}/{len(source_index)}")
        writer.close()
    finally:
        writer.abort()  # after an error or interrupt: stop the encoding thread (nothing to do after close)
    return writer.frames_written


def _write_pngs(frames, folder, first):
    from PIL import Image

    for offset, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{first + offset:08d}.png"))
