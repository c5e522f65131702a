"""Expert buffer for the public distill.py timings, from one written by the public buffer.py on CPU.

On CPU the public buffer.py records each epoch as `[p.detach().cpu() for p in net.parameters()]`, which
there is no copy: every snapshot shares the live parameters' storage, so a saved expert holds E + 1
copies of its last epoch and start == target (the matching loss divides by ‖start − target‖² = 0).
This writes EXPERTS experts of 5 independent snapshots each, a seeded random walk (steps N(0, 0.01²)) from
that last epoch, in the public format (a list of experts, each a list of snapshots, each the list of
parameter tensors). The time per distillation iteration does not depend on the values.

Usage: python make_buffer.py IN.pt OUT.pt [EXPERTS=2]   (run with the PyTorch environment)
"""
import sys

import torch

source, target = sys.argv[1], sys.argv[2]
experts = int(sys.argv[3]) if len(sys.argv) > 3 else 2
last = torch.load(source)[0][-1]
generator = torch.Generator().manual_seed(0)
buffer = []
for _ in range(experts):
  snapshots, params = [], [p.clone() for p in last]
  for _ in range(5):
    snapshots.append([p.clone() for p in params])
    params = [p + 0.01 * torch.randn(p.shape, generator=generator) for p in params]
  buffer.append(snapshots)
torch.save(buffer, target)
print(f"{target}: {experts} experts x 5 snapshots of {sum(p.numel() for p in last):,} parameters")
