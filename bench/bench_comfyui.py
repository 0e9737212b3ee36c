"""Peak memory of a real ComfyUI running the shipped workflows on 1080p clips of several lengths.

    python -m bench.bench_comfyui --comfyui DIR --python PY [--path video|nodes] [--seconds 8,40]
                                  [--face-every 25] [--models DIR] [--keep DIR]

For each length it writes the synthetic 1080p 25 fps clip and speech of `bench_memory` (boxes given on every
`--face-every`-th frame, so no detection runs, as in the issue's measurement), starts a fresh ComfyUI (`main.py --cpu`,
this checkout as custom_nodes/ComfyUI-MuseTalk, the SMALL random-weight checkpoints as an extra `musetalk` model path),
uploads the clip and the speech as the UI's upload button does and queues the shipped workflow as the frontend sends
it: `--path video` runs workflows/musetalk_v15_long_video.json (Load Video -> MuseTalk Lip Sync Video -> Save Video),
`--path nodes` runs workflows/musetalk_v15_lipsync.json (the five nodes between Get Video Components and Create
Video). It then reads the server process's peak resident memory (VmHWM of /proc/PID/status, since its start) and
checks the saved video: frame count = the speech's frames, an audio track.
"""
import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from bench.bench_memory import FPS, ensure_small_models, write_clip  # noqa: E402
from comfyui_live import ComfyServer, workflow_to_prompt  # noqa: E402

WORKFLOWS = {"video": "musetalk_v15_long_video.json", "nodes": "musetalk_v15_lipsync.json"}
# the node that takes the boxes in each workflow
BOX_NODES = {"video": "MuseTalkLipSyncVideo", "nodes": "FaceDetectAndParse"}


def peak_rss(pid):
    """(peak, current) resident bytes of process `pid` (VmHWM, VmRSS)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmHWM"], values["VmRSS"]


def prompt_for(server, path, clip, speech, boxes):
    with open(os.path.join(REPO, "workflows", WORKFLOWS[path])) as f:
        prompt = workflow_to_prompt(json.load(f), server.object_info())
    for node in prompt.values():
        if node["class_type"] == "LoadVideo":
            node["inputs"]["file"] = server.upload(clip)
        elif node["class_type"] == "LoadAudio":
            node["inputs"]["audio"] = server.upload(speech)
        elif node["class_type"] == BOX_NODES[path]:
            with open(boxes) as f:
                node["inputs"]["bboxes"] = f.read()
        elif node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = "bench/musetalk"
    return prompt


def clip_files(folder, seconds, face_every):
    """`write_clip`'s clip, speech and boxes in `folder`, reused when an earlier run wrote them there for the same
    length and box spacing (`--keep`): writing ten minutes of 1080p takes longer than lip-syncing it."""
    marker = os.path.join(folder, "clip.json")
    wanted = {"seconds": seconds, "face_every": face_every}
    try:
        with open(marker) as f:
            if json.load(f) == wanted:
                return tuple(os.path.join(folder, name) for name in ("clip.mp4", "speech.wav", "boxes.json"))
    except (OSError, ValueError):
        pass
    paths = write_clip(folder, seconds, face_every)
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return paths


def measure(args, path, seconds, models, work):
    from musetalk.video import open_frames, read_audio

    folder = os.path.join(work, f"{seconds:g}s")
    os.makedirs(folder, exist_ok=True)
    clip, speech, boxes = clip_files(folder, seconds, args.face_every)
    config = os.path.join(folder, "extra_model_paths.yaml")
    with open(config, "w") as f:
        f.write(f"musetalk_bench:\n    musetalk: {models}\n")
    output = os.path.join(folder, "output")
    os.makedirs(os.path.join(folder, "input"), exist_ok=True)
    server = ComfyServer(args.comfyui, args.python, startup_timeout=1800,
                         extra_args=["--extra-model-paths-config", config, "--input-directory",
                                     os.path.join(folder, "input"), "--output-directory", output])
    with server:
        idle = peak_rss(server.process.pid)[1]
        prompt = prompt_for(server, path, clip, speech, boxes)
        started = time.perf_counter()
        outputs = server.run_prompt(prompt, timeout=args.timeout)
        took = time.perf_counter() - started
        peak, _ = peak_rss(server.process.pid)
    saved = [item for result in outputs.values() for item in result.get("images", [])]
    (item,) = saved
    video = os.path.join(output, item["subfolder"], item["filename"])
    frames = open_frames(video).count
    sound, rate = read_audio(video)
    expected = int(seconds * FPS)
    return {"path": path, "seconds": seconds, "frames": frames, "expected_frames": expected,
            "audio_seconds": round(sound.shape[1] / rate, 2), "peak_mib": round(peak / 2**20),
            "idle_mib": round(idle / 2**20), "wall_s": round(took)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="the ComfyUI folder (main.py)")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON"), help="ComfyUI's python")
    parser.add_argument("--path", choices=sorted(WORKFLOWS), default="video")
    parser.add_argument("--seconds", default="8,40", help="clip lengths in seconds, comma-separated")
    parser.add_argument("--face-every", type=int, default=25, help="give a face box on every N-th frame only")
    parser.add_argument("--models", help="folder of small random checkpoints (written when missing)")
    parser.add_argument("--keep", help="folder for the clips and outputs (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds one run may take")
    args = parser.parse_args(argv)
    if not (args.comfyui and args.python):
        parser.error("give --comfyui and --python (or set COMFYUI_DIR and COMFYUI_PYTHON)")
    work = args.keep or tempfile.mkdtemp(prefix="musetalk-comfyui-bench-")
    models = ensure_small_models(args.models or os.path.join(tempfile.gettempdir(), "musetalk-small-models"))
    results = []
    for seconds in (float(s) for s in args.seconds.split(",")):
        result = measure(args, args.path, seconds, models, work)
        results.append(result)
        print(json.dumps(result), flush=True)
    first = results[0]
    for result in results[1:]:
        growth = result["peak_mib"] / first["peak_mib"] - 1
        longer = result["seconds"] - first["seconds"]
        # a repeated length (--seconds 60,60) measures the run-to-run spread, which has no per-second slope
        slope = f" ({(result['peak_mib'] - first['peak_mib']) / longer:.1f} MiB per second of 1080p)" if longer else ""
        print(f"{args.path}: {result['seconds']:g} s peaks {100 * growth:+.1f}% against {first['seconds']:g} s{slope}")


if __name__ == "__main__":
    main()
