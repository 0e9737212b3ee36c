"""LatentLipInpaint, BlendAndDecode and MuseTalkPasteFaces: the generated mouth per audio frame, then the frames.

The LATENT carries, besides `samples`, which source frame each latent belongs to (`musetalk_source_index`), the
frame rate (`musetalk_fps`) and each frame's mouth weight (`musetalk_mouth_weight`, 0 where a pause keeps the
source mouth): BlendAndDecode and MuseTalkPasteFaces read them to put every face on its own frame.
"""
import numpy as np
import torch

from ..musetalk.compose import pasted_batches
from ..musetalk.inpaint import cycle_indices
from ..musetalk.lipsync import SourceLatents, generate_latents, render_frames
from ..musetalk.silence import SilenceSettings, mouth_weights
from ..musetalk.video import fit_audio
from . import comfy_runtime, inputs, sockets
from .images import to_image, to_uint8


class LatentLipInpaint:
    DESCRIPTION = ("One MuseTalk UNet step per audio frame: the lower half of each face is repainted to match the "
                   "speech. The LATENT holds one 32x32 latent per output frame in ComfyUI's convention (unscaled, "
                   "as VAE Encode gives them): core VAE Decode with the sd-vae-ft-mse weights shows the generated "
                   "256x256 faces.")
    CATEGORY = "MuseTalk"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "inpaint"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": sockets.MODEL,
            "faces": sockets.FACES,
            "crops": sockets.CROPS,
            "features": ("MUSETALK_WHISPER_FEATURES",),
            "batch_size": sockets.BATCH_SIZE,
            "cycle": sockets.CYCLE,
        }, "optional": {
            "silence": sockets.SILENCE,
            "silence_threshold_db": sockets.SILENCE_THRESHOLD_DB,
        }}

    def inpaint(self, model, faces, crops, features, batch_size, cycle, silence="generate",
                silence_threshold_db=SilenceSettings.threshold_dbfs):
        crops = inputs.image(crops, "LatentLipInpaint", "crops")
        if len(crops) != len(faces):
            raise ValueError(f"{len(crops)} crops for {len(faces)} frames of faces: connect the crops and faces "
                             "outputs of the same FaceDetectAndParse node")
        sources = SourceLatents.encode(model, faces, to_uint8(crops), batch_size)
        source_index = cycle_indices(len(faces), features.frame_count, cycle)
        weights = mouth_weights(features.loudness[:len(source_index)], features.fps,
                                SilenceSettings(silence, silence_threshold_db))
        samples = generate_latents(model, sources, features, source_index, batch_size, weights)
        return (latent_output(samples.cpu(), source_index, features.fps, weights),)


class PastedFrames:
    """What BlendAndDecode and MuseTalkPasteFaces share: one frame per LATENT frame out, and the audio cut to them."""

    CATEGORY = "MuseTalk"
    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("images", "audio")


class BlendAndDecode(PastedFrames):
    DESCRIPTION = ("Decodes the generated mouths and blends them into the source frames with the face-parsing "
                   "mask. Returns one frame per audio frame, and the audio cut to exactly that length.")
    FUNCTION = "blend"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": sockets.MODEL,
            "latent": ("LATENT", {"tooltip": "From LatentLipInpaint (or any 32x32 SD-1.x latents, unscaled as VAE "
                                             "Encode gives them: one per output frame, in pingpong order)."}),
            "faces": sockets.FACES,
            "images": sockets.SOURCE_FRAMES,
            "batch_size": sockets.BATCH_SIZE,
        }, "optional": {
            "audio": sockets.FIT_AUDIO,
        }}

    def blend(self, model, latent, faces, images, batch_size, audio=None):
        images = inputs.source_frames(images, faces, "BlendAndDecode")
        samples = latent["samples"]
        source_index, weights = _frame_order(latent, faces, len(samples))
        batches = render_frames(model, faces, samples, source_index, lambda idx: to_uint8(images[idx]), batch_size,
                                weights)
        output = _gathered(batches, len(source_index), images)
        return output, _fit(audio, len(output), latent.get("musetalk_fps"))


