"""Benchmark: GFRE / GFRD / LFRE of mlipspace against scikit-matter, side by side in one process.

Default run (the issue's setting): correlated features, 20,000 rows, X 128 -> Y 256 columns,
1,000 test rows (all others train), k = 128. Prints values, times, |difference| and speed ratios
for exact mode (values equal to scikit-matter) and fast mode (float32 Gram engine; torch's
one-time import is done before the timings).

    python benchmarks/bench_metrics.py                 # the comparison (needs scikit-matter)
    python benchmarks/bench_metrics.py --scale         # + LFRE 10k test vs 200k train, GFRE 10^6 x 256
    python benchmarks/bench_metrics.py --small         # quick smoke run (2,000 rows, 200 test)
    python benchmarks/bench_metrics.py --engines       # + our previous engines, same run (new vs old)
    python benchmarks/bench_metrics.py --repeat 3      # every timing the best of 3 calls (less noise)

Scale runs execute in a child process each, so their peak memory (ru_maxrss) is reported alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def correlated(n: int, d_x: int, d_y: int, seed: int = 0, latent: int = 48):
    """Two feature spaces driven by one latent factor set: X linear + noise, Y nonlinear + noise."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, latent))
    X = Z @ rng.standard_normal((latent, d_x)) / np.sqrt(latent) + 0.3 * rng.standard_normal((n, d_x))
    Y = np.tanh(Z @ rng.standard_normal((latent, d_y)) / np.sqrt(latent)) + 0.1 * rng.standard_normal((n, d_y))
    return X, Y


CPU: dict = {}


