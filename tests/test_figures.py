"""The appendix figures stage: scores, scenes and their manifest, the Fig. 4 decoder, the figures verb."""
import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from absvit.figures import scores
from absvit.cli import main
from absvit.data.scenes import generate_scenes, read_scenes
from absvit.errors import UsageError
from tests.latex import compile_tables


# -- scores ------------------------------------------------------------------------------------
def _masks():
    """Two objects on a 64 px image, aligned with an 8x8 patch grid: a 16x16 square and a 16x24 block."""
    a = np.zeros((64, 64), bool)
    a[8:24, 8:24] = True
    b = np.zeros((64, 64), bool)
    b[40:56, 24:48] = True
    return a, b


def test_selectivity_sanity():
    a, b = _masks()
    share = a.mean()
    on_a = scores.coverage(a, (8, 8))  # the mask itself, on the map's grid
    assert scores.selectivity(on_a, a) == pytest.approx(1 / share)  # all mass inside: the maximum
    assert scores.selectivity(a.astype(float), a) == pytest.approx(1 / share)  # same resolution as the mask
    assert scores.selectivity(np.ones((8, 8)), a) == pytest.approx(1.0)  # uniform: no selectivity
    assert scores.selectivity(scores.coverage(b, (8, 8)), a) == 0.0 < 1  # on the other object
    half = np.ones((8, 8)) + 3 * on_a  # partly selective
    assert 1 < scores.selectivity(half, a) < 1 / share
    assert scores.selectivity(np.zeros((8, 8)), a) == 1.0  # no mass prefers nothing
    # a mask that is not a multiple of the grid is area-averaged
    odd = np.zeros((60, 60), bool)
    odd[:30] = True
    assert scores.selectivity(np.vstack([np.ones((4, 8)), np.zeros((4, 8))]), odd) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="non-negative"):
        scores.selectivity(-np.ones((8, 8)), a)


def test_display_normalisation_is_the_demos():
    amap = np.array([[0.0, 5.0], [9.0, 10.0]])  # 0.7 max + 0.3 min = 7
    assert scores.display(amap).tolist() == [[0, 0], [2, 3]]


def test_pointing_game_on_hand_made_maps():
    a, b = _masks()
    peak_a = np.zeros((8, 8))
    peak_a[2, 2] = 1  # inside a's patches (rows/cols 1-2)
    peak_b = np.zeros((8, 8))
    peak_b[6, 4] = 1
    edge = np.zeros((8, 8))
    edge[3, 3] = 1  # just outside a
    assert scores.pointing_hit(peak_a, a) and not scores.pointing_hit(peak_a, b)
    assert scores.pointing_hit(peak_b, b) and not scores.pointing_hit(edge, a)
    assert scores.pointing_game([peak_a, peak_b, edge, peak_a], [a, b, a, b]) == 0.5
    assert np.isnan(scores.pointing_game([], []))


def test_specificity_is_zero_for_a_map_that_ignores_the_prior():
    a, b = _masks()
    c = np.zeros((64, 64), bool)
    c[40:56, 0:16] = True
    masks = [a, b, c]
    bright = scores.coverage(a | b | c, (8, 8))  # brightens every object: selective, not specific
    assert scores.selectivity(scores.display(bright), a) > 1
    assert sum(scores.specificity(bright, masks, k) for k in range(3)) == pytest.approx(0, abs=1e-9)
    on_a = scores.coverage(a, (8, 8))  # follows the prior a: selectivity 1/share on a, 0 on b and c
    assert scores.specificity(on_a, masks, 0) == pytest.approx(1 / a.mean())
    assert scores.specificity(on_a, masks, 1) == pytest.approx(-0.5 / a.mean())  # b: 0 - mean(1/share_a, 0)
    assert np.isnan(scores.specificity(on_a, [a], 0))  # no other object to compare with


def test_locality_by_hand():
    grid, n = (3, 3), 10  # 9 patches and a class token
    uniform = torch.full((1, 1, n, n), 1 / n)
    assert scores.locality(uniform, grid, 1) == pytest.approx(1.0)
    own = torch.zeros(1, 1, n, n)
    own[0, 0, :, 0] = 1.0  # every query on the class token
    assert scores.locality(own, grid, 1) == 0.0
    self_only = torch.zeros(1, 1, n, n)
    self_only[0, 0, 1:, 1:] = torch.eye(9)  # each patch on itself: mass 1 over a share of |N| / 10
    sizes = [4, 6, 4, 6, 9, 6, 4, 6, 4]  # corner, edge and centre neighbourhoods of a 3x3 grid
    assert scores.locality(self_only, grid, 1) == pytest.approx(np.mean([10 / k for k in sizes]))


