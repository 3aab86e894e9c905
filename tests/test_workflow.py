import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_snakemake_dry_run_plans_all():
    snakemake = Path(sys.executable).with_name("snakemake")
    out = subprocess.run([snakemake, "-n", "--forceall", "all"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "model_benchmark" in out.stdout


def test_cli_lists_models():
    out = subprocess.run([sys.executable, "-m", "absvit", "models"], capture_output=True, text=True, check=True)
    assert "absvit_base_patch16_224" in out.stdout and "100.72M" in out.stdout
