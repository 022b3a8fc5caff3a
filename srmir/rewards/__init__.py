"""Shadow reward models: one Bradley–Terry reward model per harm category, scored as one bank.

- :class:`ShadowRewardBank` — K reward models of one backbone; ``score(prompts, responses)`` →
  ``[N, K]`` in one batched (vmapped) pass; ``save_pretrained`` / ``from_pretrained``.
- :func:`train_bank` — train one RM per category and save the bank (``srmir rm train``).
- :func:`evaluate_bank` — the K×K pairwise-accuracy matrix (``srmir rm eval``).
- :func:`linear_weights`, :func:`shadow_rewards` — the ``linear`` / ``categorized`` integration
  through ``srmir.algos.combine_rewards``.
"""
from .bank import ShadowRewardBank, score_sequential
from .combine import category_columns, linear_weights, shadow_rewards
from .evaluate import evaluate_bank, format_matrix, plot_heatmap
from .model import PairEncoder, RewardModel
from .train import bradley_terry_loss, train_bank, train_reward_model

__all__ = [
    "ShadowRewardBank", "score_sequential", "RewardModel", "PairEncoder", "train_bank", "train_reward_model",
    "bradley_terry_loss", "evaluate_bank", "format_matrix", "plot_heatmap", "linear_weights", "category_columns",
    "shadow_rewards",
]
