"""EqualizedFocalLoss against a float64 formula, focal loss, and its statistics contract."""
import pytest
import torch
from fvcore.nn import sigmoid_focal_loss

from efl import EqualizedFocalLoss
from efl.losses import torch_kernel
from oracle import reference_efl


def random_problem(num_rows=300, num_classes=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_classes, generator=g) * scale
    labels = torch.randint(-1, num_classes + 1, (num_rows,), generator=g)
    return logits, labels


def run(module, logits, labels, normalizer=1.0, upstream=1.0):
    x = logits.clone().requires_grad_()
    loss = module(x, labels, normalizer)
    (loss * upstream).backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("gamma_b,scale,alpha", [(2.0, 8.0, 0.25), (1.0, 4.0, 0.5), (3.0, 0.0, 0.0)])
def test_value_and_gradient_match_float64_formula(gamma_b, scale, alpha):
    logits, labels = random_problem()
    module = EqualizedFocalLoss(7, gamma_b, scale, alpha)
    module.pos_neg.copy_(torch.tensor([1.0, 0.0, 0.5, 0.9, 0.01, 0.3, 0.7]))
    loss, grad = run(module.eval(), logits, labels, normalizer=37.5)
    ref_loss, ref_grad, _, _ = reference_efl(
        logits, labels, module.pos_neg, gamma_b, scale, alpha, normalizer=37.5
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-9)


def test_known_value_of_one_cell():
    # z = 0, positive: alpha * (1 - 0.5)^2 * log 2; negative for the other class: (1 - alpha) * 0.5^2 * log 2
    module = EqualizedFocalLoss(2)
    loss = module(torch.zeros(1, 2), torch.tensor([0]))
    expected = (0.25 + 0.75) * 0.25 * torch.log(torch.tensor(2.0))
    torch.testing.assert_close(loss, expected)


def test_equals_detectron2_focal_loss_when_pos_neg_is_one():
    logits, labels = random_problem(num_rows=500, num_classes=11, seed=1)
    module = EqualizedFocalLoss(11)
    loss, grad = run(module, logits, labels, normalizer=13.0)

    x = logits.clone().requires_grad_()
    valid = labels >= 0
    target = torch.nn.functional.one_hot(labels[valid], num_classes=12)[:, :-1].float()
    focal = sigmoid_focal_loss(x[valid], target, alpha=0.25, gamma=2.0, reduction="sum") / 13.0
    focal.backward()
    torch.testing.assert_close(loss, focal.detach(), rtol=2e-6, atol=0)
    torch.testing.assert_close(grad, x.grad, rtol=2e-6, atol=1e-10)


def test_statistics_over_steps_match_float64_accumulation():
    module = EqualizedFocalLoss(7).train()
    pos_grad = torch.zeros(7, dtype=torch.float64)
    neg_grad = torch.zeros(7, dtype=torch.float64)
    pos_neg = torch.ones(7, dtype=torch.float64)
    for step in range(4):
        # mostly background with few positives, so the ratios fall and the focusing factors change
        logits, labels = random_problem(num_rows=400, seed=10 + step)
        labels[labels >= 0] = torch.where(torch.rand(int((labels >= 0).sum())) < 0.1, labels[labels >= 0], 7)
        run(module, logits, labels, normalizer=5.0)
        _, _, ps, ns = reference_efl(logits, labels, pos_neg, normalizer=5.0)
        pos_grad += ps
        neg_grad += ns
        pos_neg = (pos_grad / (neg_grad + 1e-10)).clamp(0, 1)
        torch.testing.assert_close(module.pos_grad.double(), pos_grad, rtol=1e-5, atol=0)
        torch.testing.assert_close(module.neg_grad.double(), neg_grad, rtol=1e-5, atol=0)
        torch.testing.assert_close(module.pos_neg.double(), pos_neg, rtol=1e-5, atol=1e-7)
    assert (module.pos_neg < 0.5).any(), "the test should exercise focusing factors above gamma_b"


def test_ignored_rows_add_nothing_and_background_rows_are_negatives_only():
    logits, _ = random_problem(num_rows=6, num_classes=3)
    labels = torch.tensor([-1, 3, 0, -1, 3, 2])
    module = EqualizedFocalLoss(3).train()
    loss, grad = run(module, logits, labels)
    assert torch.all(grad[labels == -1] == 0)

    kept = labels >= 0
    subset = EqualizedFocalLoss(3).train()
    subset_loss, subset_grad = run(subset, logits[kept], labels[kept])
    torch.testing.assert_close(loss, subset_loss)
    torch.testing.assert_close(grad[kept], subset_grad)
    torch.testing.assert_close(module.pos_grad, subset.pos_grad)
    torch.testing.assert_close(module.neg_grad, subset.neg_grad)

    background = EqualizedFocalLoss(3).train()
    run(background, logits, torch.tensor([3, 3, -1, 3, -1, 3]))
    assert torch.all(background.pos_grad == 0) and torch.all(background.neg_grad > 0)
    assert torch.all(background.pos_neg == 0)


