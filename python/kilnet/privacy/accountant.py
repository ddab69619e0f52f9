"""The RDP accountant of the Poisson-subsampled Gaussian mechanism (the mechanism of DP-SGD).

One DP-SGD step with sampling rate q (each example joins the batch independently with
probability q), per-example clipping to norm C and Gaussian noise of standard deviation
sigma * C is the sampled Gaussian mechanism (SGM) with noise multiplier sigma. Its Renyi
differential privacy (RDP) at order alpha is log(A_alpha) / (alpha - 1), where A_alpha is the
expectation of Mironov, Talwar and Zhang 2019 ("Renyi Differential Privacy of the Sampled
Gaussian Mechanism", arXiv:1908.10530, section 3.3):

  integer alpha:    A = sum_{k=0..alpha} binom(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2))
  fractional alpha: the two-sided series of the same paper (erfc terms), summed until its terms
                    fall below exp(-30), as TF Privacy's and Opacus' rdp.py do.

RDP composes additively over steps (Mironov 2017), and an (alpha, r)-RDP guarantee gives
(eps, delta)-DP with

  classic (Mironov 2017, Prop. 3):   eps = r + log(1/delta) / (alpha - 1)
  improved (Balle et al. 2020, "Hypothesis testing interpretations and Renyi differential
  privacy", Thm. 21; what Opacus uses):
                                     eps = r + log((alpha-1)/alpha) - (log(delta) + log(alpha)) / (alpha - 1)

minimised over the orders. The improved conversion is the default; the classic one reproduces
the figures TF Privacy's tutorials publish (e.g. eps = 3.01 for MNIST, 60 epochs, batch 256,
noise 1.1, delta 1e-5).

All sums are done in log space with the standard library only (no SciPy).
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

__all__ = ["DEFAULT_ORDERS", "compute_rdp", "get_privacy_spent", "compute_epsilon",
           "get_noise_multiplier", "RDPAccountant"]

# Opacus' and TF Privacy's default orders: 1.1 .. 10.9 by 0.1, then 12 .. 63.
DEFAULT_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

_CONVERSIONS = ("improved", "classic")


# ------------------------------------------------------------------------ log-space helpers
def _log_add(a, b):
    lo, hi = min(a, b), max(a, b)
    if lo == -math.inf:
        return hi
    return hi + math.log1p(math.exp(lo - hi))


def _log_sub(a, b):
    """log(exp(a) - exp(b)) for a >= b."""
    if b == -math.inf:
        return a
    if a <= b:
        return -math.inf     # the series' alternating tail; exact cancellation
    try:
        return b + math.log(math.expm1(a - b))
    except OverflowError:
        return a


def _log_erfc(x):
    """log(erfc(x)), accurate where erfc underflows (asymptotic series, as TF Privacy's)."""
    if x < 25.0:
        return math.log(math.erfc(x))
    return (-math.log(math.pi) / 2 - math.log(x) - x * x - 0.5 * x ** -2 + 0.625 * x ** -4
            - 37.0 / 24.0 * x ** -6 + 353.0 / 64.0 * x ** -8)


def _log_a_int(q, sigma, alpha):
    log_a = -math.inf
    lq, l1q = math.log(q), math.log1p(-q)
    lga = math.lgamma(alpha + 1)
    for k in range(alpha + 1):
        log_binom = lga - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        log_a = _log_add(log_a, log_binom + k * lq + (alpha - k) * l1q + (k * k - k) / (2 * sigma ** 2))
    return log_a


def _log_a_frac(q, sigma, alpha):
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    lq, l1q = math.log(q), math.log1p(-q)
    log_coef, sign = 0.0, 1.0          # binom(alpha, 0) = 1; then the running product
    i = 0
    while True:
        j = alpha - i
        log_t0 = log_coef + i * lq + j * l1q
        log_t1 = log_coef + j * lq + i * l1q
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma ** 2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma ** 2) + log_e1
        if sign > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        if max(log_s0, log_s1) < -30:
            break
        i += 1
        # binom(alpha, i) = binom(alpha, i-1) * (alpha - i + 1) / i: its sign flips past alpha
        f = (alpha - i + 1) / i
        log_coef += math.log(abs(f))
        sign *= 1.0 if f > 0 else -1.0
    return _log_add(log_a0, log_a1)


