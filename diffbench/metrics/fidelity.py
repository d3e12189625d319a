"""FID, KID and precision/recall through torch-fidelity with a named feature extractor; class accuracy.

Samples become uint8 images (``digits_cnn.to_uint8``; grey images repeated to RGB for RGB
extractors), torch-fidelity's extractor turns them into features and torch-fidelity's
feature → metric functions score them against the reference (``metrics.reference``: features
cached on disk in safetensors, keyed by the reference's identity, extractor, weights sha256, layer
and resize; or an npz-stats reference's precomputed statistics, which only FID can use).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from diffbench.core.conditioning import condition_period
from diffbench.datasets import Reference, reference_spec
from diffbench.datasets.npz_stats import check_dimension
from diffbench.metrics import digits_cnn, extractors, frechet, reference
from diffbench.metrics.base import Batch, MetricContext, MetricValue, StreamingMetric
from diffbench.metrics.extractors import (
    INCEPTION,
    Extractor,
    MetricUnavailable,
    UnsafeWeights,
    extract_features,
    resolve_extractor,
)
from diffbench.metrics.reference import ReferenceData
from diffbench.util.devices import one_thread

__all__ = [
    "FID",
    "FIDInfinity",
    "KID",
    "PRC",
    "ClassAccuracy",
    "METRICS",
    "INCEPTION",
    "Extractor",
    "MetricUnavailable",
    "UnsafeWeights",
    "extract_features",
    "resolve_extractor",
    "reference_features",
]


@dataclass(frozen=True)
class FidelityFeatures:
    """Per-batch features of one torch-fidelity extractor; fid, kid and prc with equal keys share them."""

    ext: Extractor
    data_range: tuple[float, float]
    device: str
    batch_size: int

    @property
    def key(self) -> tuple:
        return ("torch-fidelity", self.ext, self.data_range, self.device, self.batch_size)

    def __call__(self, batch: Batch) -> Tensor:
        return extractors.extract_features(batch.samples, self.data_range, self.ext, self.device, self.batch_size)


def reference_features(
    dataset: Any, split: str | None, ext: Extractor, context: MetricContext, batch_size: int = 256
) -> tuple[Tensor, str]:
    """Reference features of ``dataset`` (a name or spec) / ``split`` and their sha256 (disk-cached)."""
    ref = reference.opened(dataset, split, context.registry)
    data = reference.reference_data(ref, ext, context.cache_dir, context.device, batch_size)
    if data.features is None:
        raise MetricUnavailable(f"reference {ref.name!r} holds statistics only, no features")
    return data.features, data.sha256


class _FidelityMetric(StreamingMetric):
    """Shared set-up: extractor, per-batch sample features, reference data, what-was-used in context.info."""

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    base_options: ClassVar[dict[str, Any]] = {
        "extractor": None,
        "weights_path": None,
        "reference_split": None,
        "batch_size": 256,
    }
    base_help: ClassVar[dict[str, str]] = {
        "extractor": f"feature extractor (list: 'diffbench plugins fid'); null: digits-cnn on digits, else {INCEPTION}",
        "weights_path": "the extractor's weights file (diffbench never downloads; null: the default location)",
        "reference_split": "split of the reference dataset (null: the dataset's default)",
        "batch_size": "images per extractor call",
    }
    option_types: ClassVar[dict[str, Any]] = {
        "extractor": str | None,
        "weights_path": str | None,
        "reference_split": str | None,
    }
    path_options: ClassVar[dict[str, str]] = {"weights_path": "path"}
    needs_features: ClassVar[bool] = True  # False: precomputed statistics (npz-stats) will do
    feature_metric: ClassVar[str] = ""  # the torch-fidelity metric whose default feature layer is used ("" = name)
    # whether score_features takes ``period``: the model's conditions repeat every ``period`` sample indices
    # (conditioning.condition_period), so its s.e. can respect the stratified design
    takes_period: ClassVar[bool] = False

    def _setup(
        self,
        model: Any,
        context: MetricContext,
        extractor: str | None,
        weights_path: str | None,
        reference_split: str | None,
    ) -> tuple[Extractor, Reference]:
        """The extractor and the opened reference; every one-line error a metric can raise before sampling."""
        dataset = getattr(model, "dataset", None)
        if dataset is None:
            raise MetricUnavailable(
                f"metric {self.name!r} needs reference data: add 'reference:' to the suite (e.g. "
                f"reference: {{name: image-folder, options: {{path: ...}}}}) or the model's "
                f"dataset option; model {getattr(model, 'name', model)!r} has none"
            )
        name = extractor or (digits_cnn.NAME if reference_spec(dataset)[0] == "digits" else INCEPTION)
        ext = resolve_extractor(name, weights_path, self.feature_metric or self.name)
        if getattr(model, "shape", None):  # before sampling; extract_features checks the images themselves
            extractors.check_input_shape(ext.name, tuple(model.shape))
        ref = reference.opened(dataset, reference_split, getattr(context, "registry", None))
        if ref.stats is not None:
            if self.needs_features:
                raise MetricUnavailable(
                    f"metric {self.name!r} needs reference features; reference {ref.name!r} "
                    "holds FID statistics only (use fid, or an image reference)"
                )
            if ext.layer.isdigit():
                check_dimension(ref, int(ext.layer), ext.name)
        return ext, ref

    def features(
        self,
        *,
        model: Any,
        context: MetricContext,
        extractor: str | None = None,
        weights_path: str | None = None,
        batch_size: int = 256,
        reference_split: str | None = None,
        **_: Any,
    ) -> FidelityFeatures:
        ext, _ref = self._setup(model, context, extractor, weights_path, reference_split)
        return FidelityFeatures(ext, tuple(float(v) for v in model.data_range), str(context.device), int(batch_size))

    def score(
        self, features: Tensor, *, model: Any, result: Any, context: MetricContext, **options: Any
    ) -> dict[str, MetricValue]:
        opts = {**self.options, **options}
        base = {k: opts.pop(k) for k in self.base_options}
        ext, ref = self._setup(model, context, base["extractor"], base["weights_path"], base["reference_split"])
        data = reference.reference_data(ref, ext, context.cache_dir, context.device, base["batch_size"])
        if ref.stats is not None:
            check_dimension(ref, int(features.shape[1]), ext.name)
        elif data.features.shape[1] != features.shape[1]:
            raise MetricUnavailable(
                f"the sample features have {features.shape[1]} dimensions, the reference's "
                f"{ext.name} features {data.features.shape[1]} (features from another extractor?)"
            )
        context.info.update(ext.describe())
        context.info.update(
            {
                **data.describe(),
                "num_samples": len(features),
                "feature_dim": int(features.shape[1]),
                "torch_fidelity": _torch_fidelity_version(),
            }
        )
        if self.takes_period:
            opts["period"] = condition_period(model)
        with one_thread():  # scores must not depend on the process's thread count (local vs Ray worker)
            return self.score_features(features, data, context, **opts)

    def score_features(
        self, gen: Tensor, ref: ReferenceData, context: MetricContext, **options: Any
    ) -> dict[str, MetricValue]:
        raise NotImplementedError


@functools.lru_cache(maxsize=1)  # read from the installed metadata once per process (a few ms each time)
def _torch_fidelity_version() -> str:
    from importlib.metadata import version  # not its import: that pulls in torchvision and torch._dynamo

    return version("torch-fidelity")


def _fid_against(stats: dict[str, np.ndarray] | frechet.ReferenceRoot):
    """FID of generated features against fixed reference statistics, via eigvalsh(√Σr Σg √Σr) (same value,
    faster); what the CPU bootstrap and fid-inf evaluate per resample (float64 numpy: faster than torch here).

    With fewer samples than feature dimensions (n − 1 < D, e.g. 1000 Inception features of 2048) the
    covariance has rank n − 1 at most, and the nonzero eigenvalues of √Σr Σg √Σr are those of the
    n × n matrix C Σr Cᵀ / (n − 1), C the centred features: a far smaller eigenproblem, same value.
    """
    ref = stats if isinstance(stats, frechet.ReferenceRoot) else frechet.ReferenceRoot.of(stats)

    def fid(gen: np.ndarray) -> float:
        n, d = gen.shape
        mu = gen.mean(0)
        if n - 1 < d:
            centred = gen - mu
            eig = np.linalg.eigvalsh(centred @ ref.sigma @ centred.T / (n - 1))
            tr_sigma = float((centred**2).sum()) / (n - 1)
            return float(
                ((mu - ref.mu) ** 2).sum() + tr_sigma + np.trace(ref.sigma) - 2 * np.sqrt(np.clip(eig, 0, None)).sum()
            )
        return frechet.fid_of(mu, np.cov(gen, rowvar=False), ref)

    return fid


def reference_root(ref: ReferenceData) -> frechet.ReferenceRoot:
    """The reference's statistics with Σr^½ (one eigendecomposition per reference and process)."""
    return ref.memo("frechet-root", lambda: frechet.ReferenceRoot.of(ref.stats()))


