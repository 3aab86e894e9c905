"""The evaluation loop (``engine.accuracy``): the same top-1 / top-5 as a plain per-batch loop, without a host
sync per batch."""
import pytest
import timm
import torch

from absvit import engine


def _reference(model, loader, restrict=None):
    """The plain loop: fp32 logits per batch, counts in Python."""
    top1 = top5 = total = 0
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images)
            classes = torch.arange(logits.shape[1]) if restrict is None else torch.tensor(restrict)
            pred = classes[logits[:, classes].topk(min(5, len(classes)), dim=-1).indices]
            top1 += int((pred[:, 0] == labels).sum())
            top5 += int((pred == labels[:, None]).any(-1).sum())
            total += len(labels)
    return {"top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total, "images": total}


def _loader(n, batch=4, classes=10):
    g = torch.Generator().manual_seed(n)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, 64, 64, generator=g), torch.randint(0, classes, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=batch)


@pytest.mark.parametrize("name", ["vit_pico_patch8_64", "absvit_pico_patch8_64"])
@pytest.mark.parametrize("restrict", [None, [1, 3, 4, 8, 9, 0]])
def test_accuracy_equals_the_plain_loop_on_cpu(name, restrict):
    model = timm.create_model(name).eval()
    loader = _loader(22)  # a last partial batch of 2
    assert engine.accuracy(model, loader, "cpu", restrict=restrict) == _reference(model, loader, restrict)


def test_no_host_sync_per_batch(monkeypatch):
    """Reading a tensor's value on the host (item, tolist, cpu, bool) or making one from host data (torch.tensor)
    happens a fixed number of times, not per batch."""
    model = timm.create_model("vit_pico_patch8_64").eval()
    reads = {"n": 0}
    for method in ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, **k):
            reads["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, method, counted)
    original_tensor = torch.tensor

    def made(*a, **k):  # a tensor made from host data: on CUDA a blocking copy (a host sync) per call
        reads["n"] += 1
        return original_tensor(*a, **k)

    monkeypatch.setattr(torch, "tensor", made)

    def count(batches):
        loader = _loader(4 * batches)
        reads["n"] = 0
        engine.accuracy(model, list(loader), "cpu", restrict=[0, 2, 5], every_s=1e9)
        return reads["n"]

    assert count(2) == count(6)
