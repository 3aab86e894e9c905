"""`python -m absvit models`: lists models without building their weights."""
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Importing torch (CUDA build) + timm reserves ~3.6 GB of address space; listing all of timm's ViTs
# on the meta device stays under 4.5 GB. Building them for real (the old listing) fails at this
# limit on its first model, vit_5b_patch16_sapiens2 (20 GB of weights), and took the machine's 23 GB.
ADDRESS_SPACE = 6 * 2**30

PROJECT_MODELS = {  # name: (params, input size, released weights)
    "absvit_tiny_patch16_224": ("6.60M", "(3, 224, 224)", "in1k"),
    "absvit_small_patch16_224": ("25.59M", "(3, 224, 224)", "in1k"),
    "absvit_base_patch16_224": ("100.72M", "(3, 224, 224)", "in1k"),
    "absvit_tiny_patch8_224_gap": ("6.60M", "(3, 224, 224)", "in1k"),
    "absvit_pico_patch8_64": ("0.55M", "(3, 64, 64)", "none"),
    "absvit_pico_patch8_64_gap": ("0.55M", "(3, 64, 64)", "none"),
    "absvit_nano_patch8_64": ("3.16M", "(3, 64, 64)", "none"),
    "vit_tiny_patch8_224_gap": ("5.72M", "(3, 224, 224)", "in1k"),
    "vit_pico_patch8_64": ("0.47M", "(3, 64, 64)", "none"),
    "vit_pico_patch8_64_gap": ("0.47M", "(3, 64, 64)", "none"),
    "vit_nano_patch8_64": ("2.72M", "(3, 64, 64)", "none"),
}


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _models(*args, limit=False):
    return subprocess.run([sys.executable, "-m", "absvit", "models", *args], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=_limit_address_space if limit else None, timeout=300)


def _rows(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines()}


@pytest.mark.slow
def test_all_timm_vits_are_listed_under_a_memory_limit():
    out = _models("--filter", "vit_*", limit=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _rows(out.stdout)
    assert len(rows) > 150 and all(name.startswith("vit_") for name in rows)
    assert "  86.57M params  input (3, 224, 224)  weights augreg2_in21k_ft_in1k (+" in rows["vit_base_patch16_224"]
    assert " 1012.61M params " in rows["vit_giant_patch14_224"]
    assert " 6716.03M params " in rows["vit_7b_patch16_dinov3"]
    assert "vit_tiny_patch8_224_gap" in rows  # this project's timm-style name matches the pattern too


def test_default_lists_exactly_the_project_models():
    out = _models()
    assert out.returncode == 0, out.stderr
    rows = _rows(out.stdout)
    assert set(rows) == set(PROJECT_MODELS)
    for name, (params, size, weights) in PROJECT_MODELS.items():
        assert rows[name].split()[1:] == [params, "params", "input", *size.split(), "weights", weights]


def test_a_filter_matching_nothing_is_a_one_line_error():
    out = _models("--filter", "xyz")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr == "absvit models: error: no timm model matches 'xyz'\n"
