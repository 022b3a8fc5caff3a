"""Shadow reward models: one Bradley–Terry reward model per harm category, scored as one bank.

- :class:`ShadowRewardBank` — K reward models of one backbone; ``score(prompts, responses)`` →
  ``[N, K]`` in one batched (vmapped) pass; ``save_pretrained`` / ``from_pretrained``.
- :func:`train_bank` — train one RM per category and save the bank (``srmir rm train``).
- :func:`evaluate_bank` — the K×K pairwise-accuracy matrix (``srmir rm eval``).
- :func:`route` — the routing rule (harmful → its RM or the linear mix, benign → the helpfulness
  RM), used by the trainer and the eval judge; :func:`shadow_rewards` scores, classifies and routes.
"""
from .bank import ShadowRewardBank, score_sequential
from .combine import BENIGN_LABEL, HELPFULNESS, RoutedRewards, linear_weights, resolve_labels, route, shadow_rewards
from .evaluate import evaluate_bank, format_matrix, plot_heatmap
from .model import PairEncoder, RewardModel
from .train import bradley_terry_loss, train_bank, train_reward_model

__all__ = [
    "ShadowRewardBank", "score_sequential", "RewardModel", "PairEncoder", "train_bank", "train_reward_model",
    "bradley_terry_loss", "evaluate_bank", "format_matrix", "plot_heatmap", "linear_weights", "route",
    "resolve_labels", "shadow_rewards", "RoutedRewards", "HELPFULNESS", "BENIGN_LABEL",
]