def test_region_mse():
    a, _ = _masks()
    target = np.zeros((3, 64, 64))
    recon = np.where(a, 0.0, 2.0)[None].repeat(3, 0)  # perfect inside, off by 2 outside
    assert scores.region_mse(recon, target, a) == (0.0, 4.0)


# -- scenes and the manifest -----------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig") / "scenes"
    generate_scenes(root, seed=0, count=4)
    return root


def test_generated_scenes(scenes, tmp_path):
    read = read_scenes(scenes, num_classes=10)
    assert len(read) == 4 and all(2 <= len(s.objects) <= 3 for s in read)
    for s in read:
        assert len({o.class_index for o in s.objects}) == len(s.objects)  # different classes
        masks = [np.asarray(Image.open(o.mask)) > 0 for o in s.objects]
        assert all(m.any() for m in masks) and not (sum(m.astype(int) for m in masks) > 1).any()  # disjoint
    generate_scenes(tmp_path / "again", seed=0, count=4)
    assert (tmp_path / "again" / "images" / "scene_00003.png").read_bytes() == (scenes / "images" / "scene_00003.png").read_bytes()


def _manifest(root, text):
    (root / "manifest.csv").write_text(text)
    return root / "manifest.csv"


def test_bad_manifest_names_the_row(scenes, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for sub in ("images", "masks"):
        (bad / sub).symlink_to(scenes / sub)
    good = "images/scene_00000.png,0,1,masks/scene_00000_0.png\n"
    path = _manifest(bad, "image,object,class_index,mask\n" + good + "images/nope.png,1,2,\n")
    with pytest.raises(UsageError, match=r"manifest.csv: row 2 \(line 3\): image 'images/nope.png' is missing"):
        read_scenes(bad, num_classes=10)
    _manifest(bad, "image,object,class_index,mask\n" + good + "images/scene_00000.png,1,10,\n")
    with pytest.raises(UsageError, match=r"row 2 .*class_index '10' .*integer from 0 to 9"):
        read_scenes(path, num_classes=10)
    _manifest(bad, "image,object,class_index,mask\n" + good + "images/scene_00000.png,1,2,masks/none.png\n")
    with pytest.raises(UsageError, match=r"row 2 .*mask 'masks/none.png' is missing"):
        read_scenes(bad, num_classes=10)
    _manifest(bad, "image,class_index\nimages/scene_00000.png,1\n")
    with pytest.raises(UsageError, match=f"{path}: missing column\\(s\\) object"):
        read_scenes(bad, num_classes=10)
    _manifest(bad, "image,object,class_index\nimages/scene_00000.png,0,1\n")  # no masks: a real image
    assert read_scenes(bad, num_classes=10)[0].objects[0].mask is None


# -- the Fig. 4 decoder -----------------------------------------------------------------------
def test_decoder_reconstructs_from_bottom_up_not_top_down(embedded):
    """x0_bu is a per-patch linear function of the pixels (patch embedding + position, layer-normed), of rank
    96 for 192 pixel values per patch, so the least-squares decoder recovers most of each patch of these
    smooth textured images (about 26 dB). x0_td is computed from the last layer's prior-masked tokens
    through the feedback decoders: no pixel detail of its own patch, so the best it gives is about the mean
    image (10-15 dB). 22 dB and a gap of 8 dB leave room for either. The feedback maps are set to the scale a
    trained model has (init makes x0_td ~1e-4 and the test trivial), and alpha is the class-prior 40."""
    from timm.data import create_transform

    from absvit.data.readers import ClassFolder, label_space
    from absvit.figures.decoder import LinearDecoder, fit, patch_tokens

    m = timm.create_model("absvit_pico_patch8_64").eval()
    with torch.no_grad():
        for dec in m.decoders:
            dec.linear.weight.normal_(0, m.embed_dim ** -0.5)
            dec.linear2.weight.normal_(0, m.embed_dim ** -0.5)
    classes, tf = label_space(str(embedded / "train")), create_transform(64, is_training=False, crop_pct=1.0)
    train = torch.stack([x for x, _ in ClassFolder(embedded / "train", classes, tf)])
    x, y = zip(*ClassFolder(embedded / "val", classes, tf))  # held out
    x, y = torch.stack(x), torch.tensor(y)
    dec = fit(m, [train[:100], train[100:]], patch_size=8, model_name="absvit_pico_patch8_64")
    bu, td = (patch_tokens(m, t) for t in m.first_layer_inputs(x, prior=y, alpha=40.0))

    def psnr(tokens):
        return float(10 * torch.log10(1 / ((dec.to_rgb(dec.decode(tokens, (8, 8))) - dec.to_rgb(x)) ** 2).mean()))

    assert psnr(bu) > 22 and psnr(td) < psnr(bu) - 8, (psnr(bu), psnr(td))
    # the closed form is the MSE optimum: its training error is the one it reports, and a nudge only raises it
    tokens = patch_tokens(m, m.first_layer_inputs(train, top_down=False)[0])
    target = torch.nn.functional.unfold(train, 8, stride=8).transpose(1, 2)
    mse = lambda d: float(((tokens @ d.weight.T + d.bias - target) ** 2).mean())  # noqa: E731
    assert mse(dec) == pytest.approx(dec.meta["train_mse"], rel=1e-3)
    assert mse(LinearDecoder(dec.weight * 1.01, dec.bias, patch_size=8)) > mse(dec)


# -- the verbs end to end -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from absvit.checkpoint import save_checkpoint
    from absvit.data.synthetic import WNIDS

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    for name in ("absvit_pico_patch8_64", "vit_pico_patch8_64"):
        save_checkpoint(root / f"{name}.pth", timm.create_model(name), arch=name, img_size=64, classes=list(WNIDS))
    return root


def test_figures_verb_end_to_end(embedded, scenes, checkpoints, tmp_path):
    a, v = checkpoints / "absvit_pico_patch8_64.pth", checkpoints / "vit_pico_patch8_64.pth"
    assert main(["decoder", "--checkpoint", str(a), "--data", str(embedded / "train"), "--out", str(tmp_path / "d.pth"),
                 "--max-images", "64"]) == 0
    out = tmp_path / "figures"
    assert main(["figures", "--absvit-checkpoint", str(a), "--vit-checkpoint", str(v), "--decoder", str(tmp_path / "d.pth"),
                 "--scenes", str(scenes), "--out-dir", str(out), "--alphas", "1", "10", "--show", "3", "--no-mlflow"]) == 0
    result = json.loads((out / "figures.json").read_text())
    objects = [len(s.objects) for s in read_scenes(scenes, 10)][:3]
    expected = {"fig1": (3, 2 + max(objects), sum(2 + n for n in objects)),  # image | bottom-up | one per prior
                "fig3": (3, 1 + 2, 3 * 3),  # image | one per alpha
                "fig4": (min(6, sum(objects)), 4, 4 * min(6, sum(objects)))}  # image | bu | td | bu + td
    for name, (rows, cols, panels) in expected.items():
        fig = result["figures"][name]
        assert (fig["rows"], fig["cols"], fig["panels"]) == (rows, cols, panels)
        with Image.open(fig["png"]) as im:
            assert im.width == pytest.approx(fig["width_in"] * 200, abs=2)
        assert open(fig["pdf"], "rb").read(5) == b"%PDF-"
    assert [(r["attention"], r["alpha"]) for r in result["rows"]] == [("bottom-up", None), ("top-down", 1.0),
                                                                      ("top-down", 10.0), ("top-down", -40.0),
                                                                      ("bottom-up", None)]  # -40: the control
    assert result["rows"][0]["specificity"] == pytest.approx(0, abs=1e-9)  # a bottom-up map ignores the prior
    assert {len(v) for v in result["locality"].values()} == {4}  # per block, both models
    assert all(row["locality_4"] == result["locality"][row["model"]][3] for row in result["rows"])
    assert result["pairs"] == sum(len(s.objects) for s in read_scenes(scenes, 10))
    for row in result["rows"]:  # the pointing game counts hits: k of the pairs, for a whole k
        assert row["pointing"] * row["pairs"] / 100 == pytest.approx(round(row["pointing"] * row["pairs"] / 100))
    tex = (out / "figures.tex").read_text()
    assert "\\toprule" in tex and "\\checkmark" not in tex and "absvit\\_pico\\_patch8\\_64" in tex
    assert (out / "figures.csv").read_text().startswith("model,attention,alpha,pairs,selectivity")
    assert "by chance" in (out / "figures.md").read_text()
    compile_tables([out / "figures.tex"], tmp_path / "latex")  # \input into a booktabs-only document


def test_figures_verb_reports_a_bad_manifest(scenes, checkpoints, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images").symlink_to(scenes / "images")
    _manifest(bad, "image,object,class_index,mask\nimages/scene_00000.png,0,42,\n")
    a, v = checkpoints / "absvit_pico_patch8_64.pth", checkpoints / "vit_pico_patch8_64.pth"
    from absvit.figures.decoder import LinearDecoder

    LinearDecoder(torch.zeros(192, 96), torch.zeros(192), patch_size=8, model="absvit_pico_patch8_64").save(tmp_path / "d.pth")
    assert main(["figures", "--absvit-checkpoint", str(a), "--vit-checkpoint", str(v), "--decoder", str(tmp_path / "d.pth"),
                 "--scenes", str(bad), "--out-dir", str(tmp_path / "o"), "--no-mlflow"]) == 2
    assert "row 1 (line 2): class_index '42'" in capsys.readouterr().err
    # the baselines are checked too: a ViT is no AbSViT
    assert main(["figures", "--absvit-checkpoint", str(v), "--vit-checkpoint", str(v), "--decoder", str(tmp_path / "d.pth"),
                 "--scenes", str(bad), "--out-dir", str(tmp_path / "o"), "--no-mlflow"]) == 2
    assert "not an AbSViT" in capsys.readouterr().err


def test_first_layer_inputs_are_what_pass_two_values_see():
    m = timm.create_model("absvit_pico_patch8_64").eval()
    x = torch.randn(2, 3, 64, 64)
    bu, td = m.first_layer_inputs(x, prior=torch.tensor([1, 2]), alpha=40.0)
    x0 = m.embed(x)
    assert torch.equal(bu, m.blocks[0].norm1(x0))
    with torch.no_grad():
        tds = m.top_down(m.norm(m.run_blocks(x0)[0]), torch.tensor([1, 2]), 40.0)
    assert torch.allclose(td, tds[0])
    assert m.first_layer_inputs(x, top_down=False)[1] is None


def _seed_csv(path, spec, spec_neg, locality):
    """A figures.csv of one seed: AbSViT bottom-up, top-down at alpha 40 and -40 (the control), ViT bottom-up."""
    rows = [("absvit_pico_patch8_64_gap", "bottom-up", "--", 0.0, 1.5),
            ("absvit_pico_patch8_64_gap", "top-down", "40", spec, 2.5),
            ("absvit_pico_patch8_64_gap", "top-down", "-40", spec_neg, 2.4),
            ("vit_pico_patch8_64_gap", "bottom-up", "--", 0.0, 1.6)]
    frame = pd.DataFrame([{"model": m, "attention": a, "alpha": al, "pairs": 60, "selectivity": sel,
                           "selectivity_raw": 1.2, "pointing": 40.0, "specificity": sp, "mse_inside": 0.1,
                           "mse_outside": 0.1, **{f"locality_{b + 1}": v for b, v in enumerate(locality)}}
                          for m, a, al, sp, sel in rows])
    frame.to_csv(path, index=False)
    return path


def test_the_report_says_what_the_specificity_and_locality_show(tmp_path):
    from absvit.figures.table import figure_scores

    local = [_seed_csv(tmp_path / f"s{i}.csv", spec, neg, [2.6, 2.4, 2.1, 2.0])
             for i, (spec, neg) in enumerate([(1.4, 1.5), (1.7, 1.6), (1.2, 0.9)])]
    text = figure_scores(local, tmp_path / "a")
    assert "top-down map follows the prior: specificity 1.43 ± 0.25 over 3 seeds, above 0 beyond the seed spread" in text
    assert "the map follows the size of the feedback" in text  # the control keeps its specificity
    text = figure_scores([_seed_csv(tmp_path / f"n{i}.csv", spec, -spec, [2.6, 2.4, 2.1, 2.0])
                          for i, spec in enumerate([1.4, 1.7, 1.2])], tmp_path / "c")
    assert "the map follows the prior's sign, i.e. attention re-weighted by the prior" in text
    assert "Selectivity on the prior's object: top-down 2.50, bottom-up 1.50" in text
    assert "absvit_pico_patch8_64_gap: 2.60 2.40 2.10 2.00" in text and "too uniform" not in text
    csv = pd.read_csv(tmp_path / "a" / "figures.csv", index_col="Model")
    assert csv.loc["absvit_pico_patch8_64_gap top-down, alpha 40", "Specificity"] == pytest.approx(1.4333, abs=1e-4)
    assert "Locality block 4" in csv and "Locality block 4" not in (tmp_path / "a" / "figures.tex").read_text()

    uniform = [_seed_csv(tmp_path / f"u{i}.csv", spec, -spec, [1.0, 1.01, 1.02, 1.0])
               for i, spec in enumerate([0.1, -0.1, 0.05])]
    text = figure_scores(uniform, tmp_path / "b")
    assert "does not follow the prior beyond the seed spread" in text
    assert "With the prior's sign flipped (the control): specificity -0.02" in text
    assert "is too uniform (mean locality under 1.5) for any prior to steer it" in text
