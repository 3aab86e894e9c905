"""benchmarks/vl_probe.py: the bilinear probe on frozen encoder features runs on any run and Flickr30k-layout data,
and fits its training captions."""
import math

from tests.helpers import ROOT, load_script


def test_the_probe_fits_the_training_captions_and_scores_the_test_split(vl_data, encoders):
    probe = load_script(ROOT / "benchmarks" / "vl_probe.py", "vl_probe")
    table = probe.main(["--runs", str(encoders["vit"]), str(encoders["absvit"]), "--data", str(vl_data["flickr30k"]),
                        "--text-encoder", str(vl_data["text"]), "--steps", "60"])
    assert list(table["run"]) == [str(encoders["vit"]), str(encoders["absvit"])]
    assert (table["chance_r1"] == round(100 / 3, 3)).all()  # 3 test images
    assert table[["i2t_r1", "t2i_r1", "i2t_r10"]].stack().between(0, 100).all() and (table["i2t_r10"] == 100).all()
    # a softmax over the 9 train + val images starts at ln 9 = 2.2; the probe's captions name what each image holds
    assert (table["train_loss"] < 0.5 * math.log(9)).all()