def _rdp_one_step(q, sigma, alpha):
    if q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if q == 1.0:
        return alpha / (2 * sigma ** 2)          # the plain Gaussian mechanism
    if math.isinf(alpha):
        return math.inf
    if float(alpha).is_integer():
        return _log_a_int(q, sigma, int(alpha)) / (alpha - 1)
    return _log_a_frac(q, sigma, alpha) / (alpha - 1)


# ------------------------------------------------------------------------ argument checks
def _check_real(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}{rb}, got {v}")
    return v


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        else:
            raise TypeError(f"steps must be a non-negative int, got {steps!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return int(steps)


def _check_orders(orders):
    if orders is None:
        return np.asarray(DEFAULT_ORDERS, np.float64)
    a = np.atleast_1d(np.asarray(orders, np.float64))
    if a.ndim != 1 or a.size == 0:
        raise ValueError("orders must be a non-empty 1-D sequence of numbers > 1")
    if not (a > 1).all() or np.isnan(a).any():
        raise ValueError(f"every RDP order must be > 1, got {a[~(a > 1)][0]}")
    return a


def _check_common(noise_multiplier, sample_rate):
    sigma = _check_real("noise_multiplier", noise_multiplier, lo=0.0)
    q = _check_real("sample_rate", sample_rate, lo=0.0, hi=1.0, lo_open=True)
    return sigma, q


def _check_delta(delta):
    return _check_real("delta", delta, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


# ------------------------------------------------------------------------ public API
def compute_rdp(steps, noise_multiplier, sample_rate, orders=None):
    """RDP of `steps` compositions of the sampled Gaussian mechanism, one value per order.

    sample_rate: the Poisson sampling probability q (batch_size / dataset size), in (0, 1];
    noise_multiplier: sigma >= 0 (noise std / clipping norm); orders: RDP orders > 1 (default
    DEFAULT_ORDERS). Returns a float64 array (inf where the guarantee is void, e.g. sigma 0)."""
    steps = _check_steps(steps)
    sigma, q = _check_common(noise_multiplier, sample_rate)
    orders = _check_orders(orders)
    rdp = np.array([_rdp_one_step(q, sigma, float(a)) for a in orders], np.float64)
    with np.errstate(invalid="ignore"):     # inf * 0 steps -> 0
        return np.where(np.isinf(rdp) & (steps == 0), 0.0, rdp * steps)


def get_privacy_spent(orders, rdp, delta, conversion="improved"):
    """(epsilon, best order) from RDP values at the given orders, for a target delta.

    conversion: "improved" (Balle et al. 2020, Thm. 21, as Opacus) or "classic" (Mironov 2017,
    as TF Privacy's tutorials)."""
    delta = _check_delta(delta)
    if conversion not in _CONVERSIONS:
        raise ValueError(f"conversion must be one of {_CONVERSIONS}, got {conversion!r}")
    orders = _check_orders(orders)
    rdp = np.atleast_1d(np.asarray(rdp, np.float64))
    if rdp.shape != orders.shape:
        raise ValueError(f"orders and rdp need the same length ({orders.size} and {rdp.size})")
    if conversion == "classic":
        eps = rdp - math.log(delta) / (orders - 1)
    else:
        eps = rdp + np.log1p(-1 / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    if np.isnan(eps).all() or np.isinf(eps).all():
        return math.inf, float("nan")
    i = int(np.nanargmin(eps))
    if len(orders) > 1 and (i == 0 or i == len(orders) - 1) and np.isfinite(eps[i]):
        warnings.warn(f"the best RDP order is the {'smallest' if i == 0 else 'largest'} one "
                      f"({orders[i]}); give a wider range of orders for a tighter bound", stacklevel=3)
    return max(0.0, float(eps[i])), float(orders[i])


def compute_epsilon(steps, noise_multiplier, sample_rate, delta, orders=None, conversion="improved",
                    return_order=False):
    """The epsilon of `steps` DP-SGD steps (Poisson sampling rate `sample_rate`, noise
    multiplier `noise_multiplier`) at the given delta, by the RDP accountant.

    E.g. MNIST, 60000 examples, batch 256, 60 epochs: compute_epsilon(ceil(60 * 60000 / 256),
    1.1, 256 / 60000, 1e-5, conversion="classic") = 3.01 (TF Privacy's published figure); the
    default improved conversion gives a smaller, still valid epsilon.
    With return_order=True returns (epsilon, best order)."""
    delta = _check_delta(delta)
    orders = _check_orders(orders)
    rdp = compute_rdp(steps, noise_multiplier, sample_rate, orders)
    if _check_steps(steps) == 0:       # nothing released yet; the conversion's slack is not spent
        return (0.0, float("nan")) if return_order else 0.0
    eps, order = get_privacy_spent(orders, rdp, delta, conversion)
    return (eps, order) if return_order else eps


def get_noise_multiplier(target_epsilon, delta, sample_rate, steps=None, epochs=None, orders=None,
                         conversion="improved", epsilon_tolerance=0.01):
    """The smallest noise multiplier (to within bisection) whose epsilon after the given
    training is <= target_epsilon.

    Give either steps, or epochs (steps = int(epochs / sample_rate), as Opacus counts them).
    The result's epsilon lies in [target_epsilon - epsilon_tolerance, target_epsilon]."""
    target = _check_real("target_epsilon", target_epsilon, lo=0.0, lo_open=True)
    delta = _check_delta(delta)
    q = _check_real("sample_rate", sample_rate, lo=0.0, hi=1.0, lo_open=True)
    tol = _check_real("epsilon_tolerance", epsilon_tolerance, lo=0.0, lo_open=True)
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if steps is None:
        e = _check_real("epochs", epochs, lo=0.0, lo_open=True)
        steps = int(e / q)
    steps = _check_steps(steps)
    orders = _check_orders(orders)

    def eps(sigma):
        return compute_epsilon(steps, sigma, q, delta, orders, conversion)

    lo, hi = 0.0, 10.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # the edge-order warning fires for extreme trial sigmas
        while eps(hi) > target:
            lo, hi = hi, 2 * hi
            if hi > 1e6:
                raise ValueError(f"no noise multiplier up to 1e6 reaches epsilon {target} "
                                 f"(delta {delta}, {steps} steps, sample rate {q})")
        while True:
            mid = (lo + hi) / 2
            e = eps(mid)
            if e > target:
                lo = mid
            else:
                hi = mid
            if target - eps(hi) <= tol or hi - lo < 1e-9:
                return hi


class RDPAccountant:
    """Accumulates RDP over steps that may change noise multiplier or sample rate.

        acc = RDPAccountant()
        acc.step(noise_multiplier=1.1, sample_rate=256 / 60000, steps=235)
        acc.get_epsilon(delta=1e-5)
    """

    def __init__(self, orders=None):
        self.orders = _check_orders(orders)
        self.rdp = np.zeros_like(self.orders)
        self.history = []          # (noise_multiplier, sample_rate, steps)

    def step(self, noise_multiplier, sample_rate, steps=1):
        self.rdp = self.rdp + compute_rdp(steps, noise_multiplier, sample_rate, self.orders)
        self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))
        return self

    def get_epsilon(self, delta, conversion="improved"):
        return get_privacy_spent(self.orders, self.rdp, delta, conversion)[0]

    def get_privacy_spent(self, delta, conversion="improved"):
        return get_privacy_spent(self.orders, self.rdp, delta, conversion)
