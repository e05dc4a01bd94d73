"""One-shot GPU check: exact LFRE with the torch Gram engine vs scikit-matter, and extraction
throughput of the bundled models on the GPU vs the CPU.

Runs from the repository root without installing mlipspace (``src/`` is put on ``sys.path``);
scikit-matter is optional. On a machine without CUDA it says so, skips the CUDA parts and runs the
same torch code on the CPU (``device="torch-cpu"``), so the script itself is tested anywhere:

    python benchmarks/gpu_check_metrics.py              # GPU machine: the benchmark size
    python benchmarks/gpu_check_metrics.py --small      # tiny sizes, e.g. on a CPU-only machine

1. LFRE (correlated features, 20,000 rows, X 128 -> Y 256, 1,000 test rows, k = 128): our CPU
   exact path (NumPy Gram engine), the device exact path with the torch Gram engine
   (``engine="gram"``, the default) and with the SVD path (``engine="svd"``), scikit-matter on
   the same rows (``n_jobs=--sk-jobs``). Prints times, fallback rows, parity (device Gram vs
   scikit-matter <= 1e-8, vs our CPU <= 1e-10) and the ratios.
2. Extraction (``Extractor.extract(frames, layers="all")``, frames of ``bench_extract.load_frames``)
   of every available bundled model (or ``--models``) on the device and on the CPU: atoms/s, ratio.
Exit status 1 when a parity check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TOL_SKM = 1e-8
TOL_CPU = 1e-10


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


def lfre_run(X, Y, k, train, test, device, engine):
    """(pointwise LFRE, seconds, fallback rows, Gram-certified batches) through LocalProblem."""
    from mlipspace.metrics import reconstruction as rec

    sync(device)
    t = time.perf_counter()
    Xtr, mx, sx = rec._scale(X, train, "X")
    Ytr, my, sy = rec._scale(Y, train, "Y")
    prob = rec.LocalProblem(Xtr, (X[test] - mx) / sx, train, k, device=device,
                            settings=rec.resolve(engine=engine))
    pw = prob.run([(Ytr, (Y[test] - my) / sy)])[0]
    sync(device)
    return pw, time.perf_counter() - t, prob.n_fallback, getattr(prob, "gram_batches", None)


def check_lfre(a, dev: str) -> bool:
    """Step 1; True when every parity check holds."""
    from mlipspace.metrics import rms

    if a.small:
        n, dx, dy, k, n_test = 2_000, 32, 64, 32, min(a.n_test, 100)
    else:
        n, dx, dy, k, n_test = 20_000, 128, 256, 128, a.n_test
    X, Y = correlated(n, dx, dy)
    test = np.sort(np.random.default_rng(1).choice(n, n_test, replace=False))
    train = np.setdiff1d(np.arange(n), test)
    print(f"LFRE data: {n} rows, X {dx} -> Y {dy}, k = {k}, {n_test} test rows")
    cpu, t_cpu, fb, _ = lfre_run(X, Y, k, train, test, "cpu", "gram")
    print(f"[cpu  gram ] LFRE {rms(cpu):.10f} {t_cpu:8.3f} s  fallback rows {fb}  (NumPy Gram engine)")
    lfre_run(X, Y, k, train, test[:16], dev, "gram")  # warm-up: context, handles, kernels
    ok = True
    times = {}
    for engine in ("gram", "svd"):
        pw, t, fb, gb = lfre_run(X, Y, k, train, test, dev, engine)
        times[engine] = t
        d = float(np.max(np.abs(pw - cpu)))
        good = d <= TOL_CPU or engine == "svd"
        ok &= good
        if engine == "gram":
            dev_pw = pw
        print(f"[dev  {engine:<5}] LFRE {rms(pw):.10f} {t:8.3f} s  fallback rows {fb}  Gram batches {gb}  "
              f"max|diff| vs CPU {d:.2e} {'OK' if good else 'FAIL'}")
    print(f"RATIO device Gram vs device SVD path: {times['svd'] / times['gram']:.1f}x; "
          f"vs our CPU: {t_cpu / times['gram']:.2f}x")
    try:
        import skmatter.metrics as skm
    except ImportError:
        print("[skmatter   ] not importable: comparison skipped")
        return ok
    t = time.perf_counter()
    sk = skm.pointwise_local_reconstruction_error(X, Y, k, train_idx=train, test_idx=test, n_jobs=a.sk_jobs)
    t_sk = time.perf_counter() - t
    d = float(np.max(np.abs(sk - dev_pw)))
    ok &= d <= TOL_SKM
    print(f"[skmatter   ] LFRE {rms(sk):.10f} {t_sk:8.3f} s  (n_jobs={a.sk_jobs})  parity device Gram vs "
          f"scikit-matter {d:.2e} {'OK' if d <= TOL_SKM else 'FAIL'}")
    print(f"RATIO vs scikit-matter: device Gram {t_sk / times['gram']:.1f}x, device SVD {t_sk / times['svd']:.1f}x, "
          f"our CPU {t_sk / t_cpu:.1f}x")
    return ok


def check_extraction(a, cuda: bool) -> None:
    """Step 2: atoms/s of ``Extractor.extract`` per bundled model, on the GPU and on the CPU."""
    from bench_extract import load_frames, time_extract

    from mlipspace.models import registry

    frames, source = load_frames(a.frames)
    n_atoms = sum(len(f) for f in frames)
    print(f"extraction: {source}, {n_atoms} atoms, batch_size {a.batch_size}, best of {a.repeats}")
    if not cuda:
        print("extraction on CUDA skipped (no GPU): CPU atoms/s only")
    names = a.models.split(",") if a.models else registry.names()
    for name in names:
        reason = registry.why_unavailable(name)
        if reason:
            print(f"{name:24s} skipped: {reason}")
            continue
        rates = {}
        try:
            for device in (("cuda", "cpu") if cuda else ("cpu",)):
                from mlipspace.models._torch_utils import unsupported_frames

                ex = registry.load(name, device=device)
                bad = unsupported_frames(frames, ex.elements)
                fr = [f for i, f in enumerate(frames) if i not in bad]
                time_extract(ex, fr[:2], a.batch_size)  # warm-up
                best = min(time_extract(ex, fr, a.batch_size) for _ in range(a.repeats))
                rates[device] = sum(len(f) for f in fr) / best
        except Exception as exc:  # one broken adapter must not hide the others' numbers
            print(f"{name:24s} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        line = "  ".join(f"{d} {r:10.1f} atoms/s" for d, r in rates.items())
        ratio = f"  RATIO GPU/CPU {rates['cuda'] / rates['cpu']:.1f}x" if "cuda" in rates else ""
        print(f"{name:24s} {line}{ratio}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny sizes (2,000 rows, 32 -> 64, k = 32, 100 test "
                   "rows; 2 frames, one repeat, descriptor-rdf unless --models)")
    p.add_argument("--n-test", type=int, default=1000, help="LFRE test rows")
    p.add_argument("--sk-jobs", type=int, default=len(os.sched_getaffinity(0)), help="scikit-matter LFRE workers")
    p.add_argument("--models", default=None, help="comma-separated registry names (default: all available)")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-extract", action="store_true", help="skip the extraction step")
    a = p.parse_args()
    if a.small:
        a.frames, a.repeats, a.models = min(a.frames, 2), 1, a.models or "descriptor-rdf"
    t0 = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        dev = "cuda"
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        dev = "torch-cpu"
        print(f"device: no CUDA GPU, CUDA parts skipped; the torch code runs on the CPU (torch-cpu), "
              f"torch {torch.__version__}")
    print(f"CPU cores: {len(os.sched_getaffinity(0))}")
    ok = check_lfre(a, dev)
    if not a.no_extract:
        check_extraction(a, cuda)
    print(f"total {time.perf_counter() - t0:.1f} s; parity {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
