"""Checkpoint specs, per-family environments and the worker subprocess, with a test family.

The family ``rdfx`` is a recipe (in a temporary ``$MLIPSPACE_RECIPES`` folder) whose adapter is the
numpy radial descriptor reading its parameters from a JSON "checkpoint"; its worker runs with this
interpreter (``?python=``). That exercises the whole user path -- spec string, registry, worker
process, wire format, typed errors, feature store, CLI -- without any model package.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mlipspace import envs
from mlipspace.data import builtin
from mlipspace.errors import (
    InputError,
    ModelUnavailableError,
    StructureError,
    WorkerError,
)
from mlipspace.models import get_spec, load
from mlipspace.models.registry import with_python
from mlipspace.models.remote import RemoteExtractor

ROOT = Path(__file__).resolve().parents[1]
#: the bundled families, derived from the recipes (a new recipe is tested without editing this file)
FAMILIES = tuple(p.name[:-5] for p in sorted((ROOT / "src" / "mlipspace" / "envs" / "recipes").glob("*.json")))


@pytest.fixture()
def rdfx(tmp_path, monkeypatch):
    """A test family ``rdfx`` and a parameter file; returns the spec string of that file."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "rdfx.json").write_text(json.dumps({
        "family": "rdfx", "import": "numpy", "distribution": "numpy", "module": "descriptor",
        "description": "test family", "spec": "rdfx:/path/params.json", "steps": [["torch==2.13.0"]],
        "env": {"MLIPSPACE_TEST_MARK": "1"},
    }))
    monkeypatch.setenv("MLIPSPACE_RECIPES", str(recipes))
    monkeypatch.setenv("MLIPSPACE_ENVS", str(tmp_path / "envs"))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"cutoff": 4.0, "n_bins": 8}))
    return f"rdfx:{params}"


@pytest.fixture(scope="module")
def frames():
    return builtin(size=10)


# ------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("family", FAMILIES)
def test_bundled_recipe_is_valid(family):
    rec = envs.recipe(family)
    assert rec["steps"][0][0].startswith("torch==")
    assert rec["spec"].startswith(f"{family}:")
    assert rec["import"] and rec["distribution"]


def test_family_list_comes_from_the_recipes(capsys):
    """``mlipspace env list --names`` (what .ci/run requires) is the recipes' list; each family has its tests."""
    from mlipspace.cli import main

    assert FAMILIES and tuple(envs.families()) == FAMILIES
    with pytest.raises(SystemExit):
        main(["env", "list", "--names"])
    assert tuple(capsys.readouterr().out.split()) == FAMILIES
    for fam in FAMILIES:
        assert (ROOT / "tests" / f"test_family_{fam}.py").is_file(), f"no tests/test_family_{fam}.py"
        assert (ROOT / "tests" / "families" / f"build_{fam}.py").is_file(), f"no tests/families/build_{fam}.py"


def test_unknown_recipe_lists_families():
    with pytest.raises(envs.EnvError, match="no environment recipe for family 'nope'.*mace"):
        envs.recipe("nope")


# ------------------------------------------------------------------------------------------ specs
def test_spec_parsing(rdfx, tmp_path):
    spec = get_spec(rdfx)
    assert spec.family == "rdfx" and spec.name == "rdfx-params"
    assert spec.options == {"checkpoint": str(tmp_path / "params.json")}
    spec = get_spec(rdfx + "?head=PBE&cutoff=3")
    assert spec.name == "rdfx-params@PBE" and spec.options["cutoff"] == "3"
    assert get_spec(rdfx + "?target=mtt::energy_r2scan").name == "rdfx-params@mtt__energy_r2scan"
    spec = get_spec(rdfx + "?name=my-rdf&python=/usr/bin/python3")
    assert spec.name == "my-rdf" and spec.python == "/usr/bin/python3" and "python" not in spec.options
    assert "python" not in spec.source and "name=my-rdf" in spec.source


@pytest.mark.parametrize("suffix, error, match", [
    ("?cutoff", InputError, "malformed options"),
    ("?a=1&a=2", InputError, "given twice"),
    ("?a=", InputError, "has no value"),
    ("?name=a/b", InputError, "may not contain '/'"),
])
def test_bad_spec_options(rdfx, suffix, error, match):
    with pytest.raises(error, match=match):
        get_spec(rdfx + suffix)


