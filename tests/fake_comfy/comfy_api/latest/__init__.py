"""Fake comfy_api.latest: the core VIDEO types of ComfyUI 0.3.64 (InputImpl.VideoFromFile / VideoFromComponents,
Types.VideoComponents), as far as the pack and the tests use them: a file-backed video hands out its stream source
and decodes its components with PyAV on request; a component video only holds its components."""
import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np
import torch


@dataclass
class VideoComponents:
    images: torch.Tensor
    frame_rate: Fraction
    audio: Optional[dict] = None
    metadata: Optional[dict] = None


class VideoFromFile:
    def __init__(self, file):
        self.__file = file

    def get_stream_source(self):
        if isinstance(self.__file, io.BytesIO):
            self.__file.seek(0)
        return self.__file

    def get_components(self):
        import av

        with av.open(self.get_stream_source()) as container:
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            rate = stream.average_rate
        images = torch.from_numpy(np.stack(frames)).float() / 255.0
        return VideoComponents(images=images, frame_rate=Fraction(rate))


class VideoFromComponents:
    def __init__(self, components):
        self.__components = components

    def get_components(self):
        return VideoComponents(images=self.__components.images, audio=self.__components.audio,
                               frame_rate=self.__components.frame_rate)


class InputImpl:
    VideoFromFile = VideoFromFile
    VideoFromComponents = VideoFromComponents


class Types:
    VideoComponents = VideoComponents
