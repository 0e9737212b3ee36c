"""The benches time the engine by wrapping its stage functions (`bench/bench_pipeline.py` STAGES, also used by
`bench/bench_avatar.py` and `bench/gpu_check.py`): a stage moved or renamed in the engine must fail here, not on the
day a GPU is lent to run `bench/gpu_check.sh`."""
from bench import bench_pipeline
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.runtime import StandaloneRuntime


def test_every_timed_stage_runs_in_a_lipsync_run(models_dir, tmp_path):
    models = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"), "fp32")
    totals, frames, *_ = bench_pipeline.run(models, str(tmp_path), sources=2, seconds=0.4, batch=2, counted=())
    assert frames == 10
    never_called = [label for label, (seconds, _, _) in totals.items() if seconds == 0]
    assert never_called == []
