"""The GPU benchmark (benchmarks/gpu.py): every code path at toy size on CPU, its JSON, and what it says without CUDA."""
import json

import pytest
import torch

from tests.helpers import ROOT, load_script


@pytest.fixture(scope="module")
def gpu_bench():
    return load_script(ROOT / "benchmarks" / "gpu.py", "bench_gpu")


STEP = {"kind": str, "model": str, "batch": int, "img_size": int, "compiled": bool, "img_s": float,
        "peak_mem_gib": float, "flops_per_img": float, "mfu": type(None)}
LOOP = {"kind": str, "model": str, "batch": int, "img_size": int, "compiled": bool, "img_s": float,
        "bare_step_img_s": float}
EVAL = {"kind": str, "model": str, "batch": int, "img_size": int, "img_s": float, "peak_mem_gib": float}
SEGMENT = {"kind": str, "model": str, "batch": int, "crop": list, "step_s": float, "peak_mem_gib": float}


@pytest.mark.slow
def test_smoke_run_measures_every_row_and_writes_the_json(gpu_bench, tmp_path, capsys):
    out = tmp_path / "bench" / "gpu.json"
    # aot_eager: the compiled rows through dynamo and AOT autograd, without inductor's C++ build (minutes on CPU)
    assert gpu_bench.main(["--device", "cpu", "--smoke", "--compile-backend", "aot_eager", "--out", str(out),
                           "--data", str(tmp_path / "data")]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"card", "torch", "measured_at", "rows"}
    assert result["card"] == "cpu" and result["torch"] == torch.__version__
    rows = {kind: [r for r in result["rows"] if r["kind"] == kind] for kind in ("step", "loop", "eval", "segment")}
    assert [(r["model"], r["compiled"]) for r in rows["step"]] == [
        ("vit_pico_patch8_64", False), ("vit_pico_patch8_64", True),
        ("absvit_pico_patch8_64", False), ("absvit_pico_patch8_64", True)]
    assert [r["model"] for r in rows["loop"]] == ["absvit_pico_patch8_64"]
    assert [r["model"] for r in rows["segment"]] == ["absvit_pico_patch8_64", "vit_pico_patch8_64"]
    assert [r["model"] for r in rows["eval"]] == ["vit_pico_patch8_64", "absvit_pico_patch8_64"]
    assert all(r["img_s"] > 0 for r in rows["eval"])
    for kind, schema in (("step", STEP), ("loop", LOOP), ("eval", EVAL), ("segment", SEGMENT)):
        for row in rows[kind]:
            assert {k: type(v) for k, v in row.items()} == schema, row
    for row in rows["step"]:
        assert row["img_s"] > 0 and row["flops_per_img"] > 0
    absvit, vit = (r["flops_per_img"] for r in rows["step"][2::-2])
    assert 1.8 < absvit / vit < 2.6  # two passes plus the feedback path
    assert rows["loop"][0]["img_s"] > 0 and rows["loop"][0]["bare_step_img_s"] > 0
    assert rows["segment"][0]["crop"] == [64, 64] and rows["segment"][0]["step_s"] > 0
    printed = capsys.readouterr().out
    assert "step     absvit_pico_patch8_64" in printed and "eval     absvit_pico_patch8_64" in printed and "bare step" in printed and "ms/step" in printed


def test_without_cuda_it_says_so_and_writes_nothing(gpu_bench, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_bench.main(["--out", str(tmp_path / "gpu.json")]) == 0
    assert "the GPU rows need CUDA" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists()


def test_peak_flops_by_card_name(gpu_bench):
    assert gpu_bench.peak_flops("NVIDIA H200") == 989e12
    assert gpu_bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_bench.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_bench.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_bench.peak_flops("Some Future GPU") is None
