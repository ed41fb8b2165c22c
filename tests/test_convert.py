"""Weight import / export: counts, both mapping tables both ways, file formats, loud failures."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict

from convert import HF, OFFICIAL, ConversionError, load_torch_checkpoint, params_to_state_dict, state_dict_to_params
from eval.parity.samples import sample_images
from eval.reference import build_hf
from samhq_jax import ModelConfig, load_pretrained, param_shapes
from tests.conftest import official_model_and_params
from train.trainable import partition


def _count(tree) -> tuple[int, int]:
    leaves = jax.tree.leaves(tree)
    return len(leaves), sum(int(np.prod(x.shape)) for x in leaves)


def _hq_values(tree) -> int:
    trainable, _ = partition(tree, "hq")
    return sum(int(np.prod(v.shape)) for v in flatten_dict(trainable, sep="/").values())


def test_vit_b_counts_equal_official_state_dict() -> None:
    _, state, config, params = official_model_and_params("vit_b")
    assert config.name == "vit_b"
    assert (len(state), sum(v.size for v in state.values())) == (339, 94_806_832)
    assert _count(params) == (339, 94_806_832)
    # 94,806,576 PyTorch parameters + the 2x128 random-Fourier buffer.
    model = official_model_and_params("vit_b")[0]
    assert sum(p.numel() for p in model.parameters()) + 2 * 128 == 94_806_832


@pytest.mark.parametrize(
    "preset,hq",
    [("vit_b", 1_071_104), ("vit_l", 1_333_248), ("vit_h", 1_595_392)],
)
def test_hq_parameter_counts(preset: str, hq: int) -> None:
    assert _hq_values(param_shapes(ModelConfig.preset(preset))) == hq


@pytest.mark.parametrize("preset", ["tiny_b", "tiny_h"])
def test_official_round_trip_is_bit_identical(preset: str) -> None:
    _, state, _config, params = official_model_and_params(preset)
    back = params_to_state_dict(params, OFFICIAL)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].shape == v.shape and np.array_equal(back[k], v), k


_TIED = ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding")


def test_hf_round_trip_and_tied_matrix() -> None:
    """HF -> ours -> HF is bit-identical, the exported state dict loads into transformers' ``SamHQModel``
    with ``strict=True`` and reproduces the original model exactly; either copy of the tied random-Fourier
    matrix alone imports to the same parameters; disagreeing copies are refused naming both keys."""
    model = build_hf(ModelConfig.tiny_b(), seed=3)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(_TIED) <= set(state) and np.array_equal(state[_TIED[0]], state[_TIED[1]])
    config, params = state_dict_to_params(state)
    assert config.mask_decoder.transformer_layer_norm_eps == 1e-6
    back = params_to_state_dict(params, HF)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k

    # The export loads strictly into a fresh transformers model (both tied keys present) ...
    fresh = type(model)(model.config).eval()
    result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # ... and that model gives the original's outputs bit for bit.
    pixels = torch.from_numpy(sample_images(config, 1)).permute(0, 3, 1, 2)
    boxes = torch.tensor([[[10.0, 20.0, 90.0, 120.0]]])
    with torch.no_grad():
        want = model(pixel_values=pixels, input_boxes=boxes, multimask_output=True)
        have = fresh(pixel_values=pixels, input_boxes=boxes, multimask_output=True)
    assert torch.equal(have.pred_masks, want.pred_masks) and torch.equal(have.iou_scores, want.iou_scores)

    # Either copy alone is enough (HF's own loader also accepts the prompt-encoder copy missing).
    flat = flatten_dict(params, sep="/")
    for dropped in _TIED:
        _, got = state_dict_to_params({k: v for k, v in state.items() if k != dropped})
        got = flatten_dict(got, sep="/")
        assert set(got) == set(flat) and all(np.array_equal(got[k], flat[k]) for k in flat), dropped
    with pytest.raises(ConversionError, match="positional_embedding"):
        state_dict_to_params({k: v for k, v in state.items() if k not in _TIED})

    untied = dict(state)
    untied[_TIED[1]] = state[_TIED[0]] + 1
    with pytest.raises(ConversionError) as err:
        state_dict_to_params(untied)
    assert f"{_TIED[1]} should equal its tied copy {_TIED[0]} but differs" in str(err.value)


def test_official_and_hf_tables_agree() -> None:
    """Official -> ours -> HF names the same tensors the HF converter's key renames give."""
    _, state, _, params = official_model_and_params("tiny_b")
    hf_state = params_to_state_dict(params, HF)
    assert len(hf_state) == len(state) + 1  # the tied duplicate
    assert np.array_equal(hf_state["mask_decoder.hq_token.weight"], state["mask_decoder.hf_token.weight"])
    assert np.array_equal(
        hf_state["mask_decoder.compress_vit_conv1.weight"], state["mask_decoder.compress_vit_feat.0.weight"]
    )


