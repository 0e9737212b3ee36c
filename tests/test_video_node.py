"""MuseTalkLipSyncVideo and MuseTalkAvatarLipSyncVideo against the fake ComfyUI: core VIDEO in (from a file or from
components), a video file in ComfyUI's temp folder out, frames equal to the five-node graph's, nothing left behind
on interrupt."""
import json
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from conftest import fixture_inputs
from test_comfy_bridge import comfy, pack  # noqa: F401  (fixtures)

NO_FACE = 5
SECONDS = 0.7  # 17 output frames over the 12 source frames: pingpong comes back over the no-face frame
OPTIONS = dict(bbox_shift=0, extra_margin=10, parsing_mode="jaw", left_cheek_width=90, right_cheek_width=90)


@pytest.fixture
def setup(comfy, pack, models_dir):  # noqa: F811
    import folder_paths

    folder_paths.add_model_folder_path("musetalk", models_dir, is_default=True)
    inputs = fixture_inputs()
    images = torch.from_numpy(inputs["frames_bgr"][..., ::-1].copy()).float() / 255
    samples = inputs["audio_a16"][:int(SECONDS * 16000)].astype(np.float32) / 32768
    audio = {"waveform": torch.from_numpy(samples)[None, None], "sample_rate": 16000}
    bboxes = json.dumps([None if i == NO_FACE else box.tolist() for i, box in enumerate(inputs["bboxes"])])
    (model,) = pack.nodes.loaders.LoadMuseTalkModels().load("v1.5", "fp32")
    return pack, model, images, audio, bboxes


def five_nodes(pack, model, images, audio, bboxes, batch_size=4):
    nodes = pack.NODE_CLASS_MAPPINGS
    features, _ = nodes["AudioToWhisperFeatures"]().extract(model, audio, 25.0)
    faces, crops, _ = nodes["FaceDetectAndParse"]().detect(model, images, *OPTIONS.values(), bboxes)
    (latent,) = nodes["LatentLipInpaint"]().inpaint(model, faces, crops, features, batch_size, "pingpong")
    frames, _ = nodes["BlendAndDecode"]().blend(model, latent, faces, images, batch_size)
    return (frames * 255).round().to(torch.uint8).numpy(), faces, crops


def engine_frames(pack, model, source, audio, bboxes, out, batch_size=4, prepared=None):
    """The engine loop exactly as the video nodes run it, keeping the frames it hands to the encoder."""
    node = pack.nodes.video
    boxes = pack.musetalk.face_boxes.parse_bboxes(bboxes, source.count, source.size) if bboxes else None
    options = pack.musetalk.pipeline.LipSyncOptions(pack.nodes.face.face_settings(*OPTIONS.values()), batch_size,
                                                    "pingpong", release_networks=False)
    kept = []
    pack.musetalk.pipeline.lipsync_stream(model, source, node.speech(audio), out, options, boxes, prepared,
                                          on_frames=lambda first, batch: kept.append(batch.copy()))
    return np.concatenate(kept)


def write_video(path, images):
    from musetalk.video import VideoWriter

    writer = VideoWriter(str(path), 25.0, tuple(images.shape[1:3]))
    writer.write((images * 255).round().to(torch.uint8).numpy())
    writer.close()


def test_frames_equal_the_five_node_graph_for_a_video_from_components_and_from_a_file(setup, tmp_path):
    pack, model, images, audio, bboxes = setup
    from comfy_api.latest import InputImpl, Types

    expected, _, _ = five_nodes(pack, model, images, audio, bboxes)
    assert len(expected) == int(SECONDS * 25)
    video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(25)))
    source = pack.nodes.video.video_frames(video)
    assert np.array_equal(engine_frames(pack, model, source, audio, bboxes, str(tmp_path / "a.mp4")), expected)

    write_video(tmp_path / "in.mp4", images)
    from_file = InputImpl.VideoFromFile(str(tmp_path / "in.mp4"))
    decoded = from_file.get_components().images  # what Load Video -> Get Video Components hands the five nodes
    expected, _, _ = five_nodes(pack, model, decoded, audio, bboxes)
    source = pack.nodes.video.video_frames(from_file)
    assert type(source).__name__ == "VideoFrames"  # streamed from the file, not the decoded components
    assert np.array_equal(engine_frames(pack, model, source, audio, bboxes, str(tmp_path / "b.mp4")), expected)


