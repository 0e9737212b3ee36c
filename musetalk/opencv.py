"""OpenCV, imported where it is first used, so that the pack imports (and says what is missing) without it.

requirements.txt names no OpenCV distribution: opencv-python, opencv-python-headless and the contrib builds all
provide the same `cv2` and overwrite each other's files, so the pack uses whichever one the environment has, and
install.py adds opencv-python-headless only where there is none (README, "Why no OpenCV in requirements.txt").
"""


class OpenCVMissing(ImportError):
    pass


def load_cv2():
    try:
        import cv2
    except ImportError as error:
        raise OpenCVMissing(
            f"MuseTalk needs OpenCV (the cv2 module), which this Python cannot import ({error}). Install one OpenCV "
            "distribution with the Python that runs ComfyUI: `python -m pip install opencv-python-headless`, or run "
            "the pack's install.py, which does so only where no OpenCV is installed.") from error
    return cv2
