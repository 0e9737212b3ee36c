"""The whole lip-sync job, frames and speech in, an H.264/AAC mp4 out: one engine loop with two callers, the command
line (`lipsync`: files) and the ComfyUI node MuseTalkLipSyncVideo (`lipsync_stream`: any FrameSource).

It runs the same stages as the five ComfyUI nodes, in the same order and with the same functions:
audio -> features, frames -> faces -> source latents -> mouth latents -> pasted frames. Host memory stays flat in
the video's length: source frames are read a detector batch at a time for the face analysis (whose crops go straight
into the VAE) and again, in runs, to paste on; then, CHUNK_FRAMES output frames at a time, the UNet makes their mouth
latents, which are decoded, pasted and written a batch at a time (the UNet stays loaded while the VAE decodes,
except on a CPU with `release_networks`, where host memory is the limit), the next batch's source frames read and
the H.264 encoding done on worker threads meanwhile (`video.ReadAhead`, `video.BackgroundWriter`). What grows with
the length is small per frame: boxes, compressed blend masks (~20 KB at 1080p), source latents (32 KB) and the
whisper encoder output (15 KB per output frame at 25 fps; each batch's tokens are built from it when the UNet needs
them).
"""
import logging
import os
from dataclasses import dataclass, field

import torch

from .audio_offset import extract_features_with_offset
from .face import FaceSettings, FrameReader, detect_and_parse
from .face_boxes import parse_bboxes
from .inpaint import cycle_indices
from .lipsync import LatentStream, generate_latents, render_frames, unet_frames
from .outputs import PendingFolder, check_output_folder, check_video_output
from .runtime import Progress
from .silence import SilenceSettings, mouth_weights
from .video import BackgroundWriter, FrameWindow, ReadAhead, VideoWriter, open_frames, read_audio

# source frames held for pasting: a run read in one go (about 21 frames of 1080p), at least one batch
WINDOW_BYTES = 128 * 2 ** 20
# output frames made at a time: a chunk's mouth latents (16 KB each) are made by the UNet, then decoded, pasted and
# written before the next chunk's, so they never pile up over a long video
CHUNK_FRAMES = 1024

log = logging.getLogger("musetalk")


@dataclass
class LipSyncOptions:
    face: FaceSettings = field(default_factory=FaceSettings)
    batch_size: int = 8
    cycle: str = "pingpong"
    fps: float = 25.0  # for image and folder inputs; a video keeps its own rate
    bboxes: str = ""  # JSON: one [x1,y1,x2,y2] or null per frame, replacing detection (like saved coordinates)
    bboxes_name: str = "bboxes"  # what error messages call the boxes (the command line: "--bboxes FILE")
    # drop each network once its stage is done (the command line: one job per process); ComfyUI keeps them for the
    # next run and lets its model management decide
    release_networks: bool = True
    silence: SilenceSettings = field(default_factory=SilenceSettings)
    audio_offset_ms: float = 0.0  # positive: the mouth moves later (audio_offset.py)


@dataclass
class PreparedVideo:
    """What the lip sync needs from the video besides its frames, when it was computed before (a saved avatar)."""

    faces: object  # FaceTrack
    sources: object  # SourceLatents


def lipsync(models, video, audio, out, options=None, frames_dir=None, log=log.info):
    """Lip-sync `video` (file, image or folder of frames) to the speech in `audio`; writes `out` (mp4).

    Returns the number of frames written: floor(seconds * fps) for v1.5 (per `options.cycle`).
    """
    options = options or LipSyncOptions()
    check_lipsync_outputs(out, frames_dir, video, audio)
    source = open_frames(video, options.fps)
    boxes = parse_bboxes(options.bboxes, source.count, source.size, options.bboxes_name)
    waveform, sample_rate = read_audio(audio)
    log(f"{video}: {source.count} frames of {source.size[1]}x{source.size[0]} at {source.fps:g} fps; "
        f"{audio}: {waveform.shape[1] / sample_rate:.2f} s")
    return lipsync_stream(models, source, (waveform, sample_rate), out, options, boxes, frames_dir=frames_dir,
                          log=log)


def check_lipsync_outputs(out, frames_dir, video, audio):
    """Refuse, before any work, outputs that could not be written or would overwrite `video` or `audio`."""
    check_video_output(out, (video, audio))
    if frames_dir:
        check_output_folder(frames_dir, (video, audio, out))