def test_missing_unexpected_and_misshaped_keys_are_all_listed() -> None:
    _, state, _, _ = official_model_and_params("vit_b")
    bad = dict(state)
    del bad["mask_decoder.hf_token.weight"]
    bad["mask_decoder.hf_tokn.weight"] = state["mask_decoder.hf_token.weight"]  # renamed
    bad["image_encoder.blocks.3.attn.qkv.weight"] = np.zeros((5, 5), np.float32)
    with pytest.raises(ConversionError) as err:
        state_dict_to_params(bad)
    msg = str(err.value)
    assert "vit_b" in msg
    assert "missing keys (1):\n    mask_decoder.hf_token.weight" in msg
    assert "unexpected keys (1):\n    mask_decoder.hf_tokn.weight" in msg
    assert "image_encoder.blocks.3.attn.qkv.weight: checkpoint (5, 5), model (2304, 768)" in msg


def test_state_dict_without_a_whole_block_is_refused_not_shrunk() -> None:
    _, state, _, _ = official_model_and_params("vit_b")
    truncated = {k: v for k, v in state.items() if not k.startswith("image_encoder.blocks.11.")}
    with pytest.raises(ConversionError) as err:
        state_dict_to_params(truncated)
    assert "image_encoder.blocks.11.attn.qkv.weight" in str(err.value)


def test_plain_sam_checkpoint_is_refused() -> None:
    """Official build_sam loads a vanilla SAM file with strict=False and random HQ layers; we refuse."""
    _, state, _, _ = official_model_and_params("tiny_b")
    sam_only = {k: v for k, v in state.items() if not any(p in k for p in ("hf_", "compress_vit", "embedding_"))}
    with pytest.raises(ConversionError, match=r"missing keys \(25\)"):
        state_dict_to_params(sam_only)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ConversionError, match="cannot tell the checkpoint format"):
        state_dict_to_params({"encoder.weight": np.zeros(3)})


def test_files_pth_safetensors_and_cli(tmp_path) -> None:
    from safetensors.numpy import save_file

    model, state, config, params = official_model_and_params("tiny_l")
    pth, st = tmp_path / "sam_hq.pth", tmp_path / "sam_hq.safetensors"
    torch.save(model.state_dict(), pth)
    save_file(state, str(st))
    for src in (pth, st):
        cfg, got = load_torch_checkpoint(src)
        assert cfg == config
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True))
    out = tmp_path / "ours"
    run = subprocess.run([sys.executable, "-m", "convert", str(pth), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "tiny_l" in run.stdout
    assert json.loads((out / "config.json").read_text())["format"] == "samhq_jax"
    cfg, loaded = load_pretrained(out)
    assert cfg == config
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        assert np.array_equal(np.asarray(a), b)


def test_truncated_and_pickled_files_fail_clearly(tmp_path) -> None:
    model = official_model_and_params("tiny_b")[0]
    pth = tmp_path / "good.pth"
    torch.save(model.state_dict(), pth)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(ConversionError, match="cannot read"):
        load_torch_checkpoint(cut)
    evil = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1), "f": zipfile.ZipFile}, evil)  # a pickled class, not a tensor
    with pytest.raises(ConversionError, match="cannot read"):
        load_torch_checkpoint(evil)
    run = subprocess.run(
        [sys.executable, "-m", "convert", str(cut), str(tmp_path / "o")], capture_output=True, text=True
    )
    assert run.returncode == 2 and "samhq-convert:" in run.stderr and "Traceback" not in run.stderr


def test_hf_folder_and_hub_snapshot(tmp_path, monkeypatch) -> None:
    """A hub repo id resolves offline through a cache laid out like a hub snapshot."""
    model = build_hf(ModelConfig.tiny_b(), seed=5)
    repo = "syscv-community/sam-hq-tiny-test"
    snap = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("a" * 40)
    model.save_pretrained(snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg_dir, _ = load_pretrained(snap)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg_hub, params_hub = load_pretrained(repo)
    assert cfg_hub == cfg_dir and cfg_hub.mask_decoder.transformer_layer_norm_eps == 1e-6
    back = params_to_state_dict(jax.tree.map(np.asarray, params_hub), HF)
    assert all(np.array_equal(back[k], v) for k, v in expected.items())