def test_missing_checkpoint_and_unknown_family(rdfx, tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"rdfx checkpoint .*nothere.json not found"):
        get_spec(f"rdfx:{tmp_path}/nothere.json")
    with pytest.raises(ModelUnavailableError, match="unknown model 'zzz:/x'.*FAMILY:/path/file"):
        get_spec("zzz:/x")


def test_no_environment_and_no_creation_says_how_to_make_one(rdfx, monkeypatch):
    from mlipspace.models import registry

    monkeypatch.setattr(registry, "_importable", lambda spec: False)
    with pytest.raises(ModelUnavailableError, match="create it with: mlipspace env create rdfx"):
        load(rdfx, create_env=False)
    with pytest.raises(envs.EnvError, match="automatic creation is off; create it with: mlipspace env create rdfx"):
        envs.ensure("rdfx", create_env=False)


def _fake_pip(tmp_path, monkeypatch, fail: bool = False):
    """Replace the subprocess calls of ``envs.create`` by a fake: the venv step makes an environment
    whose python is this interpreter; ``fail`` makes the first pip step fail. Returns the calls."""
    calls = []

    def fake_run(cmd, what, log, env=None):
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            d = Path(cmd[3])
            (d / "bin").mkdir(parents=True)
            (d / "pyvenv.cfg").write_text("home = x\n")
            (d / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            (d / "bin" / "python").chmod(0o755)
        elif fail:
            raise envs.EnvError(f"{what} failed (exit 1) (full log: {log.name}): {' '.join(cmd)}")

    monkeypatch.setattr(envs, "_run", fake_run)
    return calls


def test_first_use_of_a_spec_creates_its_environment(rdfx, tmp_path, monkeypatch, capsys, frames):
    """No environment yet: load() tells it is making one, makes it once, then runs the model in it."""
    from mlipspace.models import registry

    monkeypatch.setattr(registry, "_importable", lambda spec: False)
    calls = _fake_pip(tmp_path, monkeypatch)
    with load(rdfx) as remote:
        assert isinstance(remote, RemoteExtractor)
        assert remote.python == str(tmp_path / "envs" / "rdfx" / "bin" / "python")
        assert remote.extract(frames[:2]).layers["last"].shape[0] == sum(len(a) for a in frames[:2])
    err = capsys.readouterr().err
    assert f"environment for rdfx not found: creating it (a few minutes, once) in {tmp_path / 'envs' / 'rdfx'}" in err
    assert "rdfx [2/4]: pip install torch==2.13.0" in err and "rdfx: ready in" in err
    n = len(calls)
    load(rdfx).close()  # made once: the second use finds it
    assert len(calls) == n and "not found" not in capsys.readouterr().err


def test_failed_creation_names_the_family_and_the_log(rdfx, tmp_path, monkeypatch):
    from mlipspace.models import registry

    monkeypatch.setattr(registry, "_importable", lambda spec: False)
    _fake_pip(tmp_path, monkeypatch, fail=True)
    log = tmp_path / "envs" / "rdfx" / "mlipspace-env.log"
    with pytest.raises(envs.EnvError, match=rf"(?s)environment for family 'rdfx' .*\(log: {log}\).*recipe step 1 failed"):
        load(rdfx)
    assert envs.python_for("rdfx") is None


def test_cli_no_create_env_fails_before_any_work(rdfx, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mlipspace.cli import app
    from mlipspace.models import registry

    monkeypatch.setattr(registry, "_importable", lambda spec: False)
    calls = _fake_pip(tmp_path, monkeypatch)
    for cmd in (["extract", "builtin:mad-mini?size=4", "-m", rdfx, "-s", str(tmp_path / "s"), "--no-create-env"],
                ["run", "--models", rdfx, "--size", "8", "--out", str(tmp_path / "o"), "--no-create-env"]):
        result = CliRunner().invoke(app, cmd)
        assert isinstance(result.exception, ModelUnavailableError), result.output
        assert "mlipspace env create rdfx" in str(result.exception) and "--no-create-env" in str(result.exception)
    assert calls == [] and not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------ worker
def test_worker_gives_the_in_process_features(rdfx, frames):
    local = load(rdfx)
    assert not isinstance(local, RemoteExtractor)
    with load(with_python(rdfx, sys.executable)) as remote:
        assert isinstance(remote, RemoteExtractor) and remote.pid > 0
        assert remote.name == "rdfx-params" and remote.layers == local.layers and remote.dims == local.dims
        assert remote.fingerprint == local.fingerprint
        got = remote.extract(frames, layers="all", batch_size=3)
        want = local.extract(frames, layers="all")
        for layer in want.layers:
            assert got.layers[layer].dtype == np.float32
            np.testing.assert_array_equal(got.layers[layer], want.layers[layer])
        for key in want.rows:
            np.testing.assert_array_equal(got.rows[key], want.rows[key])


def test_worker_errors_come_back_typed(rdfx, tmp_path, frames):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cutoff": 4.0, "colour": "red"}))
    with pytest.raises(ModelUnavailableError, match=r"bad.json: unknown descriptor parameter\(s\) \['colour'\]"):
        RemoteExtractor(f"rdfx:{bad}", python=sys.executable, family="rdfx")
    with RemoteExtractor(rdfx, python=sys.executable, family="rdfx") as r:
        with pytest.raises(InputError, match="unknown layer"):
            r.extract(frames[:1], layers=("nope",))
        # a structure error raised inside the worker keeps its reason and frame
        from mlipspace.models._wire import pack_frames

        info, arrays = pack_frames(frames[:3])
        arrays["positions"][len(frames[0])] = np.nan
        with pytest.raises(StructureError, match="frame 1: positions contain NaN"):
            r._call({"op": "extract", "layers": ["last"], "batch_size": 2, "on_unsupported": "raise",
                     "frames": info}, arrays)
        # an unexpected exception comes back as WorkerError with the worker's traceback
        with pytest.raises(WorkerError, match="unknown op 'explode'"):
            r._call({"op": "explode", "frames": info}, arrays)
        assert r.extract(frames[:2]).layers["last"].shape[0] == sum(len(a) for a in frames[:2])


def test_dead_worker_and_bad_python(rdfx, frames, tmp_path):
    r = RemoteExtractor(rdfx, python=sys.executable, family="rdfx")
    r._proc.kill()
    r._proc.wait()
    with pytest.raises(WorkerError, match="is not running"):
        r.extract(frames[:1])
    with pytest.raises(WorkerError, match="cannot start a worker"):
        RemoteExtractor(rdfx, python=str(tmp_path / "no-python"), family="rdfx")
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'this python is broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(WorkerError, match=r"(?s)\(exit code 3\).*this python is broken"):
        RemoteExtractor(rdfx, python=str(fake), family="rdfx")


def test_worker_sees_recipe_env_and_not_our_pythonpath(rdfx, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/nonexistent/leak")
    with RemoteExtractor(rdfx, python=sys.executable, family="rdfx") as r:
        environ = Path(f"/proc/{r.pid}/environ").read_bytes().split(b"\0")
    assert b"MLIPSPACE_TEST_MARK=1" in environ
    assert not any(e.startswith(b"PYTHONPATH=/nonexistent") for e in environ)


def test_store_and_cli_through_the_worker(rdfx, tmp_path, frames):
    from mlipspace.cli import main
    from mlipspace.store import FeatureStore, extract_to_store

    store = tmp_path / "store"
    summary = extract_to_store(frames, [with_python(rdfx, sys.executable)], store, layers="all", progress=False)
    assert summary["models"]["rdfx-params"]["status"] in ("extracted", "added")
    fs = FeatureStore(store)
    key = fs.datasets()[0]
    got = fs.features(key, "rdfx-params", "last")
    want = load(rdfx).extract(frames).layers["last"]
    np.testing.assert_array_equal(np.asarray(got), want)
    with pytest.raises(SystemExit) as exit_:
        main(["extract", "builtin:mad-mini?size=4", "-m", rdfx, "-s", str(tmp_path / "s2"), "--python",
              sys.executable, "--no-progress", "--json"])
    assert exit_.value.code in (0, None)


# ------------------------------------------------------------------------------------------ create
def test_create_runs_the_recipe_and_writes_the_marker_last(rdfx, tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, what, log, env=None):
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            d = tmp_path / "envs" / "rdfx"
            (d / "bin").mkdir(parents=True)
            (d / "pyvenv.cfg").write_text("home = x\n")
            (d / "bin" / "python").symlink_to(sys.executable)
        assert not (tmp_path / "envs" / "rdfx" / envs.MARKER).exists()
        if "fail-here" in cmd:
            raise envs.EnvError(f"{what} failed")

    monkeypatch.setattr(envs, "_run", fake_run)
    d = envs.create("rdfx")
    assert envs.python_for("rdfx") == d / "bin" / "python"
    pip = [c[4:] for c in calls if c[1:4] == ["-m", "pip", "install"]]
    assert pip[0] == ["torch==2.13.0"] and pip[1] == list(envs.WORKER_NEEDS)
    assert calls[-1][1] == "-c" and "import numpy, scipy, ase, numpy" in calls[-1][2]
    marker = envs.info("rdfx")
    assert marker["family"] == "rdfx" and marker["recipe"]["steps"] == [["torch==2.13.0"]]
    calls.clear()
    assert envs.create("rdfx") == d and calls == []  # complete, same recipe: kept
    assert not envs.outdated("rdfx")
    # a failing step leaves no marker; the next create starts afresh
    rec = json.loads((tmp_path / "recipes" / "rdfx.json").read_text())
    rec["steps"].append(["fail-here"])
    (tmp_path / "recipes" / "rdfx.json").write_text(json.dumps(rec))
    assert envs.outdated("rdfx")
    with pytest.raises(envs.EnvError, match="failed"):
        envs.create("rdfx")  # the recipe changed: rebuilt without --force
    assert envs.info("rdfx") is None and envs.python_for("rdfx") is None


def test_create_refuses_a_directory_that_is_not_an_env(rdfx, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("...")
    with pytest.raises(envs.EnvError, match="not a virtual environment; refusing"):
        envs.create("rdfx", target)
    assert (target / "thesis.tex").exists()


def test_resolve_python(rdfx, tmp_path):
    assert envs.resolve_python(sys.executable) == Path(sys.executable).absolute()
    with pytest.raises(envs.EnvError, match="no environment for family 'rdfx'.*mlipspace env create rdfx"):
        envs.resolve_python("rdfx")
    with pytest.raises(envs.EnvError, match="neither a python executable"):
        envs.resolve_python("no-such-thing")


def test_env_list_json(rdfx, capsys):
    from mlipspace.cli import main

    with pytest.raises(SystemExit):
        main(["env", "list", "--json"])
    rows = {r["family"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["rdfx"]["exists"] is False and rows["rdfx"]["spec"] == "rdfx:/path/params.json"


def test_run_with_a_checkpoint_spec_through_the_worker(rdfx, tmp_path):
    """``mlipspace run`` takes checkpoint specs: extraction in the worker, results under the display name."""
    from typer.testing import CliRunner

    from mlipspace.cli import app

    out = tmp_path / "study"
    models = f"descriptor-rdf,{with_python(rdfx, sys.executable)}"
    result = CliRunner().invoke(app, ["run", "--models", models, "--size", "14", "--seeds", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    res = json.loads((out / "results.json").read_text())
    assert set(res["meta"]["models"]) == {"descriptor-rdf", "rdfx-params"}
    pairs = {(r["source"], r["target"]) for r in res["records"] if r["analysis"] == "cross-model"}
    assert ("descriptor-rdf", "rdfx-params") in pairs


def test_wire_round_trip_keeps_geometry_and_model_inputs(frames):
    """Frames cross the pipe exactly: numbers, positions, cell, pbc, and the info keys models read."""
    import io

    from ase.build import molecule

    from mlipspace.models._wire import pack_frames, read_message, unpack_frames, write_message

    ion = molecule("H2O")
    ion.info.update(charge=1, spin=2, source="ions.xyz", source_index=7, unrelated=object())
    sent = [*frames[:3], ion]
    buf = io.BytesIO()
    info, arrays = pack_frames(sent)
    write_message(buf, {"frames": info}, arrays)
    buf.seek(0)
    header, arrays = read_message(buf)
    got = unpack_frames(header["frames"], arrays)
    for a, b in zip(sent, got):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell[:], b.cell[:])
        np.testing.assert_array_equal(a.pbc, b.pbc)
    assert got[-1].info == {"charge": 1, "spin": 2, "source": "ions.xyz", "source_index": 7}