def lipsync_stream(models, source, speech, out, options=None, boxes=None, prepared=None, on_frames=None,
                   frames_dir=None, log=log.info):
    """The engine loop: lip-sync the frames of `source` (a video.FrameSource) to `speech`; writes `out` (mp4).

    speech: (float32 [C,T] numpy in -1..1, sample rate). boxes: per-frame face boxes replacing detection (already
    parsed, see `face_boxes.parse_bboxes`) or None. prepared: a PreparedVideo of `source` (face analysis and VAE
    encoding are then skipped). on_frames(first, batch): called with every uint8 RGB batch [B,H,W,3] of the output
    before it is encoded, `first` being its first frame's number. frames_dir: also write every output frame there
    as PNG (`00000000.png`, ...). The output holds one frame per audio frame (per `options.cycle`) and the speech
    cut to that length. Video and PNGs are written under temporary names that replace `out` and `frames_dir` when
    whole: after an error or an interrupt earlier ones are kept as they were and nothing is left behind.
    Returns the number of frames written.
    """
    options = options or LipSyncOptions()
    waveform, sample_rate = speech
    log("audio features (whisper)")
    features = extract_features_with_offset(models, torch.from_numpy(waveform), sample_rate, source.fps,
                                            options.audio_offset_ms)
    _release(models, options, "whisper")

    source_index = cycle_indices(source.count, features.frame_count, options.cycle)
    if not len(source_index):
        raise ValueError(f"the speech is shorter than one frame at {source.fps:g} fps; nothing to generate")
    # every cycle starts at frame 0, so the output uses a prefix of the source: frames past it (a long video under a
    # short speech) need no detection, parsing or encoding
    used = int(source_index.max()) + 1
    if prepared is None:
        log(f"faces of source frames 0..{used - 1}: {'crops' if boxes else 'detection, crops'}, masks and VAE "
            "encoding")
        prepared = analyse(models, FrameReader(source.frames, used, source.size), options, boxes and boxes[:used])
        log(prepared.faces.bbox_shift_range)
    faces = prepared.faces
    log(f"generating {len(source_index)} frames from source frames 0..{used - 1} "
        f"({sum(faces.has_face[:used])} with a face)")
    weights = mouth_weights(features.loudness[:len(source_index)], source.fps, options.silence)
    if options.silence.mode == "source":
        fading = int(((weights > 0) & (weights < 1)).sum())
        log(f"silence: {int((weights == 0).sum())} frames keep the source mouth, {fading} fade in or out")

    height, width = source.size
    window = FrameWindow(source, max(options.batch_size, WINDOW_BYTES // (height * width * 3)))
    writer = BackgroundWriter(VideoWriter(out, source.fps, source.size, audio=(waveform, sample_rate)))
    chunks = output_chunks(len(source_index), unet_frames(prepared.sources, source_index, weights),
                           options.batch_size, CHUNK_FRAMES)
    progress = models.runtime.progress(len(source_index))
    pngs = reader = None
    log(f"frames: generating, decoding, pasting and writing {len(source_index)} in {len(chunks)} chunk(s)")
    try:
        # the PNGs go to a temporary folder beside frames_dir that replaces it once the video is whole (outputs.py)
        pngs = PendingFolder(frames_dir) if frames_dir else None
        # the source frames of the next batch are read while this one is decoded and pasted (chunks end between
        # batches, so the batches are those of one pass)
        reader = ReadAhead(window, [source_index[start:start + options.batch_size].tolist()
                                    for start in range(0, len(source_index), options.batch_size)])
        for first, stop in chunks:
            # the frames' bar is the job's one bar: a chunk's UNet steps are not counted on a bar of their own
            samples = generate_latents(models, prepared.sources, features, source_index[first:stop],
                                       options.batch_size, weights[first:stop], first, Progress(stop - first))
            if models.runtime.device.type == "cpu":
                # the UNet's weights and the decoder's activations would be resident together: in host memory that
                # is the job's peak, while loading the UNet again for the next chunk costs a small fraction of the
                # chunk's work on a CPU (on a GPU, copying its weights over again would be a sizeable share of a
                # chunk's work, so it stays there)
                _release(models, options, "unet")
            for batch in render_frames(models, faces, samples, source_index[first:stop], reader,
                                       options.batch_size, weights[first:stop], progress):
                frames = batch.numpy()
                if pngs:
                    _write_pngs(frames, pngs.temp, writer.frames_written)
                if on_frames is not None:
                    on_frames(writer.frames_written, frames)
                writer.write(frames)
        writer.close()
        if pngs:
            pngs.commit()
    finally:
        if reader:
            reader.close()
        writer.abort()  # after an error or interrupt: stop the encoding thread, delete the unfinished file
        if pngs:
            pngs.discard()
    _release(models, options, "unet")
    return writer.frames_written


def output_chunks(count, active, batch_size, target):
    """[(first, stop)] ranges of the `count` output frames, each about `target` long, together covering them all.

    active: positions of the frames that get a UNet step (`lipsync.unet_frames`). A cut falls only after a whole
    number of batches of output frames (the decode's batches) and of active frames (the UNet's), so every network
    sees the batches of one pass over all frames and the chunks change no number; without such a place the rest is
    one chunk."""
    is_active = torch.zeros(count, dtype=torch.bool)
    is_active[active] = True
    active_before = torch.cumsum(is_active, 0).tolist()  # active_before[b - 1]: active frames among 0..b-1
    chunks, first, cut = [], 0, target
    while cut < count:
        if cut % batch_size == 0 and active_before[cut - 1] % batch_size == 0:
            chunks.append((first, cut))
            first, cut = cut, cut + target
        else:
            cut += 1
    return chunks + [(first, count)]


def analyse(models, frames, options, boxes=None, crops_to=None):
    """PreparedVideo of the frames of `frames` (a face.FrameReader), read a detector batch at a time: the face track
    and the source latents, the face crops going straight into the VAE. boxes: as for `lipsync_stream`, one per
    frame. crops_to(frame indices, uint8 crops [n,256,256,3]): also called with every batch of face crops."""
    latents = LatentStream(models, options.batch_size)

    def take(indices, crops):
        if crops_to is not None:
            crops_to(indices, crops)
        latents.add(indices, crops)

    faces, _ = detect_and_parse(models, frames, options.face, boxes, take)
    _release(models, options, "s3fd", "dwpose", "face_parsing")
    return PreparedVideo(faces, latents.sources(faces))


def _release(models, options, *components):
    if options.release_networks:
        models.release(*components)


def _write_pngs(frames, folder, first):
    from PIL import Image

    for offset, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{first + offset:08d}.png"))
