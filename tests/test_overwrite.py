"""Outputs written whole (samhq_jax.atomic): samhq-convert and samhq-eval's report refuse an existing
output unless --overwrite, then replace it whole (no stale file beside the new ones); a failure
while writing leaves the old output and no temporary."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from convert.cli import main as convert_main
from eval import report
from samhq_jax import save_checkpoint
from samhq_jax.checkpoint import read_weights
from samhq_jax.errors import InputError
from tests.conftest import official_model_and_params


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, _, config, params = official_model_and_params("tiny_b")
    return save_checkpoint(tmp_path_factory.mktemp("src") / "tiny_b", config, params)


def test_convert_refuses_then_replaces_whole(source: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SAMHQ_JAX_CACHE", "0")
    dst, pth = tmp_path / "ours", tmp_path / "sd.safetensors"
    assert convert_main([str(source), str(dst)]) == 0
    assert convert_main([str(source), str(pth), "--to", "official"]) == 0
    capsys.readouterr()
    for target, extra in ((dst, []), (pth, ["--to", "official"])):
        before = {p.name: p.read_bytes() for p in ([target] if target.is_file() else target.iterdir())}
        assert convert_main([str(source), str(target), *extra]) == 2
        assert "already exists; give --overwrite to replace it" in capsys.readouterr().err
        after = {p.name: p.read_bytes() for p in ([target] if target.is_file() else target.iterdir())}
        assert after == before  # refused before anything was read or written
    (dst / "stale.txt").write_text("from an earlier run")
    assert convert_main([str(source), str(dst), "--overwrite"]) == 0
    assert convert_main([str(source), str(pth), "--to", "official", "--overwrite"]) == 0
    assert _entries(dst) == ["config.json", "model.safetensors"]  # replaced whole
    assert _entries(tmp_path) == ["ours", "sd.safetensors"]  # no temporary left
    expected = read_weights(source).params
    for written in (dst, pth):  # every tensor as in the source
        jax.tree.map(np.testing.assert_array_equal, read_weights(written).params, expected)


def test_convert_killed_while_writing_leaves_the_old_output(source: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SAMHQ_JAX_CACHE", "0")
    dst = tmp_path / "ours"
    assert convert_main([str(source), str(dst)]) == 0
    old = {p.name: p.read_bytes() for p in dst.iterdir()}

    def half_then_killed(path: Path, *_args: object, **_kwargs: object) -> None:
        (Path(path) / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr("convert.cli.save_checkpoint", half_then_killed)
    assert convert_main([str(source), str(dst), "--overwrite"]) == 130
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == old and _entries(tmp_path) == ["ours"]
    capsys.readouterr()


def test_eval_report_written_whole(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    summary, run = {"mean": {}}, {"checkpoint": "ck"}
    report.write_outputs(out, [], summary, run, "# table\n", {"best_a.png": b"png1", "worst_b.png": b"png2"})
    assert _entries(out) == ["per_image.csv", "pictures", "summary.json", "summary.md"]
    assert _entries(out / "pictures") == ["best_a.png", "worst_b.png"]
    with pytest.raises(InputError, match=r"--output .*eval: already exists; give --overwrite"):
        report.write_outputs(out, [], summary, run, "# again\n")
    assert (out / "summary.md").read_text() == "# table\n"
    report.write_outputs(out, [], summary, run, "# new\n", {"best_c.png": b"png3"}, overwrite=True)
    assert _entries(out / "pictures") == ["best_c.png"]  # the old pictures are gone
    assert (out / "summary.md").read_text() == "# new\n" and json.loads((out / "summary.json").read_text())[
        "run"
    ] == run
    assert _entries(tmp_path) == ["eval"]
