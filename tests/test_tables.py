"""Tables 1-3 in the paper's shape, labelled by the models behind them, and the reproduction report."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from absvit import tables
from absvit.formats import display_name

ROOT = Path(__file__).resolve().parents[1]
BASE = {"resnet": "resnet101", "vit": "vit_base_patch16_224", "absvit": "absvit_base_patch16_224"}
PICO = {"resnet": "resnet10t", "vit": "vit_pico_patch8_64", "absvit": "absvit_pico_patch8_64"}
PAPER_T1 = {"resnet": (77.1, 78.7, 42.9), "vit": (80.1, 75.3, 45.2), "absvit": (81.3, 76.8, 47.2)}


def _table1_long(models: dict, checkpoints: dict | None = None) -> pd.DataFrame:
    """`absvit segment` results (as segmentation_frame reads them) with the paper's numbers."""
    checkpoints = checkpoints or {k: f"/weights/{m}.pth" for k, m in models.items()}
    return pd.DataFrame([{"backbone": kind, "model": models[kind], "checkpoint": checkpoints[kind], "dataset": d, "miou": v}
                         for kind, row in PAPER_T1.items() for d, v in zip(("voc", "cityscapes", "ade20k"), row)])


def _with_attacks(numbers: tuple) -> tuple:
    """Table 2's five numbers and top-1 under FGSM / PGD (half and a quarter of the clean top-1), unless given."""
    return numbers if len(numbers) == 7 else (*numbers, numbers[0] / 2, numbers[0] / 4)


def _arms(name: str, models: tuple[str, str], numbers: tuple[tuple, tuple]) -> pd.DataFrame:
    """Rows as `absvit ablation --name NAME` writes them."""
    from absvit.ablation import COLUMNS, COMPARISONS

    return pd.DataFrame([{"arm": arm, "run": arm, "model": m, **dict(zip(COLUMNS, _with_attacks(n)))}
                         for arm, m, n in zip(COMPARISONS[name], models, numbers)])


@pytest.mark.parametrize("model, name", [("absvit_base_patch16_224", "AbSViT-B"), ("vit_tiny_patch16_224", "ViT-Ti"),
                                         ("absvit_small_patch16_224", "AbSViT-S"), ("vit_base_patch16_224", "ViT-B"),
                                         ("resnet101", "ResNet-101"), ("resnet50", "ResNet-50"),
                                         ("absvit_pico_patch8_64", "absvit_pico_patch8_64"), ("resnet10t", "resnet10t"),
                                         ("absvit_tiny_patch8_224_gap", "absvit_tiny_patch8_224_gap")])
def test_display_name_is_the_papers_name_only_for_the_papers_models(model, name):
    assert display_name(model) == name


