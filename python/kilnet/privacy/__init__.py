"""Differential privacy: the RDP accountant of DP-SGD (kilnet.privacy.accountant).

The DP-SGD optimizer wrapper (per-example clipping and noise) lands separately; the accountant
here tells what a given training run costs in (epsilon, delta).
"""
from kilnet.privacy.accountant import (DEFAULT_ORDERS, RDPAccountant, compute_epsilon,
                                       compute_rdp, get_noise_multiplier, get_privacy_spent)

__all__ = ["DEFAULT_ORDERS", "RDPAccountant", "compute_epsilon", "compute_rdp",
           "get_noise_multiplier", "get_privacy_spent"]
