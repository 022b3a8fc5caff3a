"""Category classifier for prompts without a label (the ``categorized`` strategy needs one).

A multinomial logistic regression on frozen features: the mean-pooled hidden states of the
reward bank's shared frozen layers for the prompt alone (:meth:`ShadowRewardBank.embed_prompts`).
Those layers are the backbone's own, so the features cost one cheap pass and need no extra
weights. Features are standardized with the training set's mean and std (stored), and the
weights are fitted full-batch with L-BFGS on cross-entropy + λ‖W‖²: a convex problem, so the
result does not depend on a learning rate or on the order of the examples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class CategoryClassifier:
    """p(c | x) = softmax(W · (x − μ)/σ + b) over C categories; ``predict`` gives the argmax ``[N]``."""

    def __init__(self, weight_CH: torch.Tensor, bias_C: torch.Tensor, mean_H: torch.Tensor, std_H: torch.Tensor):
        self.weight_CH, self.bias_C, self.mean_H, self.std_H = weight_CH, bias_C, mean_H, std_H

    @classmethod
    def fit(cls, features_NH: torch.Tensor, labels_N: torch.Tensor, num_classes: int,
            l2: float = 1e-3, max_iter: int = 200) -> "CategoryClassifier":
        """Fit on features ``[N, H]`` and labels ``[N]`` in ``[0, num_classes)``."""
        x_NH = features_NH.detach().float().cpu()
        y_N = labels_N.long().cpu()
        mean_H = x_NH.mean(0)
        std_H = x_NH.std(0, unbiased=False).clamp(min=1e-6)
        z_NH = (x_NH - mean_H) / std_H
        w_CH = torch.zeros(num_classes, z_NH.shape[1], requires_grad=True)
        b_C = torch.zeros(num_classes, requires_grad=True)
        opt = torch.optim.LBFGS([w_CH, b_C], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z_NH @ w_CH.T + b_C, y_N) + l2 * w_CH.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(w_CH.detach(), b_C.detach(), mean_H, std_H)

    def logits(self, features_NH: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, C]``."""
        dev = self.weight_CH.device
        z_NH = (features_NH.float().to(dev) - self.mean_H) / self.std_H
        return z_NH @ self.weight_CH.T + self.bias_C

    def predict(self, features_NH: torch.Tensor) -> torch.Tensor:
        """Most likely class per row, LongTensor ``[N]``."""
        return self.logits(features_NH).argmax(-1)

    def accuracy(self, features_NH: torch.Tensor, labels_N: torch.Tensor) -> float:
        """Fraction of rows whose predicted class equals the label."""
        return (self.predict(features_NH).cpu() == labels_N.cpu()).float().mean().item()

    def to(self, device) -> "CategoryClassifier":
        return CategoryClassifier(*(t.to(device) for t in self.tensors().values()))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The four tensors, by name, for saving as safetensors."""
        return {"weight": self.weight_CH, "bias": self.bias_C, "feature_mean": self.mean_H, "feature_std": self.std_H}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "CategoryClassifier":
        return cls(t["weight"], t["bias"], t["feature_mean"], t["feature_std"])
