"""Is retrieval's failure in the features or in the fusion? A bilinear probe on the frozen encoders' features.

The embedded Table 4's retrieval sits at chance, with a training loss at the loss of scores that ignore the pair
(result.json's ``final_train_loss`` and ``chance_loss``). This script asks whether the pretrained visual encoders
carry what the captions name: for each pretraining run it scores an (image, caption) pair as ``t' W v``, with ``v``
the encoder's frozen bottom-up patch tokens (mean and max over patches, standardised on the train split) and ``t``
the caption's bag of tokens, fits ``W`` with a softmax over the train images (Adam), and reports retrieval recall@1
on the test split with the project's ``recall_at_k``. A probe far above chance, beside a fusion at chance, puts the
failure in METER's fine-tuning at this size, not in the images or the encoders.

    python benchmarks/vl_probe.py                      # the embedded DAG's runs and data (make demo first)
    python benchmarks/vl_probe.py --steps 100 --runs results/embedded/pretrain/vit/s0/model.pth

It prints one row per run and writes nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from absvit.evaluate import load_model  # noqa: E402
from absvit.vl.datasets import ImageDataset, TextDataset  # noqa: E402
from absvit.vl.encoders import VisualEncoder, tokenizer_of  # noqa: E402
from absvit.vl.model import recall_at_k  # noqa: E402
from absvit.vl.recipe import VLRecipe  # noqa: E402
from absvit.vl.records import retrieval_splits  # noqa: E402
from absvit.vl.transforms import vl_transform  # noqa: E402

DATA = ROOT / "results/data/embedded/vl"


@torch.no_grad()
def image_features(checkpoint: Path, records, img_size: int) -> torch.Tensor:
    """(images, 2 x width): the mean and max of the frozen encoder's bottom-up patch tokens."""
    vit = load_model(checkpoint)[0].eval()
    visual = VisualEncoder(vit, text_dim=1, feedback=False).eval()
    images = torch.stack([d["image"] for d in ImageDataset(records, vl_transform(img_size, False))])
    tokens = visual(images, None)[0][:, vit.num_prefix_tokens:]
    return torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1)


def bag_of_tokens(records, tokenizer, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(texts, vocabulary) 0/1 rows, one per caption, and each caption's image index."""
    texts = TextDataset(records, tokenizer, max_len)
    bags = torch.zeros(len(texts), len(tokenizer))
    for j in range(len(texts)):
        bags[j, texts[j]["input_ids"][texts[j]["attention_mask"].bool()]] = 1.0
    return bags, torch.tensor([image for image, _ in texts.samples])


def probe(checkpoint: Path, data: Path, tokenizer, recipe: VLRecipe, *, steps: int, lr: float, seed: int) -> dict:
    """Test recall@k of the bilinear probe fitted on the train split (train + val, as the retrieval recipe)."""
    train, test = retrieval_splits(data, recipe, frozenset())
    v_train, v_test = (image_features(checkpoint, r, recipe.img_size) for r in (train, test))
    mean, std = v_train.mean(0), v_train.std(0) + 1e-6
    v_train, v_test = (v_train - mean) / std, (v_test - mean) / std
    (t_train, i_train), (t_test, i_test) = (bag_of_tokens(r, tokenizer, recipe.max_text_len) for r in (train, test))
    weights = torch.zeros(t_train.shape[1], v_train.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randperm(len(t_train), generator=generator)[:64]
        loss = F.cross_entropy(t_train[batch] @ weights @ v_train.t(), i_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = (t_test @ weights @ v_test.t()).t()  # (images, texts)
    return {"train_loss": loss.item(), **recall_at_k(scores, i_test), "chance_r1": 100.0 / len(test)}


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path,
                        default=sorted(ROOT.glob("results/embedded/pretrain/*/s*/model.pth")),
                        help="pretraining runs' model.pth (default: the embedded DAG's)")
    parser.add_argument("--data", type=Path, default=DATA / "flickr30k", help="a Flickr30k-layout folder")
    parser.add_argument("--text-encoder", type=Path, default=ROOT / "results/data/embedded/vl-text-encoder",
                        help="its tokenizer is the probe's vocabulary")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--max-text-len", type=int, default=16)
    args = parser.parse_args(argv)
    if not args.runs:
        parser.error("no pretraining runs under results/embedded/pretrain (run `make demo`, or pass --runs)")
    torch.manual_seed(0)
    # the splits as the retrieval recipe reads them (train + val); its batch is the fine-tuning's, not the probe's
    recipe = VLRecipe.for_task("retrieval", {"img_size": args.img_size, "max_text_len": args.max_text_len,
                                             "batch_size": 1, "accum_steps": 1})
    tokenizer = tokenizer_of(args.text_encoder)
    rows = [{"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
             **probe(run, args.data, tokenizer, recipe, steps=args.steps, lr=args.lr, seed=0)} for run in args.runs]
    table = pd.DataFrame(rows).round(3)
    print(f"Bilinear probe on frozen bottom-up features, {args.steps} steps of 64 captions (recall in %):")
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
