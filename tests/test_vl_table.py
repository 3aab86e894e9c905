"""Table 4 against what learns nothing: the majority answer, the image-blind control and chance, tested over seeds
and said in words, on hand-made per-seed results."""
import json
import math

import pandas as pd
import pytest

from absvit.vl.table import table4, vl_frame


def _results(tmp_path, kind: str, vqa: list[float], blind: list[float], r1: list[float], loss: float) -> list:
    """One vl-vqa and one vl-retrieval result.json per seed of one encoder kind (retrieval's final training loss
    ``loss``, its chance loss that of one negative: ln 2 + ln 2)."""
    files = []
    for seed, (acc, bl, r) in enumerate(zip(vqa, blind, r1)):
        common = {"encoder": f"{kind}_pico_patch8_64_gap", "seed": seed, "train_splits": "train2014",
                  "text_encoder_pretrained": True, "text_encoder_pretraining": "masked LM, 300 steps"}
        for task, values in (("vqa", {"vqa_accuracy": acc, "majority_baseline": 16.0, "blind_accuracy": bl}),
                             ("retrieval", {"i2t_r1": r, "t2i_r1": r, "chance_r1": 100 / 12, "final_train_loss": loss,
                                            "chance_loss": 2 * math.log(2)})):
            path = tmp_path / f"{kind}-{task}-{seed}.json"
            path.write_text(json.dumps({**common, "task": task, **values}))
            files.append(path)
    return files


@pytest.fixture
def reported(tmp_path):
    files = (_results(tmp_path, "vit", [30.0, 31.0, 32.0], [30.5, 31.0, 31.5], [8.0, 9.0, 8.0], 1.3870)
             + _results(tmp_path, "absvit", [40.0, 41.0, 42.0], [30.0, 30.5, 31.0], [25.0, 30.0, 35.0], 0.9))
    return table4(vl_frame(files), tmp_path / "out"), tmp_path / "out"


def test_each_encoder_is_tested_against_the_majority_answer_its_image_blind_control_and_chance(reported):
    rep, out = reported
    tests = rep.significance.set_index(["pair", "column"])
    vit, absvit = "vit_pico_patch8_64_gap", "absvit_pico_patch8_64_gap"
    assert tests.loc[(f"{vit} - majority answer", "VQA"), "difference"] == pytest.approx(15.0)
    assert tests.loc[(f"{vit} - image-blind", "VQA"), "difference"] == pytest.approx(0.0)
    assert tests.loc[(f"{absvit} - image-blind", "VQA"), "difference"] == pytest.approx(10.5)
    assert tests.loc[(f"{absvit} - chance", "TR@1"), "verdict"] == "exceeds the seed spread"
    caption = (out / "table4.tex").read_text()
    assert "The same VQA models with every image blanked (the question alone) score 30.8" in caption
    assert set(pd.read_csv(out / "table4.csv").columns) >= {"VQA", "TR@1"}


def test_the_report_says_which_encoder_learned_what(reported):
    note = reported[0].note
    assert "What this run shows:" in note
    vit_words = note.split("vit_pico_patch8_64_gap:")[1].split("absvit_pico")[0]
    assert "its VQA accuracy exceeds the majority answer beyond the seed spread" in vit_words
    assert "does not exceed its image-blind control" in vit_words and "it answers from the question, not the image" in vit_words
    assert "retrieval learned nothing in this run" in vit_words
    assert "training loss ended at 1.387, the loss of scores that ignore the pair (1.386" in vit_words
    assert "never left its starting plateau" in vit_words
    absvit_words = note.split("absvit_pico_patch8_64_gap:")[1]
    assert "exceeds its image-blind control" in absvit_words and "does not exceed" not in absvit_words
    assert "its retrieval R@1 exceeds chance both ways" in absvit_words
    assert "training loss ended at 0.900, below the loss of scores that ignore the pair (1.386)" in absvit_words
    assert "plateau" not in absvit_words
