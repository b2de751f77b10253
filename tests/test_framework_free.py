"""efl.losses works in an environment without detectron2, and `import efl` registers the detectron2 side with it."""
import subprocess
import sys
import textwrap

from conftest import REPO

WITHOUT_DETECTRON2 = textwrap.dedent(
    """
    import sys
    sys.modules["detectron2"] = None  # as if it were not installed: `import detectron2` raises ImportError
    import torch
    from efl.losses import EqualizedFocalLoss, EqualizedQualityFocalLoss
    import efl

    assert efl.EqualizedFocalLoss is EqualizedFocalLoss and not hasattr(efl, "EFLRetinaNet")
    loss = EqualizedFocalLoss(5).train()
    logits = torch.randn(64, 5, requires_grad=True)
    labels = torch.randint(-1, 6, (64,))
    loss(logits, labels, normalizer=4.0).backward()
    assert (loss.neg_grad > 0).all() and torch.isfinite(logits.grad).all()
    EqualizedQualityFocalLoss(5).train()(logits, labels, quality=torch.rand(64)).backward()
    loaded = sorted(m for m in sys.modules if m.startswith(("detectron2", "fvcore")) and sys.modules[m] is not None)
    assert not loaded, loaded
    print("ok")
    """
)


def test_losses_import_and_train_without_detectron2():
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_DETECTRON2], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_losses_package_imports_torch_only():
    sources = "\n".join(p.read_text() for p in (REPO / "projects" / "EFL" / "efl" / "losses").glob("*.py"))
    imports = {line.split()[1].split(".")[0] for line in sources.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"torch", "triton", "typing", "functools", "os", "logging", "__future__", ""}, imports


def test_import_efl_registers_the_detectron2_parts():
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

    import efl

    assert {"EFLRetinaNet", "ImprovedRetinaNet"} <= set(META_ARCH_REGISTRY._obj_map)
    assert "build_retinanet_resnet_fpn_lateral_p6p7_backbone" in BACKBONE_REGISTRY._obj_map
    assert efl.EqualizedFocalLoss is efl.losses.EqualizedFocalLoss
