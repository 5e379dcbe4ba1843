"""Peak memory of a UNet-resnet18 training step, measured in a fresh process (CUDA: the
allocator's peak; CPU: growth of the process's peak resident set)."""

from __future__ import annotations

import subprocess
import sys

import torch

_MEMORY_PROBE = """
import sys, threading, time, torch, segmentation_models_pytorch as smp
size, batch = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = smp.Unet("resnet18", encoder_weights=None, classes=4)
opt = torch.optim.AdamW(net.parameters(), 1e-3)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 4, (batch, size, size))
cuda = torch.cuda.is_available()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()

if cuda:
    net, x, y = net.cuda(), x.cuda(), y.cuda()
    step(); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    step(); torch.cuda.synchronize()
    print(torch.cuda.max_memory_allocated() / 2**20)
else:
    step()  # optimizer state and allocator pools exist from here on
    base, peak, done = rss(), [0], []
    def sample():  # the resident set, every millisecond, while steps run
        while not done:
            peak[0] = max(peak[0], rss()); time.sleep(0.001)
    thread = threading.Thread(target=sample); thread.start()
    for _ in range(3):
        step()
    done.append(1); thread.join()
    print((max(peak[0], base) - base) / 2**20, base / 2**20)
"""


def bench_memory(size: int, batch: int) -> dict:
    """Peak memory of a UNet-resnet18 training step, in a fresh process. CUDA: the
    allocator's peak. CPU: the resident set's peak while steps run, above the level after
    a first step (weights, gradients, optimizer state), i.e. the step's activations and
    temporaries."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(size), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = [float(v) for v in out.strip().splitlines()[-1].split()]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"peak_mib": values[0], "device": device, "image_size": size, "batch": batch}
    if len(values) > 1:
        result["resident_before_mib"] = values[1]
    print(
        f"memory unet-resnet18 {size}x{size} batch {batch}: step peak {values[0]:.0f} MiB "
        f"({device})",
        flush=True,
    )
    return result
