"""Expected torch.optim updates for tests/integration/engine.rs (optimizer parity).

Usage: PYTHONPATH=<repo>/.pydeps python3 tests/python/optim_parity.py OUT.safetensors

Three parameters in two groups (the second with a tenth of the learning rate and its own
weight decay), five steps of fixed pseudo-random gradients, a learning rate that changes
every step. For each case, writes the initial parameters and gradients and, after the last
step, every parameter and state tensor, with torch.optim's default (single-tensor) code.
"""

import sys

import torch
from safetensors.torch import save_file

STEPS = 5
LR_FACTORS = [1.0, 0.8, 0.5, 0.5, 0.2]
SHAPES = [(3, 4), (5,), (2, 3, 3, 3)]
# name -> (class, base lr, kwargs, weight decay of group 0, of group 1)
CASES = {
    "sgd": (torch.optim.SGD, 0.1, dict(momentum=0.0), 1e-3, 0.0),
    "sgd_momentum": (torch.optim.SGD, 0.1, dict(momentum=0.9), 0.0, 0.0),
    "sgd_nesterov_wd": (torch.optim.SGD, 0.1, dict(momentum=0.9, nesterov=True), 1e-2, 5e-4),
    "adam": (torch.optim.Adam, 1e-2, dict(betas=(0.9, 0.999), eps=1e-8), 0.0, 0.0),
    "adam_wd": (torch.optim.Adam, 1e-2, dict(betas=(0.8, 0.99), eps=1e-6), 1e-2, 0.1),
    "adamw": (torch.optim.AdamW, 1e-2, dict(betas=(0.9, 0.999), eps=1e-8), 5e-2, 0.0),
}


def main(out):
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(STEPS)]
    tensors = {f"init.{i}": t for i, t in enumerate(init)}
    for k, gs in enumerate(grads):
        for i, t in enumerate(gs):
            tensors[f"grad.{k}.{i}"] = t
    for name, (cls, lr, kwargs, wd0, wd1) in CASES.items():
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = cls(
            [
                dict(params=params[:2], lr=lr, weight_decay=wd0),
                dict(params=params[2:], lr=lr * 0.1, weight_decay=wd1),
            ],
            lr=lr,
            foreach=False,
            **kwargs,
        )
        for k in range(STEPS):
            for group, scale in zip(opt.param_groups, [1.0, 0.1]):
                group["lr"] = lr * scale * LR_FACTORS[k]
            for p, gr in zip(params, grads[k]):
                p.grad = gr.clone()
            opt.step()
        for i, p in enumerate(params):
            tensors[f"{name}.param.{i}"] = p.detach().clone()
            for field, v in opt.state[p].items():
                if torch.is_tensor(v) and v.dim() > 0:
                    tensors[f"{name}.{field}.{i}"] = v.clone()
                elif field == "step":
                    tensors[f"{name}.step.{i}"] = torch.tensor(float(v))
    save_file({k: v.contiguous() for k, v in tensors.items()}, out)


if __name__ == "__main__":
    main(sys.argv[1])
