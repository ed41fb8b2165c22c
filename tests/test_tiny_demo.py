"""``samhq demo --model vit_tiny``: the offline demo end to end for Light HQ-SAM's structure (TinyViT
encoder at test size, ``tiny_t``), shortened to a few steps: the stand-in SAM trains every tensor but
the BatchNorm running statistics, the HQ stage moves only the HQ parts, and the evaluation is written.
The end-to-end run is marked slow (minutes of compilation); its parts run in CI: training TinyViT with
``all`` (tests/test_tiny_vit.py) and ``hq`` / ``decoder`` (tests/test_tiny_train.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from samhq_jax.checkpoint import load_pretrained
from samhq_jax.cli import main as samhq_main
from samhq_jax.config import ModelConfig, TinyViTConfig
from samhq_jax.errors import InputError
from samhq_jax.hq_params import is_hq_path
from samhq_jax.sam_hq import param_shapes
from samhq_jax.tiny_vit import is_batch_stat
from train.demo import DEMO_PRESETS, demo_preset
from train.trainable import count, partition


def test_demo_models_are_the_test_sizes_of_the_official_ones() -> None:
    assert demo_preset("vit_tiny") == "tiny_t"
    for model, preset in DEMO_PRESETS.items():
        official, small = ModelConfig.preset(model), ModelConfig.preset(preset)
        assert type(small.image_encoder) is type(official.image_encoder) and small.img_size == 160
    with pytest.raises(InputError, match="--model 'vit_z': choose one of vit_b, vit_l, vit_h, vit_tiny"):
        demo_preset("vit_z")


def test_model_flag_is_checked(tmp_path, capsys) -> None:
    out = str(tmp_path / "d")
    for argv, text in [
        (["--model", "tiny_t"], "argument --model: invalid choice: 'tiny_t'"),
        (["--model", "vit_tiny", "--preset", "tiny_b"], "argument --preset: not allowed with argument --model"),
    ]:
        with pytest.raises(SystemExit) as stop:  # argparse
            samhq_main(["demo", "--output", out, *argv])
        assert stop.value.code == 2 and text in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_tiny_t_mirrors_vit_tiny() -> None:
    """The test-size Light HQ-SAM: padded windows in stages 1-3, a last merge that keeps the grid,
    and an early feature narrower than the decoder, as vit_tiny (128 -> 133, 64 -> 70; 160 < 256)."""
    enc = ModelConfig.tiny_t().image_encoder
    assert isinstance(enc, TinyViTConfig) and enc.grid_size == 10 and enc.merge_strides[-1] == 1
    for i in range(1, enc.num_stages):
        assert enc.stage_resolution(i) % enc.window_sizes[i], f"stage {i} is not padded"
    assert enc.early_dim == 24 < ModelConfig.tiny_t().mask_decoder.transformer_dim
    hq, _ = partition(param_shapes(ModelConfig.tiny_t()), "hq")
    assert count(hq) == 7744


@pytest.mark.slow  # ~4 min on 2 busy cores, mostly compiling (init_params' random draws, then two steps)
def test_samhq_demo_model_vit_tiny_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--output", str(out), "--model", "vit_tiny", "--train-images", "8", "--val-images", "2"]
    assert samhq_main([*argv, "--sam-steps", "2", "--hq-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "stand-in SAM: tiny_t (TinyViT encoder, Light HQ-SAM)" in printed
    assert "the 7,744 HQ values trained for 2 steps" in printed and "demo done in" in printed

    sam_config, sam = load_pretrained(out / "sam" / "final")
    hq_config, hq = load_pretrained(out / "hq" / "final")
    assert sam_config.image_encoder == hq_config.image_encoder == ModelConfig.tiny_t().image_encoder
    sam, hq = flatten_dict(sam, sep="/"), flatten_dict(hq, sep="/")
    assert sam.keys() == hq.keys()
    # BatchNorm statistics: PyTorch's initial values after both trainings (never trained)
    stats = [k for k in sam if is_batch_stat(k)]
    assert len(stats) == 2 * 18  # Conv2d_BN: 2 patch embedding, 3 MBConv, 3 per merging (3), 1 per block (4)
    for k in stats:
        want = 0.0 if k.endswith("running_mean") else 1.0
        assert np.all(sam[k] == want) and np.all(hq[k] == want), k
    # stage 3: SAM frozen bit for bit, the HQ parts moved
    assert all(np.array_equal(sam[k], hq[k]) for k in sam if not is_hq_path(k))
    assert all(not np.array_equal(sam[k], hq[k]) for k in sam if is_hq_path(k) and k.endswith("kernel"))

    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["mean"]) >= {"sam", "hq"} and (out / "eval" / "summary.md").is_file()
