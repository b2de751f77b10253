"""Mixed precision and non-finite values: the statistics stay what fp32 training would give, and stay finite."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import small_cfg
from efl import EqualizedFocalLoss
from efl.engine import RevertStatisticsOfSkippedSteps
from test_retinanet import make_inputs

INPUTS = [([[10, 10, 40, 50], [50, 20, 90, 60]], [1, 4]), ([[20, 20, 80, 80]], [6])]


def statistics_after_one_step(autocast_dtype=None, scale=None):
    torch.manual_seed(0)
    model = build_model(small_cfg()).train()
    with EventStorage():
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            losses = model(make_inputs(INPUTS))
        total = sum(losses.values())
        if scale is not None:
            scaler = torch.amp.GradScaler("cpu", init_scale=scale)
            total = scaler.scale(total)
        total.backward()
    return model.cls_loss.pos_grad.clone(), model.cls_loss.neg_grad.clone()


def test_bf16_autocast_statistics_match_fp32():
    pos32, neg32 = statistics_after_one_step()
    pos16, neg16 = statistics_after_one_step(torch.bfloat16)
    assert (pos32 > 0).sum() == 3
    torch.testing.assert_close(pos16, pos32, rtol=3e-2, atol=1e-6)
    torch.testing.assert_close(neg16, neg32, rtol=3e-2, atol=1e-6)


def test_statistics_do_not_depend_on_the_grad_scalers_scale():
    unscaled = statistics_after_one_step(torch.bfloat16)
    scaled = statistics_after_one_step(torch.bfloat16, scale=2.0**16)
    torch.testing.assert_close(scaled, unscaled, rtol=0, atol=0)


class _Trainer:
    """The parts of AMPTrainer the hook reads."""

    def __init__(self, model, scaler):
        self.model = model
        self.grad_scaler = scaler


def test_a_step_skipped_by_the_grad_scaler_adds_nothing():
    model = torch.nn.Module()
    model.cls_loss = EqualizedFocalLoss(3).train()
    model.weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    hook = RevertStatisticsOfSkippedSteps()
    hook.trainer = _Trainer(model, scaler)

    def step(overflow):
        hook.before_step()
        logits = torch.randn(6, 3, requires_grad=True)
        loss = model.cls_loss(logits, torch.tensor([0, 1, 3, 3, 2, -1])) + model.weight.sum()
        scaler.scale(loss).backward()
        if overflow:
            model.weight.grad.fill_(float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        hook.after_step()
        return model.cls_loss.state_dict()

    kept = {k: v.clone() for k, v in step(overflow=False).items()}
    assert (kept["pos_grad"] > 0).any()
    after_skip = step(overflow=True)
    assert scaler.get_scale() == 512.0
    for key, value in kept.items():
        assert torch.equal(after_skip[key], value), key
    assert not torch.equal(step(overflow=False)["neg_grad"], kept["neg_grad"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_add_nothing_and_name_the_iteration(bad, caplog):
    module = EqualizedFocalLoss(3).train()
    logits = torch.randn(4, 3)
    run = lambda x: module(x.requires_grad_(), torch.tensor([0, 1, 3, 2])).backward()  # noqa: E731
    run(logits.clone())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    logits[1, 2] = bad
    module.step = 7
    with caplog.at_level("WARNING"):
        run(logits.clone())
        assert not caplog.records  # reported later, without a host sync in the step
        assert module.report_nonfinite_steps() == [7]
    for key, value in before.items():
        assert torch.equal(module.state_dict()[key], value), key
        assert torch.isfinite(module.state_dict()[key]).all()
    assert any("iteration 7" in r.getMessage() and "add nothing" in r.getMessage() for r in caplog.records)


def test_non_finite_steps_are_reported_every_report_period_updates(caplog):
    module = EqualizedFocalLoss(3).train()
    with caplog.at_level("WARNING"):
        for step in range(module.REPORT_PERIOD):
            logits = torch.randn(4, 3)
            if step in (2, 5):
                logits[0, 0] = float("nan")
            module(logits.requires_grad_(), torch.tensor([0, 1, 3, 2])).backward()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "iteration 2, 5;" in messages[0]
    assert module.report_nonfinite_steps() == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_amp_training_statistics_match_fp32():
    results = {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = build_model(small_cfg("MODEL.DEVICE", "cuda")).train()
        with EventStorage(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            total = sum(model(make_inputs(INPUTS)).values())
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16, enabled=amp)
        scaler.scale(total).backward()
        results[amp] = (model.cls_loss.pos_grad.cpu(), model.cls_loss.neg_grad.cpu())
    torch.testing.assert_close(results[True], results[False], rtol=2e-2, atol=1e-6)
