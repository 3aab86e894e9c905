"""The V&L recipe as the official code trains: each task's defaults, the retrieval loss and heads, and gradient
accumulation in the one training loop (equal to one step on the concatenated batch; DDP's all-reduce once per update)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import pytest

from absvit import engine
from absvit.errors import UsageError
from absvit.progress import Progress
from absvit.vl.recipe import VLRecipe
from absvit.vl.model import ITMHead, RankHead, RetrievalObjective, param_groups
from tests.helpers import HIDDEN, SENTENCES, encode, images, meter


def test_each_task_has_the_official_recipe():
    vqa, retrieval = VLRecipe.for_task("vqa", {}), VLRecipe.for_task("retrieval", {})
    assert (vqa.batch_size, vqa.accum_steps, vqa.micro_batch(6), vqa.micro_batch(8)) == (432, 3, 24, 18)
    assert (vqa.lr, vqa.head_mult, vqa.fusion_mult, vqa.feedback_mult) == (1e-5, 50, 10, 3)
    assert (vqa.max_text_len, vqa.var_weight, vqa.trainval, vqa.epochs, vqa.warmup) == (50, 0.3, False, 10, 0.1)
    assert (retrieval.batch_size, retrieval.accum_steps, retrieval.micro_batch(8)) == (512, 16, 4)
    assert (retrieval.lr, retrieval.head_mult, retrieval.fusion_mult, retrieval.feedback_mult) == (1e-5, 5, 10, 3)
    assert (retrieval.max_text_len, retrieval.var_weight, retrieval.itm_weight, retrieval.negatives) == (40, 0, 1, 15)
    assert retrieval.trainval  # Karpathy train + val, as the official code
    assert VLRecipe.for_task("retrieval", {"batch_size": 16, "accum_steps": 1}).batch_size == 16  # values win
    with pytest.raises(UsageError, match=r"^vl\.accum_steps: 5 does not divide batch_size 432"):
        VLRecipe.for_task("vqa", {"accum_steps": 5}, where="vl")
    with pytest.raises(UsageError, match=r"^vl\.batch_size: 432 = 3 accumulated steps x 144 does not split over 5 "
                                         r"processes; expected a multiple of 15"):
        vqa.micro_batch(5, where="vl")
    with pytest.raises(UsageError, match="unknown V&L task 'nlvr2'"):
        VLRecipe.for_task("nlvr2", {})


def retrieval_objective(roberta_folder, **kwargs):
    """The objective in eval mode (no dropout: the hand computations run the model again)."""
    model = meter(roberta_folder, "absvit_pico_patch8_64")  # seeds torch: the heads below are the same each time
    itm = ITMHead(2 * HIDDEN)
    return RetrievalObjective(model, itm, RankHead(2 * HIDDEN, itm=itm), negatives=2,
                              generator=torch.Generator().manual_seed(0), **kwargs).eval()


def batch(tokenizer):
    ids, mask = encode(tokenizer, ["a red ring and a blue star.", "is there a star?", "how many objects?"])
    neg_ids, neg_mask = encode(tokenizer, SENTENCES[:6])
    return images(3), ids, mask, neg_ids.view(3, 2, -1), neg_mask.view(3, 2, -1)


def test_retrieval_loss_is_itm_plus_rank_without_lvar(roberta_folder, tokenizer):
    """loss = CE(ITM logits of half-mismatched pairs) + CE(rank scores of each image's positive and negatives), weight
    1 each, and no L_var term (the official compute_irtr / compute_itm return none)."""
    r = VLRecipe.for_task("retrieval", {})
    objective = retrieval_objective(roberta_folder, itm_weight=r.itm_weight, var_weight=r.var_weight)
    x, ids, mask, neg_ids, neg_mask = inputs = batch(tokenizer)
    loss = objective(inputs)
    # by hand, redrawing the ITM pairs with a generator in the same state
    objective.generator = torch.Generator().manual_seed(0)
    labels, index = objective.mismatched(3, torch.device("cpu"))
    with torch.no_grad():
        itm_logits = objective.itm_score(objective.meter(x[index], ids, mask, "eos")["cls_feats"])
        itm = -F.log_softmax(itm_logits, dim=-1)[torch.arange(3), labels].mean()
        pairs = objective.meter(x.repeat_interleave(3, dim=0), torch.cat([ids[:, None], neg_ids], 1).flatten(0, 1),
                                torch.cat([mask[:, None], neg_mask], 1).flatten(0, 1), "eos")
        scores = objective.rank_output(pairs["cls_feats"]).view(3, 3)
        rank = -F.log_softmax(scores, dim=-1)[:, 0].mean()
    assert pairs["var_loss"] > 0  # there is an L_var to leave out
    assert loss.item() == pytest.approx((rank + itm).item(), rel=1e-5)
    with_var = retrieval_objective(roberta_folder, var_weight=0.3)
    assert with_var(inputs).item() == pytest.approx((rank + itm + 0.3 * pairs["var_loss"]).item(), rel=1e-5)


def test_the_itm_head_is_frozen_and_the_rank_head_starts_from_its_matched_row(roberta_folder, tokenizer):
    objective = retrieval_objective(roberta_folder)
    itm, rank = objective.itm_score, objective.rank_output
    torch.testing.assert_close(rank.fc.weight, itm.fc.weight[1:], rtol=0, atol=0)
    torch.testing.assert_close(rank.fc.bias, itm.fc.bias[1:], rtol=0, atol=0)
    before = {k: v.clone() for k, v in itm.state_dict().items()}
    rank_before = rank.fc.weight.detach().clone()
    optimizer = torch.optim.AdamW(param_groups(objective, lr=1e-3, head_mult=5), betas=(0.9, 0.98), eps=1e-8)
    engine.optimizer_step(objective, [(batch(tokenizer), None)], optimizer, amp=torch.autocast("cpu", enabled=False))
    assert all(p.grad is None for p in itm.parameters())  # no gradient reaches the ITM head
    assert all(torch.equal(before[k], v) for k, v in itm.state_dict().items())
    assert not torch.equal(rank.fc.weight, rank_before)  # the rank head trains (at the base lr)


class Classifier(nn.Module):
    """A deterministic objective (no dropout): cross-entropy (a batch mean) of a pico ViT."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        import timm

        self.vit = timm.create_model("vit_pico_patch8_64")

    def forward(self, x, y):
        return F.cross_entropy(self.vit(x), y)


def data(n=12):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 64, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def sgd(model):
    """Plain SGD: the update is the gradient, so equal gradients give equal weights (Adam's first step, g / |g|,
    would turn float noise in a near-zero gradient into a full step)."""
    return torch.optim.SGD(model.parameters(), lr=0.1)


def assert_same_update(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("k", [2, 3])
def test_an_update_over_k_micro_batches_is_one_step_on_their_concatenation(k):
    x, y = data()
    whole, split = Classifier(), Classifier()
    amp = torch.autocast("cpu", enabled=False)
    loss = engine.optimizer_step(whole, [(x, y)], sgd(whole), amp=amp)
    micro = engine.optimizer_step(split, list(zip(x.chunk(k), y.chunk(k))), sgd(split), amp=amp)
    assert micro.item() == pytest.approx(loss.item(), rel=1e-6)  # the mean of the micro-batches' losses
    assert_same_update(whole, split)

    # the loop: accum_steps micro-batches per step, progress and on_step per update, a last incomplete group left out
    looped, steps = Classifier(), []
    loader = list(zip(x.chunk(k), y.chunk(k))) + [(x[:1], y[:1])]
    engine.train_one_epoch(looped, loader, sgd(looped), torch.device("cpu"), progress=Progress("t", 1),
                           finite=engine.FiniteCheck("-"), where="step {step}", accum_steps=k,
                           on_step=lambda step, loss, lr: steps.append((step, loss.item())))
    assert steps == [(1, pytest.approx(loss.item(), rel=1e-6))]
    assert_same_update(whole, looped)


def test_ddp_all_reduces_once_per_update(tmp_path):
    """Under DDP the gradient all-reduce (its communication hook) runs on the last micro-batch only: as often for
    an update of 3 micro-batches as for one of 1 (a real gloo process group, one process)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        calls = []

        def hook(state, bucket):
            calls.append(bucket.index())
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        model = nn.parallel.DistributedDataParallel(Classifier())
        model.register_comm_hook(None, hook)
        x, y = data()
        amp, optimizer = torch.autocast("cpu", enabled=False), sgd(model)
        engine.optimizer_step(model, [(x, y)], optimizer, amp=amp)  # DDP sizes its buckets after a first step
        calls.clear()
        engine.optimizer_step(model, [(x, y)], optimizer, amp=amp)
        once = len(calls)
        calls.clear()
        engine.optimizer_step(model, list(zip(x.chunk(3), y.chunk(3))), optimizer, amp=amp)
        assert once > 0 and len(calls) == once
    finally:
        dist.destroy_process_group()
