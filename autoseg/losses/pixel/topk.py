"""TopK cross-entropy: the mean cross-entropy of the hardest k % of the voxels (Wu et al., 2016)."""

from __future__ import annotations

import torch

from autoseg.losses._functional import gathered_log_probabilities, valid_mask
from autoseg.losses._validation import check_logits_target, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.registry import register_loss


def check_k(k: float) -> float:
    k = float(k)
    if not (0 < k <= 100):
        raise ValueError(f"k is a percentage of voxels and must lie in (0, 100], got {k}")
    return k


def _top_mean(values: torch.Tensor, n_counted: int, k: float, reduction: str) -> torch.Tensor:
    # nnU-Net's count, int(N k / 100), but never 0 (a mean over nothing would be NaN).
    n = max(1, int(n_counted * k / 100))
    top = torch.topk(values, n, sorted=False).values
    return top.sum() if reduction == "sum" else top.mean()


def _graph_zero(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # A 0 that is still part of the graph, so backward() works when every voxel is ignored.
    return (logits * 0).sum().to(dtype)


def topk_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    k: float = 10,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy averaged over only the k % of counted voxels with the largest cross-entropy.

    .. math:: L = \frac{1}{|K|} \sum_{n \in K} -\log p_n^{y_n}, \quad
              K = \text{the } \max(1, \lfloor N k / 100 \rfloor) \text{ voxels of largest } -\log p_n^{y_n}

    Wu, Shen, van den Hengel, "Bridging category-level and instance-level semantic image
    segmentation", arXiv:1605.06885 (2016) ("online bootstrapping"). ``k = 100`` is plain
    cross-entropy. N counts only the voxels that are not ``ignore_index``: ignored voxels can be
    neither selected nor counted (nnU-Net's ``TopKLoss`` counts them in N with a loss of 0, so with
    an ignore label it averages over fewer real voxels). ``mean`` and ``sum`` select over the whole
    batch, as nnU-Net; ``none`` selects per case. With every voxel ignored the loss is 0.

    Example:
        >>> logits = torch.zeros(1, 2, 2, 2)
        >>> logits[0, 1, 0, 0] = 4.0  # one wrong, confident voxel
        >>> target = torch.zeros(1, 2, 2, dtype=torch.long)
        >>> round(float(topk_loss(logits, target, k=25)), 4)  # only that voxel counts: log(1 + e^4)
        4.0181
    """
    check_reduction(reduction)
    k = check_k(k)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    logp, _ = gathered_log_probabilities(logits, target, mask)
    nll = -logp
    if mask is not None:
        # Ignored voxels sort below every real one and are never among the selected.
        nll = torch.where(mask, nll, torch.full_like(nll, -torch.inf))
    b = nll.shape[0]
    if reduction == "none":
        flat = nll.reshape(b, -1)
        counts = [flat.shape[1]] * b if mask is None else mask.reshape(b, -1).sum(1).tolist()
        return torch.stack([
            _top_mean(flat[i], counts[i], k, "mean") if counts[i] > 0 else _graph_zero(logits, nll.dtype)
            for i in range(b)
        ])
    n_counted = nll.numel() if mask is None else int(mask.sum())
    if n_counted == 0:
        return _graph_zero(logits, nll.dtype)
    return _top_mean(nll.reshape(-1), n_counted, k, reduction)


@register_loss("topk", category="pixel", function=topk_loss,
               citation="Wu, Shen, van den Hengel. Bridging category-level and instance-level semantic image "
                        "segmentation. arXiv:1605.06885 (2016)")
class TopKLoss(SegmentationLoss):
    """TopK cross-entropy: mean cross-entropy of the k % hardest counted voxels."""

    def __init__(self, k: float = 10, *, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.k = check_k(k)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return topk_loss(logits, target, self.k, ignore_index=self.ignore_index, reduction=self.reduction)
