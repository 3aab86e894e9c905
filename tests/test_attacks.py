"""FGSM / PGD as the official code measures them (absvit.attacks), and their suites in `absvit evaluate`."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F

from absvit.attacks import ATTACKS, PIXEL, Attack, perturb
from absvit.evaluate import evaluate

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _bounds(images):
    std, mean = torch.tensor(STD).view(1, 3, 1, 1), torch.tensor(MEAN).view(1, 3, 1, 1)
    return PIXEL / std, (0 - mean) / std, (1 - mean) / std


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = timm.create_model("absvit_pico_patch8_64").eval()
    pixels = torch.rand(6, 3, 64, 64)
    pixels[:, :, :8] = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)  # pixels at the bounds: the clamp has work
    images = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return model, images, torch.randint(0, 10, (6,))


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_the_perturbation_stays_within_epsilon_per_channel_and_in_the_valid_pixels(setup, name):
    model, images, labels = setup
    adversarial = perturb(model, images, labels, ATTACKS[name], mean=MEAN, std=STD,
                          generator=torch.Generator().manual_seed(0))
    epsilon, low, high = _bounds(images)
    delta = adversarial - images
    assert (delta.abs() <= epsilon * (1 + 1e-5)).all()
    assert (adversarial >= low - 1e-6).all() and (adversarial <= high + 1e-6).all()
    assert (delta.abs().amax(dim=(0, 2, 3)) > 0.5 * epsilon.flatten()).all()  # every channel moved


def test_fgsm_is_one_signed_gradient_step_of_one_level(setup):
    model, images, labels = setup
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    epsilon, low, high = _bounds(images)
    by_hand = torch.max(torch.min(images + epsilon * grad.sign(), high), low)
    assert torch.equal(perturb(model, images, labels, ATTACKS["fgsm"], mean=MEAN, std=STD), by_hand)


def test_pgd_of_one_step_without_random_start_is_fgsm(setup):
    model, images, labels = setup
    one_step = Attack(steps=1, step=PIXEL, random_start=False)
    assert torch.equal(perturb(model, images, labels, one_step, mean=MEAN, std=STD),
                       perturb(model, images, labels, ATTACKS["fgsm"], mean=MEAN, std=STD))
    assert ATTACKS["pgd"] == Attack(steps=5, step=0.5 * PIXEL, epsilon=PIXEL, random_start=True)  # the official protocol


def test_the_random_start_follows_its_generator(setup):
    model, images, labels = setup
    runs = [perturb(model, images, labels, ATTACKS["pgd"], mean=MEAN, std=STD, generator=torch.Generator().manual_seed(s))
            for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_attacked_accuracy_is_at_most_clean_and_a_rerun_gives_the_same_number(tmp_path, embedded, pico_run):
    kw = dict(img_size=64, crop_pct=1.0, workers=0, batch_size=16, track=False)
    checkpoint = pico_run / "model.pth"
    clean = evaluate(None, checkpoint, "clean", embedded / "val", tmp_path / "clean.json", **kw)
    fgsm = evaluate(None, checkpoint, "fgsm", embedded / "val", tmp_path / "fgsm.json", **kw)
    pgd = evaluate(None, checkpoint, "pgd", embedded / "val", tmp_path / "pgd.json", **kw)
    again = evaluate(None, checkpoint, "pgd", embedded / "val", tmp_path / "again.json", **kw)
    assert fgsm["top1"] <= clean["top1"] and pgd["top1"] <= clean["top1"], (clean, fgsm, pgd)
    assert fgsm["images"] == pgd["images"] == clean["images"]
    assert again["top1"] == pgd["top1"] and again["top5"] == pgd["top5"]
    written = json.loads((tmp_path / "pgd.json").read_text())
    assert written["attack"] == {"steps": 5, "step": 0.5 / 255, "epsilon": 1 / 255, "random_start": True, "seed": 0,
                                 "space": "normalised pixels, per channel / std"}