class MuseTalkPasteFaces(PastedFrames):
    DESCRIPTION = ("Pastes generated faces from any source into the frames with the face-parsing mask: the "
                   "LATENT decoded by core VAE Decode (256x256), optionally sharpened by a face restorer or "
                   "upscale model (512 or 1024). Each face goes onto the source frame the LATENT names; frames "
                   "without a face and silent frames kept by silence = source come back unchanged. With 256x256 "
                   "faces the result equals MuseTalk Blend And Decode.")
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generated": ("IMAGE", {"tooltip": (
                "One square face per output frame, in the LATENT's order: VAE Decode of LatentLipInpaint's LATENT, "
                "or the upscaled/restored faces (any size; each is resized to its face box).")}),
            "latent": ("LATENT", {"tooltip": "The LatentLipInpaint LATENT the faces were decoded from: it says which "
                                             "source frame each face belongs to."}),
            "faces": sockets.FACES,
            "images": sockets.SOURCE_FRAMES,
            "batch_size": sockets.BATCH_SIZE,
        }, "optional": {
            "audio": sockets.FIT_AUDIO,
        }}

    def paste(self, generated, latent, faces, images, batch_size, audio=None):
        images = inputs.source_frames(images, faces, "MuseTalkPasteFaces")
        source_index, weights = _frame_order(latent, faces, len(latent["samples"]))
        _check_generated(generated, len(source_index))

        def restored(start, active):
            return to_uint8(generated[start:start + batch_size][active])

        batches = pasted_batches(comfy_runtime.current_runtime(), faces, source_index,
                                 lambda idx: to_uint8(images[idx]), batch_size, restored, weights)
        output = _gathered((frames for frames, _ in batches), len(source_index), images)
        return output, _fit(audio, len(output), latent.get("musetalk_fps"))


def latent_output(samples, source_index, fps, weights):
    """ComfyUI's LATENT: `samples` unscaled, as core VAE Encode gives them and VAE Decode reads them; our keys let
    BlendAndDecode put each latent on its source frame, fade it by its mouth weight and cut the audio."""
    return {"samples": samples, "musetalk_source_index": source_index, "musetalk_fps": float(fps),
            "musetalk_mouth_weight": weights}


def _gathered(batches, count, images):
    """The IMAGE of `count` frames from uint8 batches, made once and filled a batch at a time: besides ComfyUI's
    IMAGE in and out, only a batch of frames exists at once."""
    output = torch.empty((count, *images.shape[1:]), dtype=torch.float32)
    done = 0
    for batch in batches:
        to_image(batch, out=output[done:done + len(batch)])
        done += len(batch)
    return output


def _frame_order(latent, faces, count):
    """(source frame per output frame, mouth weights or None) of a LATENT."""
    source_index = latent.get("musetalk_source_index")
    if source_index is None:  # a LATENT from elsewhere: assume the official order
        source_index = cycle_indices(len(faces), count, "pingpong")
    return source_index, latent.get("musetalk_mouth_weight")


def _check_generated(generated, count):
    if not isinstance(generated, torch.Tensor) or generated.ndim != 4 or generated.shape[-1] != 3 \
            or generated.shape[1] != generated.shape[2]:
        raise ValueError(f"generated: the faces must be square RGB images [N,S,S,3], got "
                         f"{list(getattr(generated, 'shape', []))}: connect VAE Decode of the MuseTalk LATENT "
                         "(256x256), or an upscaler after it (512, 1024)")
    if len(generated) != count:
        raise ValueError(f"generated: {len(generated)} faces for the LATENT's {count} output frames: decode the "
                         "LATENT of LatentLipInpaint for this audio, without dropping or adding images")


def _fit(audio, n_frames, fps):
    if audio is None:
        return None
    if not fps:
        raise ValueError("the latent carries no frame rate, so the audio cannot be cut to the video: use the LATENT "
                         "from LatentLipInpaint, or leave the audio input unconnected")
    waveform, sample_rate = inputs.audio(audio, "BlendAndDecode", "audio")
    fitted = fit_audio(waveform[0].cpu().numpy(), sample_rate, n_frames / fps)
    return {"waveform": torch.from_numpy(np.ascontiguousarray(fitted))[None].to(waveform.dtype),
            "sample_rate": sample_rate}


NODE_CLASS_MAPPINGS = {"LatentLipInpaint": LatentLipInpaint, "BlendAndDecode": BlendAndDecode,
                       "MuseTalkPasteFaces": MuseTalkPasteFaces}
NODE_DISPLAY_NAME_MAPPINGS = {"LatentLipInpaint": "MuseTalk Latent Lip Inpaint",
                              "BlendAndDecode": "MuseTalk Blend And Decode",
                              "MuseTalkPasteFaces": "MuseTalk Paste Faces"}
