"""Differential privacy: the RDP accountant of DP-SGD (kilnet.privacy.accountant).

The DP-SGD optimizer wrapper (per-example clipping and noise) lands separately; the accountant
here tells what a given training run costs in (epsilon, delta); the PrivacyAccountant callback
writes it into History as "epsilon" after every epoch.
"""
from kilnet.privacy.accountant import (DEFAULT_ORDERS, RDPAccountant, compute_epsilon,
                                       compute_rdp, get_noise_multiplier, get_privacy_spent)
from kilnet.privacy.callback import PrivacyAccountant

__all__ = ["DEFAULT_ORDERS", "PrivacyAccountant", "RDPAccountant", "compute_epsilon", "compute_rdp",
           "get_noise_multiplier", "get_privacy_spent"]
