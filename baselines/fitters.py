"""The five direction-finding methods of Tigges et al. (2023), on activations.

Each fitter takes activations `x` Float[N, D] and binary labels `y` Long[N] (1 = the
positive / correct class) and returns a unit vector Float[D] oriented so that the positive
class projects higher (the sign is fixed by the labels for the unsupervised ones, as in the
paper). DAS needs the model and lives in `baselines.das`.

- `mean_difference`: mean of the positive class minus mean of the negative class;
- `kmeans`: k-means with k=2 (scikit-learn), centroid difference;
- `probe`: logistic-regression weight (scikit-learn), on standardised features and mapped
  back to activation space, so a few huge residual dimensions do not dominate;
- `pca`: first principal component of the centred activations (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

METHODS = ("mean_diff", "kmeans", "probe", "pca", "das")


def _unit(v: Tensor) -> Tensor:
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("the fitted direction is zero or not finite; the classes may be identical at this layer")
    return v / norm


def orient(direction: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Flip `direction` so that the positive class has the larger mean projection."""
    proj = x @ direction
    return direction if proj[y == 1].mean() >= proj[y == 0].mean() else -direction


def _check(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need activations [N, D] and labels [N]; got {tuple(x.shape)} and {tuple(y.shape)}")
    classes = set(y.unique().tolist())
    if classes != {0, 1}:
        raise ValueError(f"need both classes 0 and 1 among the labels; got {sorted(classes)}")
    return x.double(), y.long()


def mean_difference(x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
    x, y = _check(x, y)
    return _unit(x[y == 1].mean(0) - x[y == 0].mean(0)).float()


def kmeans(x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
    from sklearn.cluster import KMeans

    x, y = _check(x, y)
    fit = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(x.numpy())
    centres = torch.from_numpy(fit.cluster_centers_)
    return orient(_unit(centres[1] - centres[0]), x, y).float()


def probe(x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
    from sklearn.linear_model import LogisticRegression

    x, y = _check(x, y)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = ((x - mean) / std).numpy()
    fit = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(z, y.numpy())
    # w.z = (w/std).x + const: the direction in activation space is w / std
    weight = torch.from_numpy(np.asarray(fit.coef_[0])) / std
    return orient(_unit(weight), x, y).float()


def pca(x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
    from sklearn.decomposition import PCA

    x, y = _check(x, y)
    fit = PCA(n_components=1, random_state=seed).fit(x.numpy())
    return orient(_unit(torch.from_numpy(fit.components_[0].copy())), x, y).float()


FITTERS: dict[str, Callable[..., Tensor]] = {
    "mean_diff": mean_difference,
    "kmeans": kmeans,
    "probe": probe,
    "pca": pca,
}


def class_gap(x: Tensor, y: Tensor, direction: Tensor) -> float:
    """Mean projection of the positive class minus the negative class along `direction`:
    the natural unit for steering coefficients (coef 1 = move by one class-mean gap)."""
    proj = x.double() @ direction.double()
    return float(proj[y == 1].mean() - proj[y == 0].mean())
