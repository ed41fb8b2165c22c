"""Export back to PyTorch: official state dict bit-identical; HF folder loads and reproduces us."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from convert import ConversionError
from convert.export import export_hf, export_official
from eval.parity.samples import sample_images
from samhq_jax import SamHQ, save_checkpoint
from tests.conftest import assert_close, official_model_and_params


def test_official_to_ours_to_official_is_bit_identical(tmp_path) -> None:
    model, _, config, params = official_model_and_params("tiny_l")
    ours = save_checkpoint(tmp_path / "ours", config, params)
    pth, st = tmp_path / "back.pth", tmp_path / "back.safetensors"
    for dst in (pth, st):
        run = subprocess.run(
            [sys.executable, "-m", "convert", str(ours), str(dst), "--to", "official"], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
    original = model.state_dict()
    from_pth = torch.load(pth, weights_only=True)
    from_st = load_file(str(st))
    assert set(from_pth) == set(from_st) == set(original)
    for k, v in original.items():
        assert from_pth[k].dtype == v.dtype and torch.equal(from_pth[k], v), k
        assert np.array_equal(from_st[k], v.numpy()), k


def test_hf_folder_loads_in_transformers_and_reproduces_us(tmp_path) -> None:
    from transformers import SamHQModel

    _, _, config, params = official_model_and_params("tiny_b")
    folder = export_hf(config, params, tmp_path / "hf")
    hf = SamHQModel.from_pretrained(folder).eval()
    images = sample_images(config, 1)
    boxes = np.array([[[20.0, 30.0, 120.0, 140.0], [5.0, 5.0, 60.0, 90.0]]], np.float32)
    model = SamHQ(config)
    masks, iou = model.apply({"params": params}, jnp.asarray(images), boxes=jnp.asarray(boxes))
    with torch.no_grad():
        out = hf(
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
            input_boxes=torch.from_numpy(boxes),
            multimask_output=False,
        )
    assert_close(np.asarray(iou), out.iou_scores.numpy(), "iou from the exported HF folder")
    assert_close(np.asarray(masks), out.pred_masks.numpy(), "masks from the exported HF folder")


def test_official_export_refuses_unknown_suffix(tmp_path) -> None:
    _, _, _, params = official_model_and_params("tiny_b")
    with pytest.raises(ConversionError, match=r"\.pth"):
        export_official(params, tmp_path / "model.bin")
