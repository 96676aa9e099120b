"""The models of fimo's experiments: the small residual CNN for images."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fimo.data import load_mnist
from fimo.models import mlp, resnet_small


@pytest.fixture(autouse=True)
def one_thread():
    """Convolutions this small gain nothing from a second thread, and two threads slow down
    badly when another process shares the cores (a 4 s test took 25 s): use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, shape, out",
    [
        ({}, (3, 1, 28, 28), (3, 10)),
        ({"in_channels": 3, "classes": 5, "width": 8}, (2, 3, 28, 28), (2, 5)),
        ({"norm": "group", "pool": "avg"}, (4, 1, 28, 28), (4, 10)),
        ({}, (2, 1, 32, 32), (2, 10)),  # global pooling: any image size
    ],
)
def test_output_shape(kwargs, shape, out):
    assert resnet_small(**kwargs)(torch.randn(*shape)).shape == out


def test_parameter_count():
    assert n_params(resnet_small()) == 38_058
    assert n_params(resnet_small(norm="group")) == 38_266
    assert 20_000 <= n_params(resnet_small()) <= 60_000
    assert n_params(resnet_small(width=32)) > 3 * n_params(resnet_small())
    # Every parameter of the default model sits in a Conv2d or a Linear layer.
    owners = {
        type(m) for m in resnet_small().modules() if any(True for _ in m.parameters(recurse=False))
    }
    assert owners == {nn.Conv2d, nn.Linear}
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in resnet_small().modules())


def test_seeded_initialisation_leaves_callers_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = resnet_small(seed=0), resnet_small(seed=0), resnet_small(seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a[0].weight, c[0].weight)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("norm", ["none", "group"])
def test_same_function_in_train_and_eval_mode(norm):
    model = resnet_small(norm=norm)
    x = torch.randn(5, 1, 28, 28)
    train_out = model.train()(x)
    eval_out = model.eval()(x)
    torch.testing.assert_close(train_out, eval_out)
    # Per-instance: an instance's output does not depend on the rest of the batch.
    torch.testing.assert_close(model(x[:1]), train_out[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm, pool", [("none", "max"), ("group", "avg")])
def test_per_instance_gradients_with_vmap(norm, pool):
    model = resnet_small(norm=norm, pool=pool, seed=2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 9, 1, 1, 7])

    def loss(p, xi, yi):
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_instance = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_instance[name][i], p.grad, rtol=1e-4, atol=1e-6)
    # The mean of the per-instance gradients is the batch gradient.
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(per_instance[name].mean(0), p.grad, rtol=1e-4, atol=1e-6)


def test_sanity_training_on_mnist():
    """1,000 training digits, 6 epochs of Adam: well above chance on the 1,000 test digits."""
    train, test = load_mnist()
    x, y = train.inputs[:1000], train.targets[:1000]
    model = resnet_small()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)

    def test_loss_and_accuracy():
        with torch.no_grad():
            logits = model(test.inputs)
        loss = nn.functional.cross_entropy(logits, test.targets).item()
        return loss, (logits.argmax(1) == test.targets).float().mean().item()

    loss0, _ = test_loss_and_accuracy()
    for _ in range(6):
        perm = torch.randperm(1000, generator=order)
        for i in range(0, 1000, 32):
            b = perm[i : i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    loss, accuracy = test_loss_and_accuracy()
    print(
        f"resnet_small on 1,000 MNIST digits: test loss {loss0:.3f} -> {loss:.3f}, accuracy {accuracy:.3f}"
    )
    assert loss < 0.5 * loss0
    assert accuracy > 0.8


def test_bad_settings():
    with pytest.raises(ValueError, match="norm"):
        resnet_small(norm="batch")
    with pytest.raises(ValueError, match="pool"):
        resnet_small(pool="sum")
    with pytest.raises(ValueError, match="multiple of 4"):
        resnet_small(width=6, norm="group")


def test_mlp_unchanged():
    model = mlp(10, 2)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert n_params(model) == 10 * 128 + 128 + 128 * 128 + 128 + 128 * 2 + 2
