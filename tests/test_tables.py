"""Tables 1 and 2 in the paper's shape, and the reproduction report, from fixture results."""
import pandas as pd

from absvit import tables


def _paper_table1_long() -> pd.DataFrame:
    t = tables.PAPER_TABLE1
    return pd.DataFrame([{"backbone": b, "dataset": d, "miou": t.loc[b, d]} for b in t.index for d in t.columns])


def test_table1_has_the_papers_rows_columns_and_gains(tmp_path):
    tables.table1(_paper_table1_long(), tmp_path, label="Embedded default.")
    tex = (tmp_path / "table1.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert "Model & PASCAL VOC & Cityscapes & ADE20K" in tex
    assert "ResNet-101 & 77.1 & 78.7 & 42.9" in tex
    assert "ViT-B & 80.1 & 75.3 & 45.2" in tex
    assert "AbSViT-B & 81.3 (+1.2) & 76.8 (+1.5) & 47.2 (+2.0)" in tex  # the paper's own "+x.x"
    assert "Embedded default." in tex.split(r"\caption{")[1].split("}")[0] + "}"
    csv = pd.read_csv(tmp_path / "table1.csv", index_col=0)
    assert csv.loc["AbSViT-B", "ADE20K"] == 47.2


def test_table1_marks_missing_results(tmp_path):
    frame = _paper_table1_long()
    frame = frame[~((frame.backbone == "vit") & (frame.dataset == "voc"))]
    tables.table1(frame, tmp_path)
    tex = (tmp_path / "table1.tex").read_text()
    assert "ViT-B & -- & 75.3" in tex and "AbSViT-B & 81.3 & 76.8 (+1.5)" in tex


def test_table2_and_report_set_each_number_beside_the_papers(tmp_path):
    frame = pd.DataFrame([{"arm": "with_lvar", "clean": 75.0, "in_c": 60.0, "in_a": 10.0, "in_r": 35.0, "in_sk": 22.0},
                          {"arm": "without_lvar", "clean": 73.1, "in_c": 69.0, "in_a": 9.5, "in_r": 33.5, "in_sk": 20.8}])
    t2 = tables.table2(frame, tmp_path)
    tex = (tmp_path / "table2.tex").read_text()
    lines = [l for l in tex.splitlines() if l.startswith("AbSViT")]
    assert lines == [r"AbSViT & $\times$ & 73.1 & 69.0 & 9.5 & 33.5 & 20.8 \\",
                     r"AbSViT & \checkmark & 75.0 & 60.0 & 10.0 & 35.0 & 22.0 \\"]
    assert r"IN-C ($\downarrow$)" in tex
    tables.report(tmp_path, t2=t2, t1=tables.table1(_paper_table1_long(), tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "| with_lvar | Clean | 75.0 | 74.1 | 0.9 |" in report
    assert "| with_lvar | IN-C ($\\downarrow$) | 60.0 | 66.7 | -6.7 |" in report
    assert "| AbSViT-B | ADE20K | 47.2 | 47.2 | 0.0 |" in report
