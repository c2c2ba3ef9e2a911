"""Bootstrap intervals for isoFLOP optima (no torch, no matplotlib).

A parabola loss = a*x^2 + b*x + c in x = log10(params) (Hoffmann et al. 2022, approach 2) is
refitted on redrawn data; each refit's minimum (10^(-b/2a), c - b^2/4a) is one draw of the
optimum. The noise redrawn around the measured seed means is the run-to-run (seed) noise when
every size has >= 2 seeds, else the fit's residuals (needs more sizes than the parabola's 3
coefficients). Either scale is drawn with its own chi-squared uncertainty: at 2 seeds or 4-6
sizes it rests on very few degrees of freedom, and plain resampling then gave "95%"
intervals that covered the truth ~80% of the time on synthetic data (Besiroglu et al. 2024
on over-narrow scaling-law intervals). This is a parametric bootstrap (normal noise).

Every fit draws from a generator of its own, seeded from what identifies the fit (`fit_rng`:
budget, variant, metric, family), never from a shared default: two fits drawn from the same
seed get the same chi-squared and normal draws, and a difference of their optima then has an
interval far too narrow (one shared generator made a nominal 95% MoD - vanilla interval
cover the truth 58-80% of the time). The draws stay reproducible run to run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclass
class Draws:
    """Bootstrap draws of an optimum; NaN where a refit had no minimum inside the grid."""

    params: np.ndarray  # (n_boot,)
    loss: np.ndarray  # (n_boot,)
    method: str  # "seeds" | "residuals"

    @property
    def interior(self) -> float:
        """Share of refits with a minimum strictly inside the grid."""
        return float(np.isfinite(self.params).mean())


def parabola_optima(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minima of parabolas fitted to each column of Y (n, m) over x (n,); NaN outside (x.min, x.max)."""
    a, b, c = np.polyfit(x, Y, 2)  # each (m,)
    with np.errstate(divide="ignore", invalid="ignore"):
        xo = -b / (2 * a)
        ok = (a > 0) & (xo > x.min()) & (xo < x.max())
        return 10.0 ** np.where(ok, xo, np.nan), np.where(ok, c - b * b / (4 * a), np.nan)


def fit_rng(*identity) -> np.random.Generator:
    """The bootstrap generator of one fit, seeded from what identifies it (e.g. budget,
    variant, metric, family): distinct fits get independent streams, the same fit the same
    draws every time. Floats enter by repr, so budgets 2e8 and 2.0000001e8 stay apart."""
    text = json.dumps([repr(p) if isinstance(p, float) else str(p) for p in identity])
    words = np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint32)
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def bootstrap_optimum(params, seed_losses: list, rng: np.random.Generator,
                      n_boot: int = N_BOOT) -> Draws | None:
    """Draws of the optimum from per-size seed losses (a list of arrays, one per size).

    rng: this fit's own generator (`fit_rng`); there is no default, so no two fits can
    share draws by accident. None when neither resampling applies (a size without a loss,
    or <= 3 sizes of one seed).
    """
    x = np.log10(np.asarray(params, float))
    losses = [np.asarray(v, float) for v in seed_losses]
    if any(len(v) == 0 for v in losses):
        return None
    means = np.array([v.mean() for v in losses])
    counts = np.array([len(v) for v in losses])
    if (counts >= 2).all():
        # Seed noise, pooled over sizes (sum of n_i - 1 degrees of freedom) and drawn with its
        # chi-squared uncertainty: resampling 2 seeds per size has 3 possible means and its
        # "95%" interval covered the truth ~80% of the time on synthetic data (tests).
        ss = float(sum(((v - v.mean()) ** 2).sum() for v in losses))
        dof = int((counts - 1).sum())
        sigma = np.sqrt(ss / rng.chisquare(dof, n_boot))  # (n_boot,) per-seed noise
        Y = means[:, None] + rng.standard_normal((len(x), n_boot)) * sigma / np.sqrt(counts)[:, None]
        return Draws(*parabola_optima(x, Y), "seeds")
    if len(x) <= 3:
        return None
    n, dof = len(x), len(x) - 3
    fitted = np.polyval(np.polyfit(x, means, 2), x)
    rss = float(((means - fitted) ** 2).sum())
    # The residuals' scale, drawn with its own uncertainty (sigma^2 ~ RSS / chi2_dof): 4-6
    # sizes leave 1-3 residual degrees of freedom, and resampling so few residuals, or
    # plugging in their spread, covered the truth in ~80% of "95%" intervals (tests).
    sigma = np.sqrt(rss / rng.chisquare(dof, n_boot))  # (n_boot,)
    Y = fitted[:, None] + rng.standard_normal((n, n_boot)) * sigma
    return Draws(*parabola_optima(x, Y), "residuals")