def test_table1_has_the_papers_rows_columns_and_gains(tmp_path):
    tables.table1(_table1_long(BASE), tmp_path, label="Embedded default.")
    tex = (tmp_path / "table1.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\centering" in tex
    assert "Model & PASCAL VOC & Cityscapes & ADE20K" in tex
    rows = [line for line in tex.splitlines() if " & " in line][1:]
    assert rows == [r"ResNet-101 & 77.1 & 78.7 & 42.9 \\", r"ViT-B & 80.1 & 75.3 & 45.2 \\",
                    r"AbSViT-B & 81.3 (+1.2) & 76.8 (+1.5) & 47.2 (+2.0) \\"]  # the paper's order and "+x.x"
    assert "Embedded default." in tex.split(r"\caption{")[1].split("}")[0] + "}"
    csv = pd.read_csv(tmp_path / "table1.csv", index_col=0)
    assert csv.loc["AbSViT-B", "ADE20K"] == 47.2 and list(csv.index) == ["ResNet-101", "ViT-B", "AbSViT-B"]


def test_table1_labels_pico_models_by_name_and_marks_random_init(tmp_path):
    frame = _table1_long(PICO, {"resnet": "None", "vit": "results/embedded/pretrain/vit/model.pth",
                                "absvit": "results/embedded/pretrain/absvit/model.pth"})
    tables.report(tmp_path, t1=tables.table1(frame, tmp_path, label="Embedded default."))
    tex, md, csv = ((tmp_path / f"table1.{ext}").read_text() for ext in ("tex", "md", "csv"))
    for text in (tex, md, csv):
        assert "ViT-B" not in text and "AbSViT-B" not in text and "ResNet-101" not in text
    assert r"resnet10t (random init) & 77.1 & 78.7 & 42.9 \\" in tex
    assert r"vit\_pico\_patch8\_64 & 80.1 & 75.3 & 45.2 \\" in tex
    assert r"absvit\_pico\_patch8\_64 & 81.3 (+1.2) & 76.8 (+1.5) & 47.2 (+2.0) \\" in tex
    assert "| resnet10t (random init) | 77.1 | 78.7 | 42.9 |" in md
    assert list(pd.read_csv(tmp_path / "table1.csv", index_col=0).index) == [
        "resnet10t (random init)", "vit_pico_patch8_64", "absvit_pico_patch8_64"]
    report = (tmp_path / "report.md").read_text()  # no paper number beside another model's
    assert "| absvit_pico_patch8_64 | ADE20K | 47.2 | -- | -- |" in report


def test_table1_marks_random_init_of_a_paper_model_and_does_not_compare_it(tmp_path):
    tables.report(tmp_path, t1=tables.table1(_table1_long(BASE, {**{k: "x.pth" for k in BASE}, "resnet": None}), tmp_path))
    assert r"ResNet-101 (random init) & 77.1" in (tmp_path / "table1.tex").read_text()
    report = (tmp_path / "report.md").read_text()
    assert "| ResNet-101 (random init) | PASCAL VOC | 77.1 | -- | -- |" in report
    assert "| ViT-B | PASCAL VOC | 80.1 | 80.1 | 0.0 |" in report


def test_table1_marks_missing_results_and_leaves_out_backbones_without_any(tmp_path):
    frame = _table1_long(BASE)
    frame = frame[~((frame.backbone == "vit") & (frame.dataset == "voc")) & (frame.backbone != "resnet")]
    tables.table1(frame, tmp_path)
    tex = (tmp_path / "table1.tex").read_text()
    assert "ViT-B & -- & 75.3" in tex and "AbSViT-B & 81.3 & 76.8 (+1.5)" in tex and "ResNet" not in tex


def test_table2_and_report_set_each_number_beside_the_papers(tmp_path):
    frame = _arms("lvar", ("absvit_tiny_patch16_224",) * 2, ((73.1, 69.0, 9.5, 33.5, 20.8), (75.0, 60.0, 10.0, 35.0, 22.0)))
    t2 = tables.table2(frame.iloc[::-1], tmp_path)
    tex = (tmp_path / "table2.tex").read_text()
    lines = [l for l in tex.splitlines() if l.startswith("AbSViT")]
    assert lines == [r"AbSViT-Ti & $\times$ & 73.1 & 69.0 & 9.5 & 33.5 & 20.8 \\",
                     r"AbSViT-Ti & $\surd$ & 75.0 & 60.0 & 10.0 & 35.0 & 22.0 \\"]
    assert r" & $\mathcal{L}_{var}$ & Clean & IN-C ($\downarrow$) & IN-A & IN-R & IN-SK \\" in tex
    assert list(pd.read_csv(tmp_path / "table2.csv", index_col=0).index) == ["AbSViT-Ti w/o L_var", "AbSViT-Ti w/ L_var"]
    tables.report(tmp_path, t2=t2, t1=tables.table1(_table1_long(BASE), tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "| AbSViT-Ti w/ L_var | Clean | 75.0 | 74.1 | 0.9 |" in report
    assert "| AbSViT-Ti w/ L_var | IN-C ($\\downarrow$) | 60.0 | 66.7 | -6.7 |" in report
    assert "| AbSViT-B | ADE20K | 47.2 | 47.2 | 0.0 |" in report
    assert report.index("## Table 1") < report.index("## Table 2")


def test_table2_of_pico_models_is_labelled_so_and_not_compared(tmp_path):
    frame = _arms("lvar", ("absvit_pico_patch8_64",) * 2, ((1, 2, 3, 4, 5), (6, 7, 8, 9, 10)))
    tables.report(tmp_path, t2=tables.table2(frame, tmp_path))
    assert r"absvit\_pico\_patch8\_64 & $\surd$ & 6.0 & 7.0" in (tmp_path / "table2.tex").read_text()
    assert "| absvit_pico_patch8_64 w/ L_var | Clean | 6.0 | -- | -- |" in (tmp_path / "report.md").read_text()


def test_table3_compares_vit_and_absvit_on_the_seven_suites(tmp_path):
    frame = _arms("robustness", ("vit_tiny_patch16_224", "absvit_tiny_patch16_224"),
                  ((72.0, 70.0, 8.0, 32.0, 20.0, 30.5, 12.25), (74.0, 66.0, 10.0, 35.0, 22.5, 33.0, 15.0)))
    tables.report(tmp_path, t3=tables.table3(frame.iloc[::-1], tmp_path, label="Paper recipe."))
    tex = (tmp_path / "table3.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\label{tab:robustness}" in tex
    assert r"Model & Clean & IN-C ($\downarrow$) & IN-A & IN-R & IN-SK & FGSM & PGD \\" in tex  # IN-C: mCE, lower is better
    assert "lower is better" in tex.split(r"\caption{")[1] and "Paper recipe." in tex and "FGSM and 5-step PGD" in tex
    rows = [line for line in tex.splitlines() if " & " in line][1:]
    assert rows == [r"ViT-Ti & 72.0 & 70.0 & 8.0 & 32.0 & 20.0 & 30.5 & 12.2 \\",
                    r"AbSViT-Ti & 74.0 & 66.0 & 10.0 & 35.0 & 22.5 & 33.0 & 15.0 \\"]
    csv = pd.read_csv(tmp_path / "table3.csv", index_col=0)
    assert list(csv.index) == ["ViT-Ti", "AbSViT-Ti"] and list(csv.columns) == [
        "Clean", "IN-C ($\\downarrow$)", "IN-A", "IN-R", "IN-SK", "FGSM", "PGD"]
    md = (tmp_path / "table3.md").read_text()
    assert md.startswith("Paper recipe.\n\n") and "| AbSViT-Ti | 74.0 | 66.0 | 10.0 | 35.0 | 22.5 | 33.0 | 15.0 |" in md
    report = (tmp_path / "report.md").read_text()
    assert "## Table 3 (ViT vs AbSViT robustness)" in report
    assert "| ViT-Ti | Clean | 72.0 | 72.5 | -0.5 |" in report  # the released ViT-Ti
    assert "| AbSViT-Ti | IN-C ($\\downarrow$) | 66.0 | 66.7 | -0.7 |" in report
    assert "| AbSViT-Ti | IN-A | 10.0 | -- | -- |" in report  # no ViT vs AbSViT IN-A number in the paper


def test_table3_of_pico_models_has_no_paper_numbers(tmp_path):
    frame = _arms("robustness", ("vit_pico_patch8_64", "absvit_pico_patch8_64"), ((1, 2, 3, 4, 5), (6, 7, 8, 9, 10)))
    tables.report(tmp_path, t3=tables.table3(frame, tmp_path))
    assert r"vit\_pico\_patch8\_64 & 1.0 & 2.0" in (tmp_path / "table3.tex").read_text()
    report = (tmp_path / "report.md").read_text()
    assert "| vit_pico_patch8_64 | Clean | 1.0 | -- | -- |" in report and "ViT-Ti" not in report


def test_each_preset_writes_its_own_tables():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([Path(sys.executable).with_name("snakemake"), "-n", "--forceall", "all", "--config", "preset=embedded"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for n in (1, 2, 3):
        assert f"results/embedded/tables/table{n}.tex" in out.stdout
    assert "results/tables/" not in out.stdout


def _seeded_arms(name: str, models: tuple[str, str], per_seed: dict[str, list[tuple]]) -> pd.DataFrame:
    """`absvit ablation` rows over seeds: per_seed[arm] = one 5-tuple per seed."""
    from absvit.ablation import COLUMNS

    return pd.DataFrame([{"arm": arm, "run": arm, "model": m, "seed": seed, **dict(zip(COLUMNS, _with_attacks(n)))}
                         for arm, m in zip(per_seed, models) for seed, n in enumerate(per_seed[arm])])


def test_welch_test_matches_the_hand_computed_value():
    from absvit import stats

    # means 2 and 5, both sample variances 1: t = 3 / sqrt(1/3 + 1/3) = 3.674, df = 4, two-sided p = 0.0213
    r = stats.welch([1, 2, 3], [4, 5, 6])
    assert r["difference"] == 3.0 and r["t"] == pytest.approx(3.6742, abs=1e-4) and r["p"] == pytest.approx(0.0213, abs=1e-4)
    assert r["verdict"] == "exceeds the seed spread"
    assert stats.welch([1, 2, 3], [1.5, 2.5, 3.5])["verdict"] == "within the seed spread"
    assert stats.welch([1], [4])["verdict"] == "one seed: no spread to compare"


def test_seeded_tables_show_mean_std_and_n_and_the_report_tests_each_pair(tmp_path):
    frame = _seeded_arms("robustness", ("vit_pico_patch8_64", "absvit_pico_patch8_64"), {
        "vit": [(70.0, 80.0, 10.0, 20.0, 30.0), (70.2, 80.5, 14.0, 20.0, 30.0), (69.8, 79.5, 12.0, 20.0, 30.0)],
        "absvit": [(75.0, 70.0, 11.0, 20.0, 30.0), (75.2, 70.5, 16.0, 20.0, 30.0), (74.8, 69.5, 9.0, 20.0, 30.0)]})
    tables.report(tmp_path, t3=tables.table3(frame, tmp_path))
    tex = (tmp_path / "table3.tex").read_text()
    assert (r"vit\_pico\_patch8\_64 & 70.0$\pm$0.2 & 80.0$\pm$0.5 & 12.0$\pm$2.0 & 20.0$\pm$0.0 & 30.0$\pm$0.0 & "
            r"35.0$\pm$0.1 & 17.5$\pm$0.1 & 3 \\") in tex
    assert ("| absvit_pico_patch8_64 | 75.0 ± 0.2 | 70.0 ± 0.5 | 12.0 ± 3.6 | 20.0 ± 0.0 | 30.0 ± 0.0 | 37.5 ± 0.1 | "
            "18.8 ± 0.1 | 3 |") in (tmp_path / "table3.md").read_text()
    csv = pd.read_csv(tmp_path / "table3.csv", index_col=0)
    assert csv.loc["vit_pico_patch8_64", "Clean"] == 70.0 and csv.loc["vit_pico_patch8_64", "Clean std"] == 0.2
    assert (csv["n"] == 3).all()
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Differences against the seed spread")[1]
    rows = {line.split(" | ")[1]: line for line in section.splitlines() if line.startswith("| absvit_pico")}
    assert "exceeds the seed spread" in rows["Clean"] and "exceeds the seed spread" in rows["IN-C ($\\downarrow$)"]
    assert "within the seed spread" in rows["IN-A"] and "identical across seeds" in rows["IN-R"]
    assert "Welch" in section


def test_tables_compile_with_booktabs_alone(tmp_path):
    from tests.latex import compile_tables

    seeded = _seeded_arms("lvar", ("absvit_tiny_patch16_224",) * 2, {
        "without_lvar": [(73.1, 69.0, 9.5, 33.5, 20.8), (73.3, 68.0, 9.7, 33.1, 20.2)],
        "with_lvar": [(74.1, 66.7, 10.1, 34.9, 22.6), (74.5, 66.1, 10.3, 34.1, 22.0)]})
    tables.table1(_table1_long(PICO, {"resnet": None, "vit": "v.pth", "absvit": "a.pth"}), tmp_path, label="Embedded_default & 50%.")
    tables.table2(seeded, tmp_path)
    tables.table3(_arms("robustness", ("vit_tiny_patch16_224", "absvit_tiny_patch16_224"), ((1, 2, 3, 4, 5), (6, 7, 8, 9, 10))),
                  tmp_path)
    for n in (1, 2, 3):
        assert (tmp_path / f"table{n}.tex").read_text().startswith("% table")  # names the one package it needs
    compile_tables([tmp_path / f"table{n}.tex" for n in (1, 2, 3)], tmp_path / "latex")
