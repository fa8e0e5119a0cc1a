"""course_utils.train's helpers for a hand-written GPU loop: set_lr, restored, cuda_graphed.

The recording itself needs a CUDA device (the last test, skipped on a CPU); what a CPU can check is checked
here: the learning rate is set in place, the warm-up is undone exactly, and misuse gets a clear error.
"""
import pytest
import torch
from torch import nn

from course_utils import train


def _net_and_adam(**adam):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.BatchNorm1d(16), nn.Linear(16, 1))
    return net, torch.optim.Adam(net.parameters(), lr=1e-2, **adam)


def _step(net, optimizer):
    def step(x):
        loss = (net(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def test_set_lr_assigns_floats_and_fills_tensors_in_place():
    net, optimizer = _net_and_adam()
    train.set_lr(optimizer, 0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5
    lr = torch.tensor(0.1)
    optimizer.param_groups[0]["lr"] = lr
    train.set_lr(optimizer, 0.25)
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == 0.25  # the same tensor: a graph still sees it


@pytest.mark.parametrize("steps_before", [0, 4])
def test_restored_undoes_training_in_place_and_the_next_step_is_the_one_it_would_have_been(steps_before):
    x = torch.randn(32, 6)
    net, optimizer = _net_and_adam()
    twin, twin_optimizer = _net_and_adam()
    step, twin_step = _step(net, optimizer), _step(twin, twin_optimizer)
    for _ in range(steps_before):  # with and without optimizer state on entering
        step(x), twin_step(x)
    addresses = [v.data_ptr() for v in net.state_dict().values()]  # the batch norm's running statistics included
    with train.restored(net, optimizer):
        for _ in range(5):
            step(torch.randn(32, 6))
    assert addresses == [v.data_ptr() for v in net.state_dict().values()]  # the same storage, restored in place
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], value, rtol=0, atol=0)
    for _ in range(3):  # the optimizer continues as if the block had not run (a fresh one, for steps_before=0)
        torch.testing.assert_close(step(x), twin_step(x), rtol=0, atol=0)
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], value, rtol=0, atol=0)


def test_restored_restores_after_an_error_too():
    net, optimizer = _net_and_adam()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with train.restored(net, optimizer):
            _step(net, optimizer)(torch.randn(8, 6))
            raise RuntimeError("boom")
    for k, v in before.items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)


def test_cuda_graphed_says_what_to_do_on_a_cpu_or_with_a_plain_optimizer():
    net, optimizer = _net_and_adam()
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        train.cuda_graphed(_step(net, optimizer), torch.randn(8, 6), net, optimizer)
    if torch.cuda.is_available():
        net, optimizer = net.cuda(), torch.optim.Adam(net.parameters(), lr=1e-2)
        with pytest.raises(ValueError, match="capturable=True"):
            train.cuda_graphed(_step(net, optimizer), torch.randn(8, 6, device="cuda"), net, optimizer)


@pytest.fixture
def no_tf32():
    """Full float32 matrix products for one test, then the setting as it was."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_recorded_step_trains_as_the_plain_step_does(no_tf32):
    """No randomness in this step, so replaying the recording must follow the plain step's weights closely,
    with the learning rate changed between steps through set_lr (the schedule of notebook 02)."""
    xs = [torch.randn(64, 6, device="cuda") for _ in range(20)]
    runs = {}
    for graphed in (False, True):
        net, _ = _net_and_adam()
        net = net.cuda()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.0, capturable=True, fused=True)
        step = _step(net, optimizer)
        if graphed:
            step = train.cuda_graphed(step, xs[0], net, optimizer, fallback=False)
        losses = []
        for i, x in enumerate(xs):
            train.set_lr(optimizer, 1e-2 * (1 - i / len(xs)))
            losses.append(step(x))
        runs[graphed] = (torch.stack(losses).cpu(), {k: v.cpu() for k, v in net.state_dict().items()})
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-4, atol=1e-5)
    for k, v in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], v, rtol=1e-4, atol=1e-5)
    assert not torch.equal(runs[True][0][0], runs[True][0][-1])  # it trained: the loss moved
    with pytest.raises(ValueError, match="drop_last=True"):
        step(torch.randn(10, 6, device="cuda"))

