"""Differential privacy: DP-SGD (kilnet.privacy.dpsgd) and its RDP accountant
(kilnet.privacy.accountant).

DPSGD / DPAdam / make_private(optimizer, l2_norm_clip, noise_multiplier) train with per-example
clipping and Gaussian noise under fit (Poisson batches, "epsilon" in History); the accountant
tells what a given training run costs in (epsilon, delta); the PrivacyAccountant callback
writes it into History as "epsilon" after every epoch for any run described by its parameters.
"""
from kilnet.privacy.accountant import (DEFAULT_ORDERS, RDPAccountant, compute_epsilon,
                                       compute_rdp, get_noise_multiplier, get_privacy_spent)
from kilnet.privacy.callback import PrivacyAccountant
from kilnet.privacy.dpsgd import DPAdam, DPOptimizer, DPSGD, make_private

__all__ = ["DEFAULT_ORDERS", "DPAdam", "DPOptimizer", "DPSGD", "PrivacyAccountant", "RDPAccountant",
           "compute_epsilon", "compute_rdp", "get_noise_multiplier", "get_privacy_spent", "make_private"]
