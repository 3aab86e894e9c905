"""`make gpu-check`'s CPU form (benchmarks/gpu_check.py --device cpu): every check runs and passes here, so the script
is ready for the first GPU; and its table says what failed."""
import json

import pytest

from tests.helpers import ROOT, load_script


@pytest.fixture(scope="module")
def gpu_check():
    return load_script(ROOT / "benchmarks" / "gpu_check.py", "gpu_check")


@pytest.mark.slow
def test_every_check_passes_on_cpu(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "check")]) == 0
    result = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert [r["check"] for r in result["rows"]] == ["pretrain", "evaluate", "segment", "decoder+figures", "vl-vqa",
                                                   "vl-retrieval", "vl-figure", "released"]
    assert all(r["passed"] for r in result["rows"]), result["rows"]
    assert "resumed: weights within 0.0e+00" in result["rows"][0]["note"]  # bit for bit on CPU
    out = capsys.readouterr().out
    assert "8 of 8 checks passed" in out and "peak GPU" in out


def test_a_failing_check_is_a_row_and_a_nonzero_exit(gpu_check, tmp_path, capsys):
    check = gpu_check.Check(tmp_path, {})

    def broken(c):
        c.verb("evaluate", "--checkpoint", tmp_path / "missing.pth", "--suite", "clean", "--data", tmp_path,
               "--out", tmp_path / "x.json", "--no-mlflow")

    check.run("evaluate", broken)
    (row,) = check.rows
    assert not row["passed"] and "missing.pth: no such checkpoint file" in row["note"]
    assert "FAILED" in capsys.readouterr().out
