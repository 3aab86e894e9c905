import pytest
import torch
import torch.nn.functional as F

from absvit.models.resize import interp_matrix, resize_bilinear

SIZES = [
    ((7, 9), (64, 64)),  # odd sizes, non-integer scales
    ((16, 32), (128, 256)),  # a Cityscapes 512x1024 crop's logits, scaled down
    ((33, 17), (100, 51)),
    ((20, 20), (7, 13)),  # downsampling (2-tap without antialias, like F.interpolate)
    ((9, 9), (3, 27)),  # down in one dim, up in the other
    ((1, 1), (4, 6)),
    ((5, 3), (1, 1)),
    ((97, 61), (513, 1023)),  # larger inputs: source positions round like PyTorch's (fused multiply-add)
]


def _reference(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_values_and_gradients_match_f_interpolate(in_size, out_size, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *in_size, dtype=dtype, requires_grad=True)
    ref, ours = _reference(x, out_size), resize_bilinear(x, out_size)
    assert ours.shape == ref.shape and ours.dtype == dtype and ours.is_contiguous()
    g = torch.randn_like(ref)
    (grad_ref,), (grad_ours,) = torch.autograd.grad(ref, x, g), torch.autograd.grad(ours, x, g)
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # float32 gradients: sums of many terms in another order
    torch.testing.assert_close(ours, ref, atol=tol, rtol=0)
    torch.testing.assert_close(grad_ours, grad_ref, atol=tol, rtol=tol)


def test_same_size_is_the_identity_and_any_leading_dims_work():
    x = torch.randn(4, 5, 6)
    assert resize_bilinear(x, (5, 6)) is x
    torch.testing.assert_close(resize_bilinear(x, (11, 3)), _reference(x[None], (11, 3))[0], atol=1e-6, rtol=0)
    y = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(resize_bilinear(y, (9, 13)), _reference(y.flatten(0, 1), (9, 13)).view(2, 3, 4, 9, 13),
                               atol=1e-6, rtol=0)


def test_bfloat16_within_bfloat16_tolerance():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 32, requires_grad=True)
    exact = _reference(x, (128, 256))
    xb = x.detach().bfloat16().requires_grad_()
    ours = resize_bilinear(xb, (128, 256))
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), exact, atol=2e-2, rtol=1.6e-2)
    g = torch.randn_like(exact)
    (grad_exact,), (grad_ours,) = torch.autograd.grad(exact, x, g), torch.autograd.grad(ours, xb, g.bfloat16())
    torch.testing.assert_close(grad_ours.float(), grad_exact, atol=5e-2, rtol=1.6e-2)


def test_matrix_rows_are_two_tap_and_cached():
    m = interp_matrix(33, 100, torch.float32, torch.device("cpu"))
    assert m.shape == (100, 33)
    torch.testing.assert_close(m.sum(1), torch.ones(100))
    assert ((m != 0).sum(1) <= 2).all()
    assert interp_matrix(33, 100, torch.float32, torch.device("cpu")) is m
