"""Training loops for the demo models, and the numbers that judge them.

Two kinds of fitting: minibatch Adam for the networks, and full-batch float64 L-BFGS for the
one-layer logistic networks, run until the loss gradient vanishes so that their weights are the
maximum-likelihood estimate a statistics package would report.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def normalization(x: np.ndarray, axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over ``axis`` (float64), to be applied as (x - mean) / std."""
    return x.mean(axis=axis, dtype=np.float64), x.std(axis=axis, dtype=np.float64)


def normalize(
    x: np.ndarray, mean: np.ndarray, std: np.ndarray, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(x - mean) / std along the feature axis (axis 1), as a tensor of ``dtype``."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    z = (x - np.reshape(mean, shape)) / np.reshape(std, shape)
    return torch.as_tensor(z, dtype=dtype)


def fit_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    binary: bool = False,
) -> nn.Module:
    """Minibatch Adam on cross-entropy (or binary log-loss on a probability output).

    ``binary`` models output P(y = 1) through a final sigmoid; the loss is computed from the
    logit before it (the model's last module is skipped) for numerical stability.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * -(-len(x) // batch_size)
    )
    logits_of = model[:-1] if binary else model
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            out = logits_of(x[idx])
            if binary:
                loss = F.binary_cross_entropy_with_logits(out.squeeze(1), y[idx].to(out.dtype))
            else:
                loss = F.cross_entropy(out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Class predictions (argmax of the output, or output > 0.5 for a one-column output)."""
    model.eval()
    out = torch.cat([model(chunk) for chunk in x.split(batch_size)])
    return (out[:, 0] > 0.5).long() if out.shape[1] == 1 else out.argmax(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x) == y).double().mean())


def fit_logistic(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, *, max_iter: int = 500
) -> dict[str, float]:
    """Full-batch L-BFGS (strong Wolfe) on the mean log-loss, no penalty, from zero weights.

    ``model`` is ``Sequential(Linear, Sigmoid)`` in float64. Returns the final loss, the max-abs
    gradient and the number of iterations. On separable data the loss heads to 0 and the weights
    grow without bound; ``max_iter`` is what stops it then.
    """
    linear = model[0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    params = list(linear.parameters())
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-12,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )
    target = y.to(torch.float64)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(linear(x).squeeze(1), target)
        loss.backward()
        return loss

    opt.step(closure)
    loss = closure().item()
    model.eval()
    return {
        "loss": loss,
        "grad_max_abs": max(p.grad.abs().max().item() for p in params),
        "weight_max_abs": linear.weight.detach().abs().max().item(),
        "iterations": int(opt.state[params[0]]["n_iter"]),
    }


@torch.no_grad()
def shortcut_effect(
    model: nn.Module, x_plain: torch.Tensor, x_marked: torch.Tensor, y: torch.Tensor, target: int
) -> dict[str, float]:
    """How much a marker moves predictions toward class ``target``.

    ``x_plain`` are marker-free images and ``x_marked`` the same images with the marker added.
    Over the images whose true class is not ``target``:

    - ``flip_rate``: fraction predicted as ``target`` with the marker (whether or not they were
      predicted correctly without it);
    - ``base_rate``: the same fraction without the marker, for comparison;
    - ``other_accuracy`` / ``other_accuracy_marked``: accuracy without / with the marker.
    """
    other = y != target
    plain, marked = predict(model, x_plain[other]), predict(model, x_marked[other])
    return {
        "flip_rate": float((marked == target).double().mean()),
        "base_rate": float((plain == target).double().mean()),
        "other_accuracy": float((plain == y[other]).double().mean()),
        "other_accuracy_marked": float((marked == y[other]).double().mean()),
    }