def interval(draws: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """Percentile interval of the finite draws, or None when fewer than half are finite."""
    ok = draws[np.isfinite(draws)]
    if len(ok) < max(2, len(draws) / 2):
        return None
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(ok, tail)), float(np.percentile(ok, 100 - tail))]


def basic_interval(point: float, draws: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The basic bootstrap interval [2 point - q_hi, 2 point - q_lo] (Davison & Hinkley 1997,
    eq. 5.6): the draws' spread reflected about the point estimate. Used for optimal losses,
    which are minima over families (envelope.py): the minimum of several noisy optima is
    biased low and its draws are biased low again, so where families tie a percentile
    interval sits too low and under-covers; reflected, the bias cancels (coverage measured in
    tests/test_coverage.py, figures in docs/verdict.md). With one family they nearly agree."""
    q = interval(draws, level)
    return None if q is None or not np.isfinite(point) else [2 * point - q[1], 2 * point - q[0]]


def seed_noise(seed_losses: list[np.ndarray]) -> tuple[np.ndarray, int] | None:
    """Pooled within-size scatter matrix of one or more metrics (sum over sizes of the seeds'
    deviations from their size mean, (m, m)) and its degrees of freedom, sum(n_i - 1); None
    unless every size has >= 2 seeds. seed_losses: per size an (n_i, m) array."""
    if not all(len(v) >= 2 for v in seed_losses):
        return None
    dev = np.concatenate([v - v.mean(axis=0) for v in seed_losses])  # (sum n_i, m)
    return dev.T @ dev, int(sum(len(v) - 1 for v in seed_losses))


def inverse_wishart_2x2(scatter: np.ndarray, dof: int, rng: np.random.Generator,
                        n: int) -> np.ndarray | None:
    """n draws of a 2x2 noise covariance given its scatter matrix S with `dof` degrees of
    freedom: Sigma = W^-1, W ~ Wishart(dof + 1, S^-1) by Bartlett's decomposition, (n, 2, 2).
    With dof + 1 (dof + p - 1 for p = 2) every linear combination a'Sigma a is distributed as
    a'S a / chi2_dof: each metric's variance, and their difference's, is drawn exactly as
    bootstrap_optimum draws one metric's (sigma^2 = ss / chi2_dof, its 1x1 case). None where it
    does not exist (dof < 1, or a singular S: the two metrics move in lockstep)."""
    if dof < 1 or np.linalg.det(scatter) <= 1e-12 * max(np.trace(scatter), 1e-300) ** 2:
        return None
    L = np.linalg.cholesky(np.linalg.inv(scatter))
    A = np.zeros((n, 2, 2))
    A[:, 0, 0] = np.sqrt(rng.chisquare(dof + 1, n))
    A[:, 1, 1] = np.sqrt(rng.chisquare(dof, n))
    A[:, 1, 0] = rng.standard_normal(n)
    LA = L @ A  # (n, 2, 2)
    return np.linalg.inv(LA @ LA.transpose(0, 2, 1))


def bootstrap_paired(params, seed_losses: list, rng: np.random.Generator,
                     n_boot: int = N_BOOT) -> tuple[Draws, Draws] | None:
    """Joint draws of two metrics' optima measured on the same runs (e.g. a MoD run's top-k
    and causal eval losses): per size the two losses are redrawn together, with the covariance
    of their seed noise (>= 2 seeds per size) or of the two fits' residuals (one seed, >= 5
    sizes), drawn by inverse_wishart_2x2. Their difference then keeps what the runs share.
    seed_losses: per size an (n_i, 2) array. None where no joint draw exists (the caller then
    draws the two independently and says so)."""
    x = np.log10(np.asarray(params, float))
    losses = [np.asarray(v, float).reshape(-1, 2) for v in seed_losses]
    if any(len(v) == 0 for v in losses):
        return None
    means = np.stack([v.mean(axis=0) for v in losses])  # (n_sizes, 2)
    counts = np.array([len(v) for v in losses], float)
    noise = seed_noise(losses)
    if noise is not None:
        centre, scale = means, 1 / counts
    else:
        centre = np.stack([np.polyval(np.polyfit(x, means[:, k], 2), x) for k in (0, 1)], axis=1)
        noise, scale = ((means - centre).T @ (means - centre), len(x) - 3), np.ones(len(x))
    sigma = inverse_wishart_2x2(*noise, rng, n_boot)
    if sigma is None:
        return None
    chol = np.linalg.cholesky(sigma)  # (n_boot, 2, 2)
    z = rng.standard_normal((len(x), n_boot, 2))
    e = np.einsum("bij,sbj->sbi", chol, z) * np.sqrt(scale)[:, None, None]  # (n_sizes, n_boot, 2)
    Y = centre[:, None, :] + e
    method = "seeds" if counts.min() >= 2 else "residuals"
    return Draws(*parabola_optima(x, Y[..., 0]), method), Draws(*parabola_optima(x, Y[..., 1]), method)
