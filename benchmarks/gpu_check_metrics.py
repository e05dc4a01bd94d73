"""One-shot GPU check of the LFRE torch/CUDA path: parity with the CPU exact path and speed-ups.

Self-contained: needs numpy and torch (CUDA); scikit-matter is optional (its comparison is skipped
when it cannot be imported). Runs from the repository root without installing mlipspace (``src/``
is put on ``sys.path``). Designed to finish in well under 4 minutes on one GPU:

    python benchmarks/gpu_check_metrics.py                   # on the GPU machine
    python benchmarks/gpu_check_metrics.py --device cpu --small   # CPU fallback (tests the script)

What it does (correlated features, X 128 -> Y 256, 20,000 rows, k = 128):
1. CPU exact LFRE (NumPy) on ``--n-test`` (300) test rows: the reference values and time;
2. device exact LFRE on the same rows: max |pointwise diff| vs CPU (must be <= 1e-8), time;
   also with each SVD choice of ``svd_driver`` (``mlipspace.metrics.config_context``) when on CUDA
   (cuSOLVER gesvd, gesvdj, gesvda; our batched Jacobi, plain and eigh-preconditioned);
3. device fast mode (Gram eigh): deviation and time;
4. scikit-matter LFRE (n_jobs = ``--sk-jobs``) on the same rows, if importable: time and parity;
5. device exact LFRE on 1,000 and (if the time budget allows) 10,000 test rows vs 200,000 train.
Exit status 1 when the device exact values differ from the CPU exact values by more than 1e-8.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TOL = 1e-8


def correlated(n: int, d_x: int, d_y: int, seed: int = 0, latent: int = 48):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, latent))
    X = Z @ rng.standard_normal((latent, d_x)) / np.sqrt(latent) + 0.3 * rng.standard_normal((n, d_x))
    Y = np.tanh(Z @ rng.standard_normal((latent, d_y)) / np.sqrt(latent)) + 0.1 * rng.standard_normal((n, d_y))
    return X, Y


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(sync_dev, f, *a, **kw):
    sync(sync_dev)
    t = time.perf_counter()
    v = f(*a, **kw)
    sync(sync_dev)
    return v, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (runs the torch code on the CPU)")
    p.add_argument("--small", action="store_true", help="tiny sizes (2,000 rows, 32 -> 64, k = 32, 60 test rows)")
    p.add_argument("--n-test", type=int, default=300, help="test rows of the parity / skmatter comparison")
    p.add_argument("--sk-jobs", type=int, default=2, help="scikit-matter LFRE workers")
    p.add_argument("--budget", type=float, default=200.0, help="seconds after which optional steps are skipped")
    a = p.parse_args()
    t_start = time.perf_counter()

    import torch

    from mlipspace.metrics import set_config
    from mlipspace.metrics import pointwise_lfre, rms

    dev = a.device
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            print("FAIL: --device cuda but torch.cuda.is_available() is False")
            return 1
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
        ours_dev = dev
    else:
        print(f"device: CPU fallback (torch {torch.__version__} on the CPU exercises the same torch code)")
        ours_dev = "torch-cpu"
    print(f"CPU cores: {len(os.sched_getaffinity(0))}")

    if a.small:
        n, dx, dy, k, n_test = 2_000, 32, 64, 32, min(a.n_test, 60)
    else:
        n, dx, dy, k, n_test = 20_000, 128, 256, 128, a.n_test
    X, Y = correlated(n, dx, dy)
    test = np.sort(np.random.default_rng(1).choice(n, n_test, replace=False))
    train = np.setdiff1d(np.arange(n), test)
    print(f"data: {n} rows, X {dx} -> Y {dy}, k = {k}, {n_test} test rows")

    ok = True
    cpu_pw, t_cpu = timed("cpu", pointwise_lfre, X, Y, k=k, train_idx=train, test_idx=test, device="cpu")
    print(f"[cpu  exact ] LFRE {rms(cpu_pw):.10f}  {t_cpu:8.3f} s  (NumPy, batched LAPACK)")

    # warm-up: CUDA context, cuSOLVER/cuBLAS handles, kernels
    pointwise_lfre(X, Y, k=k, train_idx=train, test_idx=test[:8], device=ours_dev)
    dev_pw, t_dev = timed(dev, pointwise_lfre, X, Y, k=k, train_idx=train, test_idx=test, device=ours_dev)
    diff = float(np.max(np.abs(dev_pw - cpu_pw)))
    status = "OK" if diff <= TOL else "FAIL"
    ok &= diff <= TOL
    print(f"[{'dev':<4} exact ] LFRE {rms(dev_pw):.10f}  {t_dev:8.3f} s  max|diff| vs CPU {diff:.2e} {status}  "
          f"speed-up vs our CPU {t_cpu / t_dev:.1f}x")

    driver_times = {"default": t_dev}
    if dev.startswith("cuda"):
        for driver in ("gesvd", "gesvdj", "gesvda", "jacobi", "jacobi-eigh"):
            set_config(svd_driver=driver)
            try:
                pointwise_lfre(X, Y, k=k, train_idx=train, test_idx=test[:8], device=ours_dev)
                pw, t = timed(dev, pointwise_lfre, X, Y, k=k, train_idx=train, test_idx=test, device=ours_dev)
                d = float(np.max(np.abs(pw - cpu_pw)))
                if d <= TOL:
                    driver_times[driver] = t
                print(f"[cuda {driver:<11}] LFRE {rms(pw):.10f}  {t:8.3f} s  max|diff| vs CPU {d:.2e} "
                      f"{'OK' if d <= TOL else 'DIFFERS'}")
            except Exception as exc:  # a driver may not support these shapes
                print(f"[cuda {driver:<11}] failed: {type(exc).__name__}: {str(exc)[:120]}")
            finally:
                set_config(svd_driver=None)

    fast_pw, t_fast = timed(dev, pointwise_lfre, X, Y, k=k, train_idx=train, test_idx=test, device=ours_dev, mode="fast")
    print(f"[dev  fast  ] LFRE {rms(fast_pw):.10f}  {t_fast:8.3f} s  max|diff| vs exact {np.max(np.abs(fast_pw - cpu_pw)):.2e}"
          f"  speed-up vs our CPU exact {t_cpu / t_fast:.1f}x")

    try:
        import skmatter.metrics as skm
    except ImportError:
        skm = None
        print("[skmatter   ] not importable: comparison skipped")
    if skm is not None:
        sk_pw, t_sk = timed("cpu", skm.pointwise_local_reconstruction_error, X, Y, k, train_idx=train,
                            test_idx=test, n_jobs=a.sk_jobs)
        d = float(np.max(np.abs(sk_pw - cpu_pw)))
        print(f"[skmatter   ] LFRE {rms(sk_pw):.10f}  {t_sk:8.3f} s  (n_jobs={a.sk_jobs}) max|diff| vs ours {d:.2e}")
        print(f"RATIOS vs scikit-matter: device exact {t_sk / t_dev:.1f}x, device fast {t_sk / t_fast:.1f}x, "
              f"our CPU exact {t_sk / t_cpu:.1f}x")
        best = min(driver_times, key=driver_times.get)
        print("RATIOS vs scikit-matter per exact SVD choice: "
              + ", ".join(f"{k} {t_sk / v:.1f}x" for k, v in driver_times.items()) + f"  (best: {best})")

    best = min(driver_times, key=driver_times.get)
    set_config(svd_driver=None if best == "default" else best)
    if not a.small and time.perf_counter() - t_start < a.budget:
        print(f"larger runs use the fastest exact SVD choice: {best}")
        test2 = np.sort(np.random.default_rng(2).choice(n, 1000, replace=False))
        train2 = np.setdiff1d(np.arange(n), test2)
        pw, t = timed(dev, pointwise_lfre, X, Y, k=k, train_idx=train2, test_idx=test2, device=ours_dev)
        print(f"[dev  exact ] 1,000 test rows vs {train2.size} train: {t:.3f} s ({t / 1000 * 1e3:.2f} ms/row)")
        est = t * 10 * 1.3
        if time.perf_counter() - t_start + est + 20 < a.budget:
            X3, Y3 = correlated(210_000, dx, dy, seed=3)
            test3 = np.arange(200_000, 210_000)
            pw, t = timed(dev, pointwise_lfre, X3, Y3, k=k, train_idx=None, test_idx=test3, device=ours_dev)
            print(f"[dev  exact ] 10,000 test rows vs 200,000 train: LFRE {rms(pw):.6f}, {t:.1f} s")
        else:
            print(f"[dev  exact ] 10,000 x 200,000 skipped (estimated {est:.0f} s exceeds the budget)")
    print(f"total {time.perf_counter() - t_start:.1f} s; parity {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
