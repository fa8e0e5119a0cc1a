"""benchmarks/step_02.py times variants of notebook 07's training step; on a GPU it decides the 30-s recipe."""
import json
from pathlib import Path

import pytest
import torch

from course_utils import models

ROOT = Path(__file__).resolve().parent.parent


def test_variants_run_side_by_side_and_train_alike(step_02, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    out = tmp_path / "step.json"
    result = step_02.main(["--n-train", "1024", "--steps", "3", "--warmup", "1", "--hidden", "32",
                           "--channels", "8", "16", "--batch", "64", "--profile", "--json", str(out),
                           "--variants", "notebook,channels_last,bf16,batch2x,graph,graph_bf16"])
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["notebook", "channels_last", "bf16", "batch2x"]  # graph needs CUDA: skipped on a CPU
    assert all("error" not in r for r in rows.values()), rows
    assert rows["notebook"]["ratio"] == 1.0 and rows["batch2x"]["batch"] == 128
    for r in rows.values():
        assert r["ms_per_step"] > 0 and r["images_per_s"] > 0 and r["epochs_in_30s"] > 0
        # a few steps from the same weights on the same batches: every variant's loss is close to the notebook's
        assert abs(r["loss_last_20"] - rows["notebook"]["loss_last_20"]) < 5, rows
    assert result["profile"]["wall_ms_per_step"] > 0 and result["profile"]["top"]
    assert json.loads(out.read_text())["rows"][0]["variant"] == "notebook"


def test_an_unknown_variant_is_refused(step_02):
    with pytest.raises(SystemExit):
        step_02.main(["--variants", "notebook,turbo"])


def test_the_device_script_calls_parse(step_02):
    import re
    import shlex
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    calls = [line.split("benchmarks/step_02.py", 1)[1] for line in text.splitlines()
             if "benchmarks/step_02.py" in line and not line.lstrip().startswith("#")]
    assert calls, "gpu_check.sh no longer runs step_02.py"
    for call in calls:
        args = step_02.build_parser().parse_args(shlex.split(re.sub(r'"?\$OUT/[^ ]*', "x.json", call)))
        assert set(args.variants.split(",")) <= set(step_02.VARIANTS), args.variants


def test_the_steps_read_nothing_from_the_device(step_02, device_reads):
    # notebook 07's 30-s loop must not make Python wait for the GPU inside a step, and a CUDA graph can only
    # capture a step that never reads a value back: count the reads of every variant's step (on the CPU)
    x = torch.rand(32, 1, 28, 28)
    for variant in ("notebook", "bf16", "channels_last", "batch2x"):
        model = models.ConvVAE(models.ConvConfig(channels=(8, 16), hidden=32))
        step = step_02.make_step(variant, model, 1e-3, x)
        step(x)
        assert device_reads(step, x) == {}, variant
