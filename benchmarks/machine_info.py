"""Shared by every script in benchmarks/: the machine line of the header (CPU model, cores, SIMD
flags, load average) and the FMA peak that every "% of peak" is computed against.

The peak is always measured, at the start of the run, with kilnet._cpu.fma_peak_gflops(threads,
seconds, simd) at the SIMD level whose kernels the script times (the level in use,
kilnet.simd_level(); KILNET_SIMD=avx2|scalar lowers it) — never a clock-rate formula: the
machines differ (AVX-512 or not, one or two FMA ports, turbo), and a constant would silently
misstate every percentage on the next one.

kilnet is imported lazily, so the header also works in an environment without kilnet
(accuracy_seeds.py --library keras)."""
from __future__ import annotations

import os
import platform

# The flags the header reports, in this order: which kernels this CPU could run.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16",
              "amx_tile", "amx_bf16")


def _cpuinfo_field(name):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    """/proc/cpuinfo's "model name" (else what platform knows)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def simd_flags():
    """The SIMD flags of SIMD_FLAGS this CPU reports (/proc/cpuinfo "flags"), as a list; None
    when unknown (no /proc/cpuinfo)."""
    flags = _cpuinfo_field("flags")
    if flags is None:
        return None
    have = set(flags.split())
    return [f for f in SIMD_FLAGS if f in have]


def simd_levels():
    """(level in use, machine's best level) from kilnet, or (None, None) without kilnet."""
    try:
        from kilnet import _cpu
    except ImportError:
        return None, None
    return _cpu.simd_level(), _cpu.machine_simd_level()


def machine():
    """One line: CPU model, logical cores, SIMD flags, kilnet's SIMD level, Python, load average."""
    flags = simd_flags()
    used, best = simd_levels()
    shown = "unknown" if flags is None else " ".join(flags) or "none"
    parts = [cpu_model(), f"{os.cpu_count()} logical cores ({platform.machine()})", f"SIMD flags: {shown}"]
    if used is not None:
        parts.append(f"kilnet kernels {used}" + ("" if used == best else f" (machine best {best}, lowered by KILNET_SIMD)"))
    parts.append(f"Python {platform.python_version()}")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f} at start")
    return "; ".join(parts)


LEVELS = ("scalar", "avx2", "avx512")


def fma_peak(threads, simd=None, seconds=0.02, probes=10):
    """Measured FMA peak in GFLOP/s over `threads` threads at SIMD level `simd` (default: the
    level in use, whose kernels are timed). The best of `probes` short probes: on a shared
    machine a probe that lost its core for a while understates the peak and inflates "% of
    peak" (one 0.2 s probe read 64 GFLOP/s for AVX2 where ten of 0.02 s read 132), just as the
    benchmarks time many short calls and keep the median.
    A level above the one in use (KILNET_SIMD lowered it; the peers, numpy and torch, still run
    the machine's best) is probed in a child process without KILNET_SIMD."""
    from kilnet import _cpu
    level = simd or _cpu.simd_level()
    if LEVELS.index(level) > LEVELS.index(_cpu.simd_level()):
        import subprocess
        import sys
        env = {k: v for k, v in os.environ.items() if k != "KILNET_SIMD"}
        code = ("from kilnet import _cpu; print(max(_cpu.fma_peak_gflops(%d, %r, %r) for _ in range(%d)))"
                % (int(threads), seconds, level, max(1, probes)))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])
    return max(_cpu.fma_peak_gflops(int(threads), seconds, level) for _ in range(max(1, probes)))


def peaks(threads_list, simd=None, seconds=0.02, probes=10):
    """{threads: measured peak GFLOP/s} for each thread count, at the level in use (about
    seconds x probes each)."""
    return {int(t): fma_peak(t, simd, seconds, probes) for t in dict.fromkeys(threads_list)}


def peak_line(peak_by_threads, simd=None):
    """The header line that says what "% peak" divides by."""
    if simd is None:
        from kilnet import _cpu
        simd = _cpu.simd_level()
    each = ", ".join(f"{t} thread{'s' if t != 1 else ''} {g:.1f}" for t, g in sorted(peak_by_threads.items()))
    return (f"measured FMA peak ({simd}, kilnet._cpu.fma_peak_gflops at the start of this run): "
            f"{each} GFLOP/s")


def pct(gflops, peak):
    """gflops as a percentage of peak (a string, "-" without a peak)."""
    return f"{100.0 * gflops / peak:.0f}" if peak and peak > 0 else "-"