def cpu_seconds() -> float:
    """CPU time of this process and all its children (scikit-matter's joblib workers included).

    On a shared machine wall time depends on the other users; CPU time measures the work done."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def timed(f, *a, _repeat: int = 1, **kw):
    """(value, wall seconds) of ``f(*a, **kw)``, the best of ``_repeat`` calls (the least disturbed
    by other users of the machine); the CPU seconds of the best call go to CPU["last"]."""
    best = (float("inf"), float("inf"))
    for _ in range(max(1, _repeat)):
        c = cpu_seconds()
        t = time.perf_counter()
        v = f(*a, **kw)
        t = time.perf_counter() - t
        best = min(best, (t, cpu_seconds() - c))
    CPU["last"] = best[1]
    return v, best[0]


def compare(n: int, d_x: int, d_y: int, n_test: int, k: int, n_jobs: int, device: str,
            engines: bool = False, repeat: int = 1) -> dict:
    """Ours and scikit-matter side by side; every timing is the best of ``repeat`` calls."""
    timed = functools.partial(globals()["timed"], _repeat=repeat)
    import scipy.linalg.lapack  # noqa: F401  (warm imports so that no timing includes them)
    import threadpoolctl  # noqa: F401

    t_imp = time.perf_counter()
    try:  # fast mode's eigensolver when installed (a one-time import per process, not timed below)
        import torch  # noqa: F401

        print(f"torch imported in {time.perf_counter() - t_imp:.2f} s (fast LFRE's eigensolver; not timed)")
    except ImportError:
        print("torch not installed: fast LFRE uses NumPy's eigensolver")

    from mlipspace.metrics import gfrd, gfre, pointwise_lfre, rms

    X, Y = correlated(n, d_x, d_y)
    rng = np.random.default_rng(1)
    test = np.sort(rng.choice(n, n_test, replace=False))
    train = np.setdiff1d(np.arange(n), test)
    print(f"data: {n} rows, X {d_x} -> Y {d_y} columns, {n_test} test rows, k = {k}, "
          f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}, best of {repeat} run(s) each",
          flush=True)
    res: dict = {}
    try:
        import skmatter.metrics as skm
    except ImportError:
        skm = None
        print("scikit-matter not importable: timing ours only")

    cpu: dict = {}
    ours_g, t_g = timed(gfre, X, Y, train_idx=train, test_idx=test)
    cpu["ours gfre"] = CPU["last"]
    ours_d, t_d = timed(gfrd, X, Y, train_idx=train, test_idx=test)
    cpu["ours gfrd"] = CPU["last"]
    pw_exact, t_l = timed(pointwise_lfre, X, Y, k=k, train_idx=train, test_idx=test, device=device, mode="exact")
    cpu["ours lfre"] = CPU["last"]
    pw_fast, t_f = timed(pointwise_lfre, X, Y, k=k, train_idx=train, test_idx=test, device=device, mode="fast")
    cpu["ours lfre_fast"] = CPU["last"]
    res["ours"] = {"gfre": [ours_g, t_g], "gfrd": [ours_d, t_d], "lfre": [rms(pw_exact), t_l],
                   "lfre_fast": [rms(pw_fast), t_f]}
    if engines:  # the previous engines (TSQR GFRE, three SVDs per LFRE row, two float64 kNN passes)
        from mlipspace.metrics import config_context

        with config_context(engine="svd", knn_precision="float64"):
            old_g, to_g = timed(gfre, X, Y, train_idx=train, test_idx=test)
            cpu["old gfre"] = CPU["last"]
            pw_old, to_l = timed(pointwise_lfre, X, Y, k=k, train_idx=train, test_idx=test, device=device, mode="exact")
            cpu["old lfre"] = CPU["last"]
        res["old"] = {"gfre": [old_g, to_g], "lfre": [rms(pw_old), to_l]}
        print("\nnew vs previous engines (TSQR GFRE; 3 SVDs per LFRE row, float64 two-pass kNN):")
        for key, new_t in (("gfre", t_g), ("lfre", t_l)):
            v, t = res["old"][key]
            print(f"  {key}: previous {t:.2f} s wall / {cpu['old ' + key]:.2f} s cpu, new {new_t:.2f} s / "
                  f"{cpu['ours ' + key]:.2f} s: {t / new_t:.2f}x wall, {cpu['old ' + key] / max(cpu['ours ' + key], 1e-9):.2f}x cpu"
                  f" (|value diff| {abs(v - res['ours'][key][0]):.1e})")
    res["fast_max_pointwise_dev"] = float(np.max(np.abs(pw_fast - pw_exact)))
    res["fast_value_dev"] = abs(rms(pw_fast) - rms(pw_exact))
    if skm is not None:
        from threadpoolctl import threadpool_limits

        # scikit-matter's global measures run in this process with threaded BLAS; on a busy 2-core
        # machine that can be slower than one thread, so time both and compare with the faster one
        sk_g, ts_g = timed(skm.global_reconstruction_error, X, Y, train_idx=train, test_idx=test)
        cg = CPU["last"]
        sk_d, ts_d = timed(skm.global_reconstruction_distortion, X, Y, train_idx=train, test_idx=test)
        cd = CPU["last"]
        with threadpool_limits(limits=1):
            ts_g1 = timed(skm.global_reconstruction_error, X, Y, train_idx=train, test_idx=test)[1]
            cpu["skmatter gfre"] = min(cg, CPU["last"])
            ts_d1 = timed(skm.global_reconstruction_distortion, X, Y, train_idx=train, test_idx=test)[1]
            cpu["skmatter gfrd"] = min(cd, CPU["last"])
        print(f"scikit-matter GFRE {ts_g:.2f} s (default BLAS threads) / {ts_g1:.2f} s (1 thread); "
              f"GFRD {ts_d:.2f} / {ts_d1:.2f} s: the faster one is used below")
        ts_g, ts_d = min(ts_g, ts_g1), min(ts_d, ts_d1)
        sk_pw, ts_l = timed(skm.pointwise_local_reconstruction_error, X, Y, k, train_idx=train, test_idx=test,
                            n_jobs=n_jobs)
        cpu["skmatter lfre"] = CPU["last"]
        res["skmatter"] = {"gfre": [sk_g, ts_g], "gfrd": [sk_d, ts_d], "lfre": [rms(sk_pw), ts_l]}
        res["exact_max_pointwise_dev_lfre"] = float(np.max(np.abs(pw_exact - sk_pw)))

    res["cpu"] = cpu
    print(f"\n{'measure':<11}{'ours':>14}{'wall s':>8}{'cpu s':>8}{'skmatter':>14}{'wall s':>8}{'cpu s':>8}"
          f"{'|diff|':>10}{'wall x':>8}{'cpu x':>8}")
    for key, sk_key in (("gfre", "gfre"), ("gfrd", "gfrd"), ("lfre", "lfre"), ("lfre_fast", "lfre")):
        v, t = res["ours"][key]
        c = cpu[f"ours {key}"]
        line = f"{key:<11}{v:>14.10f}{t:>8.2f}{c:>8.2f}"
        if "skmatter" in res:
            sv, st = res["skmatter"][sk_key]
            sc = cpu[f"skmatter {sk_key}"]
            cx = sc / c if c > 0 else float("nan")  # CPU clock granularity on tiny runs
            line += f"{sv:>14.10f}{st:>8.2f}{sc:>8.2f}{abs(v - sv):>10.1e}{st / t:>7.1f}x{cx:>7.1f}x"
        print(line)
    print("(wall x: ratio of wall times; cpu x: ratio of CPU seconds incl. worker processes, robust to"
          " other users of the machine)")
    print(f"\nfast mode vs exact: max |pointwise diff| {res['fast_max_pointwise_dev']:.2e}, "
          f"|LFRE diff| {res['fast_value_dev']:.2e}")
    if "skmatter" in res:
        print(f"exact LFRE vs scikit-matter: max |pointwise diff| {res['exact_max_pointwise_dev_lfre']:.2e}")
    return res


def scale_lfre(n_train: int, n_test: int, d_x: int, d_y: int, k: int, device: str) -> dict:
    from mlipspace.metrics import lfre

    X, Y = correlated(n_train + n_test, d_x, d_y, seed=3)
    test = np.arange(n_train, n_train + n_test)
    v, t = timed(lfre, X, Y, k=k, test_idx=test, device=device)
    return {"what": f"LFRE {n_test} test vs {n_train} train, {d_x}->{d_y}, k={k}", "value": v, "seconds": t}


class _Chunks:
    """Re-iterable chunk source generating rows on the fly (nothing of size n x d ever exists)."""

    def __init__(self, n, d, which, step=50_000):
        self.n, self.d, self.which, self.step = n, d, which, step

    def __iter__(self):
        for a in range(0, self.n, self.step):
            m = min(self.step, self.n - a)
            rng = np.random.default_rng([7, a])
            Z = rng.standard_normal((m, 32))
            W = np.random.default_rng([8, self.which]).standard_normal((32, self.d)) / np.sqrt(32)
            noise = np.random.default_rng([9, self.which, a]).standard_normal((m, self.d))
            base = Z @ W
            yield (base if self.which == 0 else np.tanh(base)) + 0.3 * noise


def scale_gfre(n: int, d: int) -> dict:
    from mlipspace.metrics import gfre

    test = np.arange(0, n, 100)  # 1 % test rows
    v, t = timed(gfre, _Chunks(n, d, 0), _Chunks(n, d, 1), test_idx=test, chunk_size=32768)
    return {"what": f"GFRE streamed {n} rows x {d} -> {d}", "value": v, "seconds": t}


def run_child(args: list[str]) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-3000:])
        raise SystemExit(f"child {args} failed")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="2,000 rows, 200 test rows, k = 64 (smoke run)")
    p.add_argument("--scale", action="store_true", help="also the large LFRE and streamed GFRE runs")
    p.add_argument("--device", default="cpu", help="LFRE device for our code: cpu, cuda or auto")
    p.add_argument("--n-jobs", type=int, default=2, help="scikit-matter LFRE workers")
    p.add_argument("--engines", action="store_true",
                   help="also time our previous engines (TSQR GFRE, SVD LFRE, float64 kNN) in the same run")
    p.add_argument("--repeat", type=int, default=1,
                   help="time every call this many times and keep the best (ours and scikit-matter alike)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child == "lfre":
        print(json.dumps(scale_lfre(200_000, 10_000, 128, 256, 128, a.device)))
        return
    if a.child == "gfre":
        print(json.dumps(scale_gfre(1_000_000, 256)))
        return
    if a.small:
        compare(2_000, 32, 64, 200, 32, a.n_jobs, a.device, a.engines, a.repeat)
    else:
        compare(20_000, 128, 256, 1_000, 128, a.n_jobs, a.device, a.engines, a.repeat)
    if a.scale:
        print("\nscale runs (each in a child process; peak RSS of the largest child so far):")
        for child in ("gfre", "lfre"):
            r = run_child(["--child", child, "--device", a.device])
            print(f"  {r['what']}: value {r['value']:.6f}, {r['seconds']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB",
                  flush=True)


if __name__ == "__main__":
    main()