SE_METHODS = ("jackknife", "bootstrap", "none")


FID_ROUNDOFF = 1e-5  # relative to tr Σr + tr Σg + |μr|² + |μg|², the terms FID is a difference of


def nonnegative_fid(value: float, gen: Tensor, ref: dict[str, np.ndarray]) -> float:
    """``value`` when it is ≥ 0 within round-off (FID_ROUNDOFF); else ValueError: a distance below zero
    means the statistics are broken, and the cell fails with the reason rather than record it."""
    g = gen.double()
    scale = (
        float(g.square().sum()) / max(len(g), 1)
        + abs(float(np.trace(ref["sigma"])))
        + float(np.square(ref["mu"]).sum())
    )
    if not value >= -FID_ROUNDOFF * scale:
        raise ValueError(
            f"FID came out {value:.6g}, below zero beyond round-off (terms of size {scale:.4g}): "
            "the reference or sample statistics are not valid covariances"
        )
    return value


class FID(_FidelityMetric):
    """Fréchet distance between Gaussian fits of sample and reference features (Heusel et al. 2017).

    The value comes from float64 per-group moments of the sample features (``metrics.frechet``); its
    s.e. by ``se_method``: ``jackknife`` (default; linearised delete-a-group jackknife over ``groups``
    groups of whole condition blocks, fewer where there are fewer blocks or under two samples a group;
    about the cost of the FID itself), ``bootstrap`` (s.d. over ``bootstrap`` resamples drawn within
    each condition; batched on the metric device on CUDA) or ``none``. A conditional model's samples
    are stratified by condition (``period`` consecutive indices hold each condition once) and both
    estimates keep that design; where the conditions do not repeat (under two blocks) the samples are
    treated as independent draws, which overstates the spread of a stratified sample.
    """

    name = "fid"
    higher_is_better = False
    options: ClassVar[dict[str, Any]] = {
        **_FidelityMetric.base_options,
        "se_method": "jackknife",
        "groups": 20,
        "bootstrap": 100,
    }
    option_help = {
        **_FidelityMetric.base_help,
        "se_method": "how the standard error is estimated: 'jackknife' (delete-a-group, from per-group "
        "moments), 'bootstrap' or 'none'",
        "groups": "jackknife groups (whole blocks of the model's conditions, by sample index)",
        "bootstrap": "resamples of the sample features when se_method is 'bootstrap'",
    }
    needs_features = False
    takes_period = True

    def score_features(
        self, gen, ref, context, *, se_method: str, groups: int, bootstrap: int, period: int = 1
    ) -> dict[str, MetricValue]:
        if se_method not in SE_METHODS:
            raise ValueError(f"fid option se_method must be one of {', '.join(SE_METHODS)}, not {se_method!r}")
        if not (isinstance(groups, int) and groups >= 2):
            raise ValueError(f"fid option groups must be an integer >= 2, not {groups!r}")
        if se_method == "bootstrap" and not (isinstance(bootstrap, int) and bootstrap >= 2):
            raise ValueError(f"fid option bootstrap (resamples) must be an integer >= 2, not {bootstrap!r}")
        root = reference_root(ref)
        point = "FID (Heusel et al. 2017) from float64 feature moments, tr√(ΣgΣr) by eigvalsh"
        context.info["fid_se_method"] = se_method
        if len(gen) // period < 2:
            period = 1  # the conditions do not repeat: no within-condition spread to measure
        design = f"{period} conditions, sample i in stratum i mod {period}" if period > 1 else "independent samples"
        context.info["fid_se_strata"] = period
        # the same moments and eigendecomposition whatever the s.e. method, so the value is the same bits
        groups = min(groups, len(gen) // 2, len(gen) // period)  # ≥ 2 samples and ≥ 1 whole block a group
        moments = frechet.GroupMoments.of_rows(gen.numpy(), max(groups, 1), period=period)
        if se_method == "jackknife" and groups >= 2:
            value, se = frechet.fid_with_jackknife(moments, root)
            value = nonnegative_fid(value, gen, ref.stats())
            context.info["fid_jackknife_groups"] = groups
            how = "by sample index"
            if period > 1:
                how = f"of whole blocks of {period} (sample i in group (i // {period}) mod {groups})"
            return {
                "fid": MetricValue(
                    value,
                    se,
                    f"{point}; s.e. = linearised delete-a-group jackknife over {groups} groups {how} ({design})",
                )
            }
        value = nonnegative_fid(frechet.fid_with_moments(moments, root), gen, ref.stats())
        if se_method != "bootstrap":
            why = "se_method=none" if se_method == "none" else f"{len(gen)} samples: too few for the jackknife"
            return {"fid": MetricValue(value, None, f"{point}; no uncertainty ({why})")}
        if context.device.type == "cuda":
            boots = frechet.bootstrap_fids(gen, root, bootstrap, context.seed, context.device, period=period)
        else:
            fid, g, rng = _fid_against(root), gen.double().numpy(), np.random.default_rng(context.seed)
            boots = [fid(g[frechet.bootstrap_draws(len(g), period, rng)]) for _ in range(bootstrap)]
        context.info["fid_bootstrap_resamples"] = bootstrap
        within = " within each condition" if period > 1 else ""
        return {
            "fid": MetricValue(
                value,
                float(np.std(boots, ddof=1)),
                f"{point}; s.e. = s.d. over {bootstrap} bootstrap resamples of sample features{within} ({design})",
            )
        }


class FIDInfinity(_FidelityMetric):
    """FID∞: FID of random subsets at several N, a line fitted against 1/N, its intercept (Chong & Forsyth 2020)."""

    name = "fid-inf"
    feature_metric = "fid"  # torch-fidelity knows no "fid-inf": FID's features
    higher_is_better = False
    options: ClassVar[dict[str, Any]] = {**_FidelityMetric.base_options, "points": 15, "min_fraction": 0.1}
    option_help = {
        **_FidelityMetric.base_help,
        "points": "subset sizes the line is fitted over",
        "min_fraction": "smallest subset as a fraction of the samples",
    }
    needs_features = False

    def score_features(self, gen, ref, context, *, points: int, min_fraction: float) -> dict[str, MetricValue]:
        n = len(gen)
        sizes = np.unique(np.linspace(max(2, int(round(min_fraction * n))), n, points).round().astype(int))
        if len(sizes) < 3:
            raise MetricUnavailable(f"fid-inf needs at least 3 distinct subset sizes; {n} samples give {len(sizes)}")
        root = reference_root(ref)
        fid, g = _fid_against(root), gen.double().numpy()
        rng = np.random.default_rng(context.seed)
        fids = np.array([fid(g[rng.choice(n, size, replace=False)]) for size in sizes])
        x = 1.0 / sizes
        slope, intercept = np.polyfit(x, fids, 1)
        resid = fids - (intercept + slope * x)
        s2 = float(resid @ resid) / (len(x) - 2)
        se = float(np.sqrt(s2 * (1 / len(x) + x.mean() ** 2 / ((x - x.mean()) ** 2).sum())))
        context.info["fid_inf_sizes"] = sizes.tolist()
        method = (
            f"FID∞: least-squares line of FID on 1/N over {len(sizes)} random subsets of {sizes[0]}..{n} "
            "samples, intercept at 1/N = 0; s.e. = the fit's OLS standard error (the subsets share "
            "samples, so it understates the sampling noise)"
        )
        return {"fid-inf": MetricValue(float(intercept), se, method)}


class KID(_FidelityMetric):
    """Kernel (polynomial, cubic) MMD² between sample and reference features (Bińkowski et al. 2018)."""

    name = "kid"
    higher_is_better = False
    options: ClassVar[dict[str, Any]] = {**_FidelityMetric.base_options, "subsets": 100, "subset_size": 1000}
    option_help = {
        **_FidelityMetric.base_help,
        "subsets": "random subsets the MMD² is averaged over",
        "subset_size": "samples per subset (at most half the smaller set)",
    }

    def score_features(self, gen, ref, context, *, subsets: int, subset_size: int) -> dict[str, MetricValue]:
        # at most half of the smaller set, so subsets differ and their spread measures sampling noise;
        # the estimate stays unbiased for any subset size
        size = min(subset_size, min(len(gen), ref.size) // 2)
        mean, std = kid_subsets(gen, ref, subsets, size, context.seed)
        context.info["kid_subset_size"] = size
        method = (
            f"torch-fidelity KID, mean over {subsets} subsets of {size}; s.e. = s.d. over subsets "
            "(conservative: the spread of a single-subset estimate)"
        )
        return {"kid": MetricValue(mean, std, method)}


GRAM_LIMIT = 4_000_000  # kernel entries (16 MB in float32) up to which KID computes whole Gram matrices once


def poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """torch-fidelity's KID kernel (x·y / d + 1)³, in the features' dtype."""
    return (np.matmul(x, y.T) * (1.0 / x.shape[1]) + 1) ** 3


def kid_subsets(gen: Tensor, ref: ReferenceData, subsets: int, size: int, seed: int) -> tuple[float, float]:
    """Mean and s.d. of the unbiased MMD² over random subsets, drawn as torch-fidelity draws them.

    The same subsets and formula as torch-fidelity's ``kid_features_to_metric``, float32 kernel
    entries (as torch-fidelity computes them) summed in float64. Small sets: the kernel matrices are
    computed once (the reference's once per process) and every subset's sums come from them at once,
    as quadratic forms with the subsets' 0/1 indicator vectors. Large sets: subset by subset, the
    reference subsets' sums computed once per process and shared by every cell, so a cell computes
    two m × m kernel blocks per subset (memory O(m²), independent of the sample count).
    """
    n1, n2 = len(gen), ref.size
    if max(n1, n2) ** 2 > GRAM_LIMIT:
        return _kid_by_subset(gen.cpu().numpy(), ref, subsets, size, seed)
    x, y = gen.cpu().numpy(), ref.features.cpu().numpy()
    k_xx, k_xy = poly_kernel(x, x).astype(np.float64), poly_kernel(x, y).astype(np.float64)
    # the draws depend only on (n1, n2, subsets, size, seed): every cell of a suite shares them, and the
    # reference's sums over them
    a, b, sum_yy = ref.memo(("kid-subsets", n1, subsets, size, seed), lambda: _kid_draws(n1, ref, subsets, size, seed))
    m = size
    sum_xx = _off_diagonal_sums(a, k_xx)
    sum_xy = np.einsum("sn,sn->s", a @ k_xy, b)
    mmds = (sum_xx + sum_yy) / (m * (m - 1)) - 2 * sum_xy / (m * m)
    return float(np.mean(mmds)), float(np.std(mmds))


def _kid_by_subset(x: np.ndarray, ref: ReferenceData, subsets: int, m: int, seed: int) -> tuple[float, float]:
    """``kid_subsets`` for large sets: per subset the off-diagonal sum of K_xx and the sum of K_xy."""
    n1 = len(x)

    def draws():
        rng = np.random.RandomState(seed)
        pairs = [(rng.choice(n1, m, replace=False), rng.choice(ref.size, m, replace=False)) for _ in range(subsets)]
        y = ref.features.cpu().numpy()
        sum_yy = np.array([_off_diagonal_sum(poly_kernel(y[j], y[j])) for _, j in pairs])
        return pairs, y, sum_yy

    pairs, y, sum_yy = ref.memo(("kid-by-subset", n1, subsets, m, seed), draws)
    mmds = np.empty(subsets)
    for s, (i, j) in enumerate(pairs):
        xs = x[i]
        mmds[s] = (_off_diagonal_sum(poly_kernel(xs, xs)) + sum_yy[s]) / (m * (m - 1)) - 2 * poly_kernel(xs, y[j]).sum(
            dtype=np.float64
        ) / (m * m)
    return float(np.mean(mmds)), float(np.std(mmds))


def _off_diagonal_sum(k: np.ndarray) -> float:
    return float(k.sum(dtype=np.float64) - np.trace(k, dtype=np.float64))


def _kid_draws(n1: int, ref: ReferenceData, subsets: int, size: int, seed: int):
    """torch-fidelity's subset draws (in its order) as 0/1 indicator rows, and the reference's off-diagonal sums."""
    rng = np.random.RandomState(seed)
    a, b = np.zeros((subsets, n1)), np.zeros((subsets, ref.size))
    for i in range(subsets):
        a[i, rng.choice(n1, size, replace=False)] = 1.0
        b[i, rng.choice(ref.size, size, replace=False)] = 1.0
    y = ref.features.cpu().numpy()
    k_yy = poly_kernel(y, y).astype(np.float64)
    return a, b, _off_diagonal_sums(b, k_yy)


def _off_diagonal_sums(indicators: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Σ_{i≠j} K[i, j] over each subset (row of 0/1 ``indicators``): sᵀKs minus the diagonal's share."""
    return np.einsum("sn,sn->s", indicators @ k, indicators) - indicators @ np.diag(k)


class PRC(_FidelityMetric):
    """Improved precision and recall of sample vs reference features, k-NN balls (Kynkäänniemi et al. 2019).

    torch-fidelity's definition (``prc_features_to_metric``) on at most ``max_samples`` rows of each
    side (a seeded random subset where a side has more), so the cost and memory are bounded whatever
    the sample count: distances in blocks of ``block`` rows, the reference's k-NN radii computed once
    per process.
    """

    name = "prc"
    higher_is_better = True  # precision and recall
    options: ClassVar[dict[str, Any]] = {**_FidelityMetric.base_options, "neighborhood": 3, "max_samples": 8000}
    option_help = {
        **_FidelityMetric.base_help,
        "neighborhood": "k of the k-nearest-neighbour balls",
        "max_samples": "at most this many rows of each side (a seeded random subset beyond it)",
    }

    def score_features(self, gen, ref, context, *, neighborhood: int, max_samples: int) -> dict[str, MetricValue]:
        if not (isinstance(max_samples, int) and max_samples > neighborhood):
            raise ValueError(
                f"prc option max_samples must be an integer above neighborhood ({neighborhood}), not {max_samples!r}"
            )
        x = _bounded_subset(gen, max_samples, context.seed)
        y, radii_y = ref.memo(
            ("prc-subset", max_samples, neighborhood, context.seed),
            lambda: _with_radii(_bounded_subset(ref.features, max_samples, context.seed + 1), neighborhood),
        )
        precision, recall = precision_recall(x, knn_radii(x, neighborhood), y, radii_y)
        context.info["prc_sizes"] = [len(x), len(y)]
        limit = f" of random subsets of {max_samples}" if max(len(gen), ref.size) > max_samples else ""
        return {
            "precision": MetricValue(
                precision,
                binomial_se(precision, len(x)),
                f"precision (torch-fidelity's definition), k={neighborhood}, on {len(x)} "
                f"samples vs {len(y)} reference rows{limit}; binomial s.e. over samples",
            ),
            "recall": MetricValue(
                recall,
                binomial_se(recall, len(y)),
                f"recall (torch-fidelity's definition), k={neighborhood}, on {len(x)} samples vs "
                f"{len(y)} reference rows{limit}; binomial s.e. over reference rows "
                "(approximate: ignores dependence through the samples' k-NN radii)",
            ),
        }


PRC_BLOCK = 1024  # rows per distance block: memory PRC_BLOCK × max_samples float32


def _bounded_subset(rows: Tensor, limit: int, seed: int) -> Tensor:
    """All rows when there are at most ``limit``, else ``limit`` of them drawn without replacement (index order)."""
    if len(rows) <= limit:
        return rows.float()
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
    return rows[torch.from_numpy(pick)].float()


def _with_radii(rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return rows, knn_radii(rows, k)


def knn_radii(rows: Tensor, k: int) -> Tensor:
    """Each row's distance to its k-th nearest other row (torch.cdist; the row itself is the 0th)."""
    return torch.cat([torch.cdist(block, rows).kthvalue(k + 1, dim=1).values for block in rows.split(PRC_BLOCK)])


def precision_recall(x: Tensor, radii_x: Tensor, y: Tensor, radii_y: Tensor) -> tuple[float, float]:
    """Share of x inside some y's k-NN ball (precision) and of y inside some x's (recall), one distance pass."""
    inside_y = torch.zeros(len(y), dtype=torch.bool)
    hits = []
    for block, radii in zip(x.split(PRC_BLOCK), radii_x.split(PRC_BLOCK)):
        dist = torch.cdist(block, y)  # (b, |y|)
        hits.append((dist <= radii_y[None, :]).any(dim=1))
        inside_y |= (dist <= radii[:, None]).any(dim=0)
    return torch.cat(hits).float().mean().item(), inside_y.float().mean().item()


def binomial_se(p: float, n: int) -> float:
    """Standard error sqrt(p (1 - p) / n) of a proportion."""
    return float(np.sqrt(p * (1.0 - p) / n)) if n else float("nan")


@dataclass(frozen=True)
class ClassMatches:
    """Per sample 1.0 when digits-cnn classifies it as its conditioning label, else 0.0."""

    data_range: tuple[float, float]

    @property
    def key(self) -> tuple:
        return ("class-matches", digits_cnn.NAME, self.data_range)

    def __call__(self, batch: Batch) -> Tensor:
        if batch.labels is None:
            raise MetricUnavailable("metric 'class-accuracy' needs class-conditional samples (conditional=True)")
        pred = digits_cnn.classify(batch.samples, self.data_range)
        return (pred == batch.labels.cpu()).float()


class ClassAccuracy(StreamingMetric):
    """Share of class-conditional samples that the shipped digits-cnn classifies as their conditioning label."""

    name = "class-accuracy"
    higher_is_better = True
    options: ClassVar[dict[str, Any]] = {}

    def features(self, *, model: Any, context: MetricContext, **options: Any) -> ClassMatches:
        if reference_spec(getattr(model, "dataset", None) or "")[0] != "digits":
            raise MetricUnavailable(
                f"metric 'class-accuracy' needs a digits model; "
                f"model {getattr(model, 'name', model)!r} has reference "
                f"{reference_spec(getattr(model, 'dataset', None) or 'none')[0]!r}"
            )
        return ClassMatches(tuple(float(v) for v in model.data_range))

    def score(
        self, features: Tensor, *, model: Any, result: Any, context: MetricContext, **options: Any
    ) -> dict[str, MetricValue]:
        p = features.float().mean().item()
        context.info["classifier"] = digits_cnn.NAME
        context.info["classifier_hash"] = digits_cnn.load_classifier()[1]
        return {
            "class-accuracy": MetricValue(
                p, binomial_se(p, len(features)), "share classified as the conditioning label; binomial s.e."
            )
        }


METRICS: dict = {m.name: m for m in (FID(), FIDInfinity(), KID(), PRC(), ClassAccuracy())}
