"""AudioToWhisperFeatures: a ComfyUI AUDIO clip -> MuseTalk's whisper tokens, one [50,384] matrix per video frame."""
from ..musetalk.audio import check_fps
from ..musetalk.audio_offset import extract_features_with_offset
from . import inputs, sockets


class AudioToWhisperFeatures:
    DESCRIPTION = ("Encodes the audio with whisper-tiny the way the selected MuseTalk version does and slices it into "
                   "one token window per video frame. frame_count is how many frames the lip sync will produce.")
    CATEGORY = "MuseTalk"
    RETURN_TYPES = ("MUSETALK_WHISPER_FEATURES", "INT")
    RETURN_NAMES = ("features", "frame_count")
    FUNCTION = "extract"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": sockets.MODEL,
            "audio": ("AUDIO",),
            "fps": sockets.fps("Frame rate of the video to lip-sync: wire it from GetVideoComponents' fps. "
                               "Fractional rates (29.97) are used as they are."),
        }, "optional": {
            "audio_offset_ms": sockets.AUDIO_OFFSET_MS,
        }}

    def extract(self, model, audio, fps, audio_offset_ms=0.0):
        waveform, sample_rate = inputs.audio(audio, "AudioToWhisperFeatures", "audio")
        with inputs.advice("wire fps from Get Video Components' fps output (or set the rate of generated frames)"):
            fps = check_fps(fps)
        with inputs.advice("connect speech from Load Audio, or Get Video Components' audio"):
            features = extract_features_with_offset(model, waveform, sample_rate, fps, audio_offset_ms)
        return (features, features.frame_count)


NODE_CLASS_MAPPINGS = {"AudioToWhisperFeatures": AudioToWhisperFeatures}
NODE_DISPLAY_NAME_MAPPINGS = {"AudioToWhisperFeatures": "MuseTalk Audio To Whisper Features"}
