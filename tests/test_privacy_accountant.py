"""The RDP accountant of the sampled Gaussian mechanism against published epsilons."""
import math
import warnings

import numpy as np
import pytest

from kilnet import privacy
from kilnet.privacy import (RDPAccountant, compute_epsilon, compute_rdp, get_noise_multiplier,
                            get_privacy_spent)

MNIST_Q = 256 / 60000


def _tf_steps(epochs):     # TF Privacy's compute_dp_sgd_privacy: ceil(epochs * n / batch_size)
    return math.ceil(epochs * 60000 / 256)


# TF Privacy tutorials/README.md (MNIST, 60000 examples, batch 256, delta 1e-5, classic conversion):
# the "Select Parameters" table and the expected output of the default run (noise 1.1).
@pytest.mark.parametrize("noise, epochs, published", [
    (1.1, 60, 3.01), (1.3, 15, 1.19), (0.7, 45, 7.10), (1.1, 1, 1.03), (1.1, 2, 1.11)])
def test_tf_privacy_published_epsilons(noise, epochs, published):
    eps = compute_epsilon(_tf_steps(epochs), noise, MNIST_Q, 1e-5, conversion="classic")
    assert round(eps, 2) == published, eps


def test_opacus_mnist_readme_first_epoch():
    # Opacus examples/mnist_README.md: sigma 1.3, sample rate 0.004 (240 steps an epoch):
    # "Train Epoch: 1 ... (eps = 0.71, delta = 1e-05) for alpha = 18.0"
    eps, order = compute_epsilon(240, 1.3, 0.004, 1e-5, conversion="classic", return_order=True)
    assert round(eps, 2) == 0.71 and order == 18.0


def test_opacus_rdp_docstring_example():
    # Opacus accountants/analysis/rdp.py (improved conversion): (0.336, 23)
    orders = range(2, 33)
    rdp = compute_rdp(10, 1.0, 1e-5, orders) + compute_rdp(4, 3.0, 1e-4, orders)
    eps, order = get_privacy_spent(orders, rdp, 1e-5)
    assert round(eps, 3) == 0.336 and order == 23


def test_improved_conversion_is_tighter():
    steps = _tf_steps(60)
    classic = compute_epsilon(steps, 1.1, MNIST_Q, 1e-5, conversion="classic")
    improved = compute_epsilon(steps, 1.1, MNIST_Q, 1e-5)
    assert improved < classic
    assert round(improved, 2) == 2.60     # what Opacus' RDP accountant reports for the same run


def test_integer_and_fractional_orders_agree_nearby():
    # the fractional series at alpha = k +- 1e-6 meets the integer closed form at k
    for a in (2, 3, 7, 20):
        exact = compute_rdp(1, 1.1, 0.01, [a])[0]
        near = compute_rdp(1, 1.1, 0.01, [a + 1e-6, a - 1e-6])
        np.testing.assert_allclose(near, exact, rtol=1e-4)


def test_special_cases():
    assert (compute_rdp(5, 1.0, 1.0, [2, 3.5]) == 5 * np.array([2, 3.5]) / 2).all()   # Gaussian
    assert np.isinf(compute_rdp(1, 0.0, 0.1, [2])).all()
    assert compute_epsilon(0, 1.0, 0.1, 1e-5) == 0.0
    assert compute_epsilon(10, 0.0, 0.1, 1e-5) == math.inf
    # more steps, more epsilon; more noise, less
    assert compute_epsilon(200, 1.0, 0.01, 1e-5) > compute_epsilon(100, 1.0, 0.01, 1e-5)
    assert compute_epsilon(100, 2.0, 0.01, 1e-5) < compute_epsilon(100, 1.0, 0.01, 1e-5)


def test_get_noise_multiplier_round_trip():
    sigma = get_noise_multiplier(3.0, 1e-5, 0.004, epochs=60)
    eps = compute_epsilon(int(60 / 0.004), sigma, 0.004, 1e-5)
    assert 2.99 <= eps <= 3.0
    assert compute_epsilon(int(60 / 0.004), sigma * 0.98, 0.004, 1e-5) > 3.0
    assert get_noise_multiplier(3.0, 1e-5, 0.004, steps=15000) == sigma