def test_upstream_scaling_does_not_change_statistics():
    logits, labels = random_problem(seed=3)
    plain, scaled = EqualizedFocalLoss(7).train(), EqualizedFocalLoss(7).train()
    for _ in range(2):
        _, grad = run(plain, logits, labels)
        _, grad_scaled = run(scaled, logits, labels, upstream=65536.0)
    torch.testing.assert_close(grad_scaled, grad * 65536.0)
    torch.testing.assert_close(scaled.pos_grad, plain.pos_grad, rtol=0, atol=0)
    torch.testing.assert_close(scaled.neg_grad, plain.neg_grad, rtol=0, atol=0)


def test_no_statistics_in_eval_mode_or_without_backward():
    logits, labels = random_problem()
    module = EqualizedFocalLoss(7)
    run(module.eval(), logits, labels)
    with torch.no_grad():
        module.train()(logits, labels)
    module(logits.clone().requires_grad_(), labels)  # forward only: no gradient flowed back
    assert torch.all(module.pos_grad == 0) and torch.all(module.neg_grad == 0)
    assert torch.all(module.pos_neg == 1)


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 50.0], [100.0, 100.0, -100.0]])
    labels = torch.tensor([0, 0, 3])
    module = EqualizedFocalLoss(3).train()
    module.pos_neg.fill_(0.0)  # gamma = 10, the largest focusing factor
    loss, grad = run(module, logits, labels)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.isfinite(module.pos_grad).all() and torch.isfinite(module.neg_grad).all()
    # a confident wrong answer costs about |z|: the positive at -100 and the negatives at +100
    assert loss.item() > 100.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_computed_in_float32(dtype):
    logits, labels = random_problem(seed=4)
    low = logits.to(dtype)
    module = EqualizedFocalLoss(7).train()
    loss, grad = run(module, low, labels)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref_loss, ref_grad, ref_pos, ref_neg = reference_efl(low.float(), labels, torch.ones(7))
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(module.pos_grad.double(), ref_pos, rtol=1e-5, atol=0)
    torch.testing.assert_close(module.neg_grad.double(), ref_neg, rtol=1e-5, atol=0)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto_loss = EqualizedFocalLoss(7)(logits, labels)
    assert auto_loss.dtype == torch.float32 and torch.isfinite(auto_loss)


def test_rows_split_over_chunks_give_the_same_result(monkeypatch):
    logits, labels = random_problem(num_rows=1000, seed=5)
    whole = EqualizedFocalLoss(7).train()
    loss, grad = run(whole, logits, labels)
    monkeypatch.setattr(torch_kernel, "CHUNK_CELLS", 7 * 33)
    chunked = EqualizedFocalLoss(7).train()
    chunked_loss, chunked_grad = run(chunked, logits, labels)
    torch.testing.assert_close(chunked_loss, loss)
    torch.testing.assert_close(chunked_grad, grad)
    torch.testing.assert_close(chunked.pos_grad, whole.pos_grad)
    torch.testing.assert_close(chunked.neg_grad, whole.neg_grad)


def test_empty_input_gives_zero_loss_and_no_statistics():
    module = EqualizedFocalLoss(4).train()
    loss, grad = run(module, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0 and grad.shape == (0, 4)
    assert torch.all(module.pos_grad == 0) and torch.all(module.neg_grad == 0)


def test_backward_twice_through_one_call_is_refused():
    x = torch.randn(5, 3, requires_grad=True)
    loss = EqualizedFocalLoss(3)(x, torch.tensor([0, 1, 2, 3, -1]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gamma_b": 0.0}, "GAMMA_B"),
        ({"gamma_b": -1.0}, "GAMMA_B"),
        ({"scale": -0.5}, "SCALE"),
        ({"alpha": 1.5}, "ALPHA"),
        ({"alpha": -0.1}, "ALPHA"),
        ({"alpha": float("nan")}, "ALPHA"),
    ],
)
def test_out_of_range_hyperparameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EqualizedFocalLoss(3, **kwargs)


@pytest.mark.parametrize(
    "logits,labels,match",
    [
        (torch.zeros(2, 5), torch.tensor([0, 1]), "NUM_CLASSES"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), "shape"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer"),
    ],
)
def test_bad_inputs_are_rejected(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        EqualizedFocalLoss(3)(logits, labels)


def test_buffers_are_persistent_float32():
    state = EqualizedFocalLoss(5).state_dict()
    assert set(state) == {"pos_grad", "neg_grad", "pos_neg"}
    assert all(v.dtype == torch.float32 and v.shape == (5,) for v in state.values())
    assert torch.all(state["pos_neg"] == 1) and torch.all(state["pos_grad"] == 0)
