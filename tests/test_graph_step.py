"""course_utils.speedrun, notebook 07's helpers: its objective, and set_lr, restored, cuda_graphed for the GPU loop.

The recording itself needs a CUDA device (the last three tests, skipped on a CPU); what a CPU can check is checked
here: the learning rate is set in place, the warm-up is undone exactly, and misuse gets a clear error.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from course_utils import speedrun


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


def test_the_speedrun_objective_is_the_courses_negative_elbo():
    # speedrun.train_neg_elbo writes the objective without the data-range checks (no reads from the device):
    # seeded alike, it must give losses.neg_elbo's numbers on data.binarize's coin flips
    from course_utils import data, losses, models
    model = models.ConvVAE(models.ConvConfig(channels=(8, 16), hidden=32))
    x_gray = torch.rand(16, 1, 28, 28)
    torch.manual_seed(5)
    ours = speedrun.train_neg_elbo(model, x_gray)
    torch.manual_seed(5)
    reference = losses.neg_elbo(model, data.binarize(x_gray))
    for term in ("loss", "recon", "kl", "z_loc", "z_logvar"):
        torch.testing.assert_close(ours[term], reference[term])


def test_set_lr_assigns_floats_and_fills_tensors_in_place():
    net, optimizer = _net_and_adam()
    speedrun.set_lr(optimizer, 0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5
    lr = torch.tensor(0.1)
    optimizer.param_groups[0]["lr"] = lr
    speedrun.set_lr(optimizer, 0.25)
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
    with speedrun.restored(net, optimizer):
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
        with speedrun.restored(net, optimizer):
            _step(net, optimizer)(torch.randn(8, 6))
            raise RuntimeError("boom")
    for k, v in before.items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)


def test_cuda_graphed_says_what_to_do_on_a_cpu_or_with_a_plain_optimizer():
    net, optimizer = _net_and_adam()
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        speedrun.cuda_graphed(_step(net, optimizer), torch.randn(8, 6), net, optimizer)
    if torch.cuda.is_available():
        net, optimizer = net.cuda(), torch.optim.Adam(net.parameters(), lr=1e-2)
        with pytest.raises(ValueError, match="capturable=True"):
            speedrun.cuda_graphed(_step(net, optimizer), torch.randn(8, 6, device="cuda"), net, optimizer)


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
    with the learning rate changed between steps through set_lr (the schedule of notebook 07)."""
    xs = [torch.randn(64, 6, device="cuda") for _ in range(20)]
    runs = {}
    for graphed in (False, True):
        net, _ = _net_and_adam()
        net = net.cuda()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.0, capturable=True, fused=True)
        step = _step(net, optimizer)
        if graphed:
            step = speedrun.cuda_graphed(step, xs[0], net, optimizer, fallback=False)
        losses = []
        for i, x in enumerate(xs):
            speedrun.set_lr(optimizer, 1e-2 * (1 - i / len(xs)))
            losses.append(step(x))
        runs[graphed] = (torch.stack(losses).cpu(), {k: v.cpu() for k, v in net.state_dict().items()})
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-4, atol=1e-5)
    for k, v in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], v, rtol=1e-4, atol=1e-5)
    assert not torch.equal(runs[True][0][0], runs[True][0][-1])  # it trained: the loss moved
    with pytest.raises(ValueError, match="drop_last=True"):
        step(torch.randn(10, 6, device="cuda"))



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_each_replay_draws_fresh_random_numbers():
    # notebook 07's claim: a replay differs from the plain step only in its random draws, which are fresh each
    # time (binarization, z); the same numbers at every replay would train on one fixed noise
    net, _ = _net_and_adam()
    net = net.cuda()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True, fused=True)

    def step(x):
        noisy = x + torch.randn_like(x)  # like the reparameterized z
        loss = net(noisy).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return noisy[0].detach()

    replay = speedrun.cuda_graphed(step, torch.zeros(8, 6, device="cuda"), net, optimizer, fallback=False)
    draws = torch.stack([replay(torch.zeros(8, 6, device="cuda")) for _ in range(4)])
    assert torch.unique(draws, dim=0).shape[0] == 4, draws


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_step_that_cannot_be_recorded_falls_back_or_says_what_to_do(tmp_path):
    # a step that reads a value back (.item()) cannot be recorded; in a fresh process (a failed recording may
    # leave CUDA unusable), the fallback must either train with the plain step or say to use cuda_graph=False
    script = tmp_path / "fallback.py"
    script.write_text(
        "import warnings, torch\n"
        "from torch import nn\n"
        "from course_utils import speedrun\n"
        "net = nn.Linear(6, 1).cuda()\n"
        "opt = torch.optim.Adam(net.parameters(), lr=1e-2, capturable=True, fused=True)\n"
        "def step(x):\n"
        "    loss = (net(x + torch.randn_like(x)) ** 2).mean()\n"
        "    if loss.item() < 0: print('never')\n"
        "    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()\n"
        "    return loss.detach()\n"
        "x = torch.randn(8, 6, device='cuda')\n"
        "try:\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        plain = speedrun.cuda_graphed(step, x, net, opt)\n"
        "    assert plain is step and any('plain step' in str(w.message) for w in caught)\n"
        "    losses = [plain(x).item() for _ in range(5)]\n"
        "    print('FELL BACK', losses)\n"
        "except RuntimeError as e:\n"
        "    assert 'cuda_graph=False' in str(e), e\n"
        "    print('SAID WHAT TO DO')\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "FELL BACK" in done.stdout or "SAID WHAT TO DO" in done.stdout, done.stdout
