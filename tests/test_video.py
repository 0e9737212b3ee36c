"""PyAV media layer of the command line: frame sources, audio reading, H.264 + AAC writing."""
import numpy as np
import pytest
from PIL import Image

from musetalk.video import MediaError, VideoWriter, fit_audio, open_frames, read_audio


def _ramp(count, height=48, width=64):
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[:] = (np.arange(count) * 8)[:, None, None, None]
    return frames


@pytest.mark.parametrize("fps", [25.0, 29.97])
def test_video_round_trip_keeps_rate_count_and_audio_length(tmp_path, fps):
    rate = 44100
    speech = (0.3 * np.sin(np.arange(rate * 2) / 7.0)).astype(np.float32)[None].repeat(2, 0)
    writer = VideoWriter(str(tmp_path / "out.mp4"), fps, (48, 64), audio=(speech, rate))
    writer.write(_ramp(10))
    writer.write(_ramp(30)[10:])
    writer.close()
    source = open_frames(str(tmp_path / "out.mp4"))
    assert source.fps == pytest.approx(fps) and source.count == 30 and source.size == (48, 64)
    levels = source.frames(0, 30)[:, 20, 30, 0].astype(int)
    assert np.abs(levels - np.arange(30) * 8).max() <= 2  # H.264 at crf 18 on flat frames
    assert np.abs(source.frames(20, 22)[:, 20, 30, 0].astype(int) - [160, 168]).max() <= 2  # a jump backwards
    audio, audio_rate = read_audio(str(tmp_path / "out.mp4"))
    assert audio_rate == rate and audio.shape[0] == 2
    assert abs(audio.shape[1] / rate - 30 / fps) < 0.05  # AAC adds its encoder delay, well under 2 frames


def test_odd_frame_size_is_padded_for_yuv420(tmp_path):
    writer = VideoWriter(str(tmp_path / "odd.mp4"), 25, (47, 63))
    writer.write(_ramp(3, 47, 63))
    writer.close()
    assert open_frames(str(tmp_path / "odd.mp4")).size == (48, 64)


def test_image_folder_sorted_by_number_and_single_image(tmp_path):
    for index in (10, 2, 1):
        Image.fromarray(np.full((8, 8, 3), index, np.uint8)).save(tmp_path / f"{index}.png")
    source = open_frames(str(tmp_path), fps=12.5)
    assert source.fps == 12.5 and [int(f[0, 0, 0]) for f in source.frames(0, 3)] == [1, 2, 10]
    single = open_frames(str(tmp_path / "2.png"))
    assert single.count == 1 and single.fps == 25.0


def test_unusable_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        open_frames(str(tmp_path / "missing.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="holds no"):
        open_frames(str(tmp_path / "empty"))
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    with pytest.raises(MediaError, match="noise.wav: cannot be read as audio"):
        read_audio(str(tmp_path / "noise.wav"))


def test_fit_audio_trims_and_pads():
    audio = np.ones((2, 100), np.float32)
    assert fit_audio(audio, 100, 0.5).shape == (2, 50)
    padded = fit_audio(audio, 100, 1.5)
    assert padded.shape == (2, 150) and padded[:, 100:].sum() == 0
