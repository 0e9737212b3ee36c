"""LatentLipInpaint and BlendAndDecode: the generated mouth per audio frame, then the finished frames."""
import numpy as np
import torch

from ..musetalk.inpaint import CYCLE_MODES, cycle_indices
from ..musetalk.lipsync import SourceLatents, generate_latents, render_frames
from ..musetalk.video import fit_audio
from . import inputs, sockets
from .images import flat_frames, to_image, to_uint8


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
            "cycle": (list(CYCLE_MODES), {"default": "pingpong", "tooltip": (
                "How the video covers the audio. pingpong (official): forwards then backwards, repeated; "
                "loop: restart from the first frame; once: stop at the shorter of video and audio.")}),
        }}

    def inpaint(self, model, faces, crops, features, batch_size, cycle):
        crops = inputs.image(crops, "LatentLipInpaint", "crops")
        if len(crops) != len(faces):
            raise ValueError(f"{len(crops)} crops for {len(faces)} frames of faces: connect the crops and faces "
                             "outputs of the same FaceDetectAndParse node")
        sources = SourceLatents.encode(model, faces, to_uint8(crops), batch_size)
        source_index = cycle_indices(len(faces), features.frame_count, cycle)
        samples = generate_latents(model, sources, features, source_index, batch_size)
        return (latent_output(samples.cpu(), source_index, features.fps),)


class BlendAndDecode:
    DESCRIPTION = ("Decodes the generated mouths and blends them into the source frames with the face-parsing "
                   "mask. Returns one frame per audio frame, and the audio cut to exactly that length.")
    CATEGORY = "MuseTalk"
    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("images", "audio")
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
            "audio": ("AUDIO", {"tooltip": "The speech; it comes back trimmed or padded to the video's length."}),
        }}

    def blend(self, model, latent, faces, images, batch_size, audio=None):
        images = flat_frames(inputs.image(images, "BlendAndDecode", "images"))
        if len(images) != len(faces) or tuple(images.shape[1:3]) != tuple(faces.frame_size):
            raise ValueError(f"images are {len(images)} frames of {tuple(images.shape[1:3])} but faces were found in "
                             f"{len(faces)} frames of {tuple(faces.frame_size)}: connect the same images that went "
                             "into FaceDetectAndParse")
        samples = latent["samples"]
        source_index = latent.get("musetalk_source_index")
        if source_index is None:  # a LATENT from elsewhere: assume the official order
            source_index = cycle_indices(len(faces), len(samples), "pingpong")
        # the output IMAGE is made once and filled a batch at a time: besides ComfyUI's IMAGE in and out, only a
        # batch of frames exists at once
        output = torch.empty((len(source_index), *images.shape[1:]), dtype=torch.float32)
        done = 0
        for batch in render_frames(model, faces, samples, source_index, lambda idx: to_uint8(images[idx]),
                                   batch_size):
            output[done:done + len(batch)] = to_image(batch)
            done += len(batch)
        return output, _fit(audio, len(output), latent.get("musetalk_fps"))


def latent_output(samples, source_index, fps):
    """ComfyUI's LATENT: `samples` unscaled, as core VAE Encode gives them and VAE Decode reads them; our keys let
    BlendAndDecode put each latent on its source frame and cut the audio."""
    return {"samples": samples, "musetalk_source_index": source_index, "musetalk_fps": float(fps)}


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


NODE_CLASS_MAPPINGS = {"LatentLipInpaint": LatentLipInpaint, "BlendAndDecode": BlendAndDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"LatentLipInpaint": "MuseTalk Latent Lip Inpaint",
                              "BlendAndDecode": "MuseTalk Blend And Decode"}