def test_node_writes_the_video_with_the_speech_in_the_temp_folder(setup, tmp_path):
    pack, model, images, audio, bboxes = setup
    import comfy.utils
    import folder_paths
    from comfy_api.latest import InputImpl

    from musetalk.video import open_frames, read_audio

    write_video(tmp_path / "in.mp4", images)
    (video,) = pack.nodes.video.MuseTalkLipSyncVideo().lipsync(
        model, InputImpl.VideoFromFile(str(tmp_path / "in.mp4")), audio, **OPTIONS, batch_size=4, cycle="pingpong",
        bboxes=bboxes)
    assert isinstance(video, InputImpl.VideoFromFile)
    path = video.get_stream_source()
    assert os.path.dirname(path) == folder_paths.get_temp_directory()
    written = open_frames(path)
    assert written.count == int(SECONDS * 25) and written.size == (384, 384) and written.fps == 25.0
    sound, rate = read_audio(path)
    assert rate == 16000 and abs(sound.shape[1] / rate - SECONDS) < 0.1  # AAC adds its encoder delay
    previews = [p for _, _, p in comfy.utils.updates if p is not None]
    assert previews and previews[-1][0] == "JPEG"


def test_interrupt_stops_within_the_frames_and_leaves_no_file(setup, tmp_path):
    pack, model, images, audio, bboxes = setup
    import comfy.model_management
    import folder_paths
    from comfy_api.latest import InputImpl, Types

    video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(25)))
    source = pack.nodes.video.video_frames(video)
    out = tmp_path / "out.mp4"

    def interrupt_after_the_first_batch(first, batch):
        comfy.model_management.interrupt_current_processing()

    options = pack.musetalk.pipeline.LipSyncOptions(batch_size=4, release_networks=False)
    boxes = pack.musetalk.face_boxes.parse_bboxes(bboxes, source.count, source.size)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        pack.musetalk.pipeline.lipsync_stream(model, source, pack.nodes.video.speech(audio), str(out), options,
                                              boxes, on_frames=interrupt_after_the_first_batch)
    assert not out.exists() and not any(f.endswith(".mp4") for f in os.listdir(tmp_path))
    comfy.model_management.interrupt_current_processing()
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        pack.nodes.video.MuseTalkLipSyncVideo().lipsync(model, video, audio, **OPTIONS, batch_size=4,
                                                        cycle="pingpong", bboxes=bboxes)
    temp = folder_paths.get_temp_directory()
    assert not os.path.isdir(temp) or os.listdir(temp) == []


def test_a_saved_avatar_drives_the_video_node_from_its_file(setup, tmp_path):
    pack, model, images, audio, bboxes = setup
    from comfy_api.latest import InputImpl

    expected, faces, crops = five_nodes(pack, model, images, audio, bboxes)
    pack.nodes.avatar.MuseTalkSaveAvatar().save(model, faces, crops, images, 25.0, "anna")
    path = pack.nodes.comfy_runtime.avatar_path("anna")
    loaded = pack.musetalk.avatar.load_avatar(path, model, mapped=True)
    if os.path.exists("/proc/self/maps"):  # Linux: the frames are a mapping of the file, read only where touched
        with open("/proc/self/maps") as f:
            assert os.path.realpath(path) in f.read()
    prepared = pack.musetalk.pipeline.PreparedVideo(loaded.faces, pack.musetalk.avatar.avatar_sources(model, loaded))
    source = pack.musetalk.avatar.AvatarFrames(path, loaded)
    assert np.array_equal(engine_frames(pack, model, source, audio, None, str(tmp_path / "a.mp4"),
                                        prepared=prepared), expected)
    (video,) = pack.nodes.video.MuseTalkAvatarLipSyncVideo().lipsync(model, "anna", audio, 4, "pingpong")
    assert isinstance(video, InputImpl.VideoFromFile)
    assert pack.musetalk.video.open_frames(video.get_stream_source()).count == len(expected)
