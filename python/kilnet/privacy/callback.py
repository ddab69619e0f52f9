"""A callback that writes the privacy spent so far into the epoch logs (and so into History)."""
from __future__ import annotations

from kilnet.callbacks import Callback
from kilnet.privacy.accountant import _check_delta, _check_orders, compute_rdp, get_privacy_spent

__all__ = ["PrivacyAccountant"]


class PrivacyAccountant(Callback):
    """logs["epsilon"] after every epoch: the epsilon at `delta` of all the training steps this
    callback has seen (across fit calls: privacy spent accumulates), each one a sampled
    Gaussian mechanism with the given noise multiplier and sampling rate.

    It only counts: the figure is a guarantee when the steps are DP-SGD steps with these
    parameters (per-example clipping, noise std noise_multiplier * clip, Poisson sampling at
    sample_rate), not for plain training."""

    def __init__(self, noise_multiplier, sample_rate, delta, conversion="improved", orders=None,
                 key="epsilon"):
        super().__init__()
        self.orders = _check_orders(orders)
        self._rdp_step = compute_rdp(1, noise_multiplier, sample_rate, self.orders)   # checks both
        self.delta = _check_delta(delta)
        get_privacy_spent(self.orders, self._rdp_step, self.delta, conversion)       # checks conversion
        self.conversion, self.key = conversion, key
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    @property
    def epsilon(self):
        if self.steps == 0:
            return 0.0
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_privacy_spent(self.orders, self._rdp_step * self.steps, self.delta, self.conversion)[0]

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.key] = self.epsilon
