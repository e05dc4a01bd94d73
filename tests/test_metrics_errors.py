"""Bad input raises InputError (a ValueError) that says what is wrong; the CLI prints it, exit 1."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlipspace.errors import AlignmentError, InputError
from mlipspace.metrics import default_k, gfrd, gfre, lfre, pairwise


def xy(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.standard_normal((n, 3))


ALL = [
    pytest.param(lambda X, Y, **kw: gfre(X, Y, **kw), id="gfre"),
    pytest.param(lambda X, Y, **kw: gfrd(X, Y, **kw), id="gfrd"),
    pytest.param(lambda X, Y, **kw: lfre(X, Y, k=5, device="cpu", **kw), id="lfre"),
]


@pytest.mark.parametrize("f", ALL)
def test_row_count_mismatch(f):
    X, Y = xy()
    with pytest.raises(AlignmentError, match="X has 60 rows but Y has 59"):
        f(X, Y[:-1])


@pytest.mark.parametrize("f", ALL)
@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite(f, bad, word):
    X, Y = xy()
    Y[17, 1] = bad
    with pytest.raises(InputError, match=f"Y: {word} at row 17"):
        f(X, Y)
    X2, _ = xy()
    X2[3, 0] = bad
    with pytest.raises(InputError, match=f"X: {word} at row 3"):
        f(X2, xy()[1])


@pytest.mark.parametrize("f", ALL)
def test_zero_variance_space(f):
    X, Y = xy()
    with pytest.raises(InputError, match="X: the training rows have zero variance"):
        f(np.full_like(X, 2.5), Y)
    with pytest.raises(InputError, match="Y: the training rows have zero variance"):
        f(X, np.zeros_like(Y))


def test_zero_variance_on_training_rows_only():
    X, Y = xy()
    Y[:30] = 1.0  # constant on the training rows, varying on the test rows
    with pytest.raises(InputError, match="zero variance"):
        gfre(X, Y, train_idx=np.arange(30), test_idx=np.arange(30, 60))


@pytest.mark.parametrize("f", ALL)
@pytest.mark.parametrize("kw,msg", [
    ({"test_idx": np.array([], dtype=int)}, "test_idx is empty"),
    ({"train_idx": np.array([], dtype=int)}, "train_idx is empty"),
    ({"train_idx": np.arange(0, 40), "test_idx": np.arange(35, 60)}, "overlap in 5 row"),
    ({"test_idx": np.array([3, 60])}, r"must lie in \[0, 60\)"),
    ({"test_idx": np.array([-1, 2])}, r"must lie in \[0, 60\)"),
    ({"test_idx": np.array([4, 4, 5])}, "repeated"),
    ({"test_idx": np.arange(60)}, "no training rows"),
    ({"train_idx": np.arange(60)}, "no test rows"),
    ({"test_idx": np.ones(60, dtype=bool)}, "boolean mask"),
    ({"test_idx": np.array([0.5, 2.0])}, "integer row indices"),
    ({"train_idx": np.array([[1, 2]])}, "1-D"),
])
def test_bad_indices(f, kw, msg):
    X, Y = xy()
    with pytest.raises(InputError, match=msg):
        f(X, Y, **kw)


def test_float_indices_that_are_integers_are_accepted():
    X, Y = xy()
    assert gfre(X, Y, test_idx=np.arange(0, 60, 3).astype(float)) == gfre(X, Y, test_idx=np.arange(0, 60, 3))


def test_lfre_neighbours():
    X, Y = xy()
    with pytest.raises(InputError, match="k=31 is larger than the training set \\(30 rows\\)"):
        lfre(X, Y, k=31)
    with pytest.raises(InputError, match="at least 2"):
        lfre(X, Y, k=1)
    with pytest.raises(InputError, match="must be an integer"):
        lfre(X, Y, k=4.5)
    with pytest.raises(TypeError):
        lfre(X, Y, 5)  # k is keyword-only: a positional k would bind to train_idx elsewhere
    assert lfre(X, Y) == lfre(X, Y, k=default_k(X.shape[1], Y.shape[1], 30))
    with pytest.raises(InputError, match="at least 8 training rows"):
        lfre(X[:14], Y[:14])
    with pytest.raises(InputError, match="unknown mode"):
        lfre(X, Y, k=5, mode="approximately")
    with pytest.raises(InputError, match="unknown device"):
        lfre(X, Y, k=5, device="tpu")


def test_shapes_and_dtypes():
    X, Y = xy()
    with pytest.raises(InputError, match="2-D"):
        gfre(X[:, 0], Y)
    with pytest.raises(InputError, match="2-D"):
        lfre(X, Y[:, 0], k=3)
    with pytest.raises(InputError, match="numeric"):
        lfre(X.astype(str), Y, k=3)
    with pytest.raises(InputError, match="empty"):
        gfre(X[:, :0], Y)
    assert issubclass(InputError, ValueError)


def test_pairwise_errors():
    X, Y = xy()
    with pytest.raises(InputError, match="unknown metric"):
        pairwise({"a": X, "b": Y}, "cka")
    with pytest.raises(InputError, match="different row counts"):
        pairwise({"a": X, "b": Y[:50]})
    with pytest.raises(InputError, match="non-empty dict"):
        pairwise({})
    with pytest.raises(InputError, match="b: NaN at row 2"):
        pairwise({"a": X, "b": np.where(np.arange(60)[:, None] == 2, np.nan, Y)})


# ----------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 5))
    Y = np.hstack([X @ rng.standard_normal((5, 3)), 0.3 * rng.standard_normal((120, 2))])
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    np.save(tmp_path / "test.npy", np.arange(0, 120, 4))
    return tmp_path, X, Y


@pytest.mark.parametrize("metric", ["gfre", "gfrd", "lfre"])
def test_cli_json(files, metric):
    from typer.testing import CliRunner

    from mlipspace.cli import app  # registers every command module
    from mlipspace.metrics import gfrd as f_gfrd, gfre as f_gfre, lfre as f_lfre

    d, X, Y = files
    args = ["metrics", str(d / "x.npy"), str(d / "y.npy"), "--metric", metric, "--test-idx", str(d / "test.npy"),
            "--json"]
    if metric == "lfre":
        args += ["--k", "10", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    test = np.arange(0, 120, 4)
    ref = {"gfre": lambda: f_gfre(X, Y, test_idx=test), "gfrd": lambda: f_gfrd(X, Y, test_idx=test),
           "lfre": lambda: f_lfre(X, Y, k=10, test_idx=test, device="cpu")}[metric]()
    assert out["metric"] == metric and out["n_train"] == 90 and out["n_test"] == 30
    assert abs(out["value"] - ref) < 1e-12
    if metric == "lfre":
        assert out["k"] == 10


def test_cli_human_output_and_errors(files, capsys):
    from mlipspace.cli import main

    d, X, Y = files
    with pytest.raises(SystemExit) as exc:
        main(["metrics", str(d / "x.npy"), str(d / "y.npy")])
    assert exc.value.code == 0
    assert "GFRE(x.npy -> y.npy)" in capsys.readouterr().out
    np.save(d / "short.npy", Y[:100])
    for args, msg in [
        ([str(d / "x.npy"), str(d / "short.npy")], "120 rows but"),
        ([str(d / "x.npy"), str(d / "missing.npy")], "no such file"),
        ([str(d / "x.npy"), str(d / "y.npy"), "--metric", "lfre", "--k", "500"], "larger than the training set"),
        ([str(d / "x.npy"), str(d / "y.npy"), "--metric", "cka"], "unknown metric"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["metrics", *args])
        assert exc.value.code == 1
        assert msg in capsys.readouterr().err
