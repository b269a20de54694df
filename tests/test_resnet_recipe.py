"""ResNet-20 and the CIFAR recipe: named layers, schedules, and augmentation shared by a pair."""

from __future__ import annotations

import pytest
import torch

from advbench.config import RecipeConfig, SNNLConfig
from advbench.models import create_model, declared_hidden_layers
from advbench.training import init_model, train_model
from advbench.training.trainer import augment_batch, augmentation_generator, make_optimizer, make_scheduler


def test_resnet20_shape_layers_and_parameter_count():
    m = create_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    assert m.hidden_layers == declared_hidden_layers("resnet20") == ("stem", "stage1", "stage2", "stage3", "pool")
    # He et al. report 0.27M parameters for ResNet-20 (projection shortcuts add ~2.5k)
    assert 265_000 < sum(p.numel() for p in m.parameters()) < 280_000
    assert sum(isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules()) == 19
    f = m.eval().features(torch.rand(2, 3, 32, 32))
    assert f["stage2"].shape == (2, 32, 16, 16) and f["stage3"].shape == (2, 64, 8, 8) and f["pool"].shape == (2, 64)


def test_resnet_normalisation_inside_and_depth_checked():
    m = create_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=4)
    m.set_normalization([0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(m.normalize(x)[:, 1], (x[:, 1] - 0.4) / 0.2)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        create_model("resnet20", num_classes=10, input_shape=(3, 32, 32), depth=21)


def test_augment_batch_crops_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    same, draws = augment_batch(x, padding=0, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        expected = x[i].flip(2) if draws[i, 2] else x[i]
        assert torch.equal(same[i], expected)
    out, draws = augment_batch(x, padding=2, generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        dy, dx, fl = draws[i].tolist()
        crop = padded[i, :, dy : dy + 4, dx : dx + 4]
        assert torch.equal(out[i], crop.flip(2) if fl else crop)


def test_augmentation_draws_depend_on_seed_epoch_step_only():
    a = torch.randint(0, 9, (50,), generator=augmentation_generator(0, 1, 2))
    assert torch.equal(a, torch.randint(0, 9, (50,), generator=augmentation_generator(0, 1, 2)))
    assert not torch.equal(a, torch.randint(0, 9, (50,), generator=augmentation_generator(0, 1, 3)))
    assert not torch.equal(a, torch.randint(0, 9, (50,), generator=augmentation_generator(1, 1, 2)))


def _cifar_recipe(alpha: float, **kw) -> RecipeConfig:
    return RecipeConfig(
        epochs=2,
        batch_size=16,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        augment="crop-flip",
        snnl=SNNLConfig(alpha=alpha),
        **kw,
    )


def test_a_resnet_pair_shares_weights_batches_and_augmentation():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 3, 32, 32, generator=g), torch.arange(48) % 4
    results = {}
    for alpha in (0.0, -1.0):
        model = init_model("resnet20", params={"width": 4}, num_classes=4, input_shape=(3, 32, 32), seed=7, x_train=x)
        results[alpha] = train_model(model, x, y, _cifar_recipe(alpha), seed=7, probe=None)
    a, b = results[0.0], results[-1.0]
    assert a.initial_weights_hash == b.initial_weights_hash
    assert a.batch_order_hash == b.batch_order_hash  # covers the batches and every crop and flip
    assert a.final_weights_hash != b.final_weights_hash
    # without augmentation the order hash differs: the augmentation draws are part of it
    model = init_model("resnet20", params={"width": 4}, num_classes=4, input_shape=(3, 32, 32), seed=7, x_train=x)
    plain = train_model(
        model, x, y, _cifar_recipe(0.0, crop_padding=4).model_copy(update={"augment": "none"}), seed=7, probe=None
    )
    assert plain.batch_order_hash != a.batch_order_hash
    # cosine: the first epoch runs at the base lr, the second at half of it
    assert [r["lr"] for r in a.history] == pytest.approx([0.05, 0.025])


def test_step_schedule_and_config_checks():
    r = RecipeConfig(epochs=4, optimizer="sgd", lr=0.1, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model.parameters(), r)
    sched = make_scheduler(opt, r)
    assert sched is not None
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="milestones"):
        RecipeConfig(milestones=[0.75, 0.5])
    assert make_scheduler(opt, RecipeConfig()) is None