def test_accountant_composes():
    acc = RDPAccountant()
    for _ in range(3):
        acc.step(1.1, MNIST_Q, steps=100)
    assert acc.get_epsilon(1e-5) == pytest.approx(compute_epsilon(300, 1.1, MNIST_Q, 1e-5))
    acc.step(2.0, 0.01, steps=50)
    assert acc.get_epsilon(1e-5) > compute_epsilon(300, 1.1, MNIST_Q, 1e-5)


@pytest.mark.parametrize("kw, match", [
    (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"), (dict(delta=-1e-5), "delta"),
    (dict(noise_multiplier=-0.5), "noise_multiplier"), (dict(sample_rate=0.0), "sample_rate"),
    (dict(sample_rate=1.5), "sample_rate"), (dict(steps=-1), "steps"),
    (dict(orders=[1.0, 2.0]), "order"), (dict(noise_multiplier=float("nan")), "NaN")])
def test_bad_input(kw, match):
    args = dict(steps=10, noise_multiplier=1.0, sample_rate=0.01, delta=1e-5)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        compute_epsilon(**args)


def test_bad_input_other_entry_points():
    with pytest.raises(ValueError, match="conversion"):
        compute_epsilon(10, 1.0, 0.01, 1e-5, conversion="tight")
    with pytest.raises(ValueError, match="exactly one"):
        get_noise_multiplier(1.0, 1e-5, 0.01)
    with pytest.raises(ValueError, match="target_epsilon"):
        get_noise_multiplier(0.0, 1e-5, 0.01, steps=10)
    with pytest.raises(ValueError, match="same length"):
        get_privacy_spent([2, 3], [0.1], 1e-5)
    with pytest.raises(TypeError, match="steps"):
        compute_rdp(2.5, 1.0, 0.1)


def test_against_opacus():
    rdp_mod = pytest.importorskip("opacus.accountants.analysis.rdp")
    orders = list(privacy.DEFAULT_ORDERS)
    for q, sigma, steps in [(0.01, 1.0, 1000), (MNIST_Q, 1.1, 14063), (0.3, 0.6, 50), (0.5, 5.0, 10)]:
        ours = compute_rdp(steps, sigma, q)
        theirs = rdp_mod.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
        np.testing.assert_allclose(ours, theirs, rtol=1e-7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eps, order = rdp_mod.get_privacy_spent(orders=orders, rdp=theirs, delta=1e-5)
            assert compute_epsilon(steps, sigma, q, 1e-5, return_order=True) == pytest.approx((eps, order), rel=1e-9)
    from opacus.accountants.utils import get_noise_multiplier as opacus_gnm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = opacus_gnm(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.004, epochs=60, accountant="rdp")
    assert get_noise_multiplier(3.0, 1e-5, 0.004, epochs=60) == pytest.approx(theirs, abs=0.01)


def test_privacy_accountant_callback_writes_history():
    from kilnet.layers import Dense
    from kilnet.models import Sequential
    from kilnet.utils import set_random_seed
    set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    m = Sequential([Dense(2, activation="softmax", input_shape=(3,))])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    cb = privacy.PrivacyAccountant(noise_multiplier=1.1, sample_rate=0.1, delta=1e-5)
    h = m.fit(x, y, batch_size=10, epochs=3, verbose=0, callbacks=[cb])
    eps = h.history["epsilon"]
    assert len(eps) == 3 and eps[0] < eps[1] < eps[2]
    assert eps[2] == pytest.approx(compute_epsilon(30, 1.1, 0.1, 1e-5))
    m.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[cb])     # privacy spent accumulates
    assert cb.steps == 40 and cb.epsilon == pytest.approx(compute_epsilon(40, 1.1, 0.1, 1e-5))
    with pytest.raises(ValueError, match="delta"):
        privacy.PrivacyAccountant(1.0, 0.1, delta=2.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        privacy.PrivacyAccountant(-1.0, 0.1, delta=1e-5)
