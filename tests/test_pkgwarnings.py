"""Warnings of model packages are caught and summarised once per model; ``--verbose`` shows them all.

The noisy model is the numpy descriptor wrapped so that loading and every extracted frame warn the
way pymatgen does on noble gases (from this test module: outside mlipspace, i.e. "a package").
"""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import mlipspace
import pytest

from mlipspace.models.pkgwarnings import WarningLog, capture_warnings

NOISE = "No Pauling electronegativity for Ne. Setting to NaN."
RAW = re.compile(r"\.py:\d+: UserWarning")  # how Python prints a warning: file:line: Category: message
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mad-bench-mad-reduced.xyz"


def shown():
    """What reaches Python's display of warnings (under pytest: its recorder, not stderr)."""
    rec = warnings.catch_warnings(record=True)
    return rec


def package_code(n: int = 1) -> None:
    for _ in range(n):
        warnings.warn(NOISE, UserWarning, stacklevel=1)


def own_code() -> None:
    """A warning issued from a file of the mlipspace package (as the DPA adapter's own warning)."""
    path = str(Path(mlipspace.__file__).parent / "_test_own_warning.py")
    exec(compile("import warnings\nwarnings.warn('mlipspace says: buffers absent')", path, "exec"), {})


class Noisy:
    """A loaded model whose package warns once per frame."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def extract(self, frames, *args, **kwargs):
        package_code(len(frames))
        return self._inner.extract(frames, *args, **kwargs)


@pytest.fixture()
def noisy_rdf(monkeypatch):
    """``descriptor-rdf`` loads as a :class:`Noisy` model that also warns once while loading."""
    import mlipspace.models as models
    from mlipspace.store import pipeline

    real = models.load

    def load(name, *args, **kwargs):
        package_code(1)
        return Noisy(real(name, *args, **kwargs))

    monkeypatch.setattr(models, "load", load)
    monkeypatch.setattr(pipeline, "_MODELS", {})
    return "descriptor-rdf"


def test_capture_counts_every_warning_and_prints_none(capsys):
    with shown() as rec, capture_warnings() as log:
        package_code(37)
    assert capsys.readouterr().err == "" and rec == []
    assert log.count == 37 and log.first == f"UserWarning: {NOISE}"
    assert log.summary("chgnet-0.3.0") == (f"chgnet-0.3.0: 37 warnings from model packages (first: UserWarning: "
                                           f"{NOISE}); --verbose shows them")
    assert WarningLog().summary("m") is None


def test_verbose_capture_passes_warnings_through(capsys):
    with shown() as rec, capture_warnings(verbose=True) as log:
        package_code(3)
    assert log.count == 3 and [str(w.message) for w in rec] == [NOISE] * 3


def test_mlipspace_own_warnings_are_shown_not_counted(capsys):
    with shown() as rec, capture_warnings() as log:
        own_code()
        package_code(2)
    assert log.count == 2 and [str(w.message) for w in rec] == ["mlipspace says: buffers absent"]


def test_a_workers_log_replayed_here_counts_the_same(capsys):
    """What a worker process caught comes back as a dict and is raised again under this capture."""
    with shown(), capture_warnings() as there:
        own_code()
        package_code(5)
    with shown() as rec, capture_warnings() as here:
        WarningLog.from_dict(there.as_dict()).replay({})
    assert here.count == 5 and here.first == there.first
    assert [str(w.message) for w in rec] == ["mlipspace says: buffers absent"]  # own warnings still shown


def test_extraction_summarises_warnings_once_per_model(noisy_rdf, tmp_path, capsys):
    from mlipspace.store import extract_to_store

    with shown() as rec:
        summary = extract_to_store("builtin:mad-mini?size=6", noisy_rdf, tmp_path / "s", shard_size=2, progress=True)
    out = capsys.readouterr()
    assert not [w for w in rec if NOISE in str(w.message)]
    log = summary["models"]["descriptor-rdf"]["warnings"]
    assert log["count"] == 1 + 6 and log["first"] == f"UserWarning: {NOISE}"  # loading + one per frame
    assert not RAW.search(out.out + out.err)
    lines = [ln for ln in (out.out + out.err).splitlines() if "warnings from model packages" in ln]
    assert len(lines) == 1 and "descriptor-rdf: 7 warnings" in lines[0] and "--verbose shows them" in lines[0]


def test_cli_extract_verbose_shows_every_warning(noisy_rdf, tmp_path, capsys):
    from mlipspace.cli import main

    args = ["extract", "builtin:mad-mini?size=4", "-m", noisy_rdf, "--shard-size", "2", "--no-progress"]
    with shown() as rec, pytest.raises(SystemExit):
        main([*args, "-s", str(tmp_path / "quiet")])
    out = capsys.readouterr()
    assert not RAW.search(out.out + out.err) and "5 warnings from model packages" in out.out
    assert not [w for w in rec if NOISE in str(w.message)]
    from mlipspace.store import pipeline

    pipeline._MODELS.clear()  # load again: its warning is shown too
    with shown() as rec, pytest.raises(SystemExit):
        main([*args, "-s", str(tmp_path / "loud"), "--verbose"])
    assert len([w for w in rec if NOISE in str(w.message)]) == 5


@pytest.mark.models
@pytest.mark.slow
def test_real_chgnet_on_noble_gases_prints_no_raw_warnings(tmp_path):
    """CHGNet (pymatgen) warns 'No Pauling electronegativity for Ne/Ar': one summary line, no raw warnings."""
    pytest.importorskip("chgnet")
    from ase.build import bulk
    from ase.io import read, write

    frames = read(DATA, ":4") if DATA.is_file() else []
    frames += [bulk("Ne", "fcc", a=4.4), bulk("Ar", "fcc", a=5.3), bulk("Ne", "fcc", a=4.6) * (2, 1, 1)]
    data = tmp_path / "noble.xyz"
    write(data, frames, format="extxyz")
    src = str(Path(mlipspace.__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "mlipspace.cli", "extract", str(data), "-m", "chgnet-0.3.0", "--device", "cpu",
           "--on-unsupported", "skip"]
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    quiet = subprocess.run([*cmd, "-s", str(tmp_path / "s1")], capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    text = quiet.stdout + quiet.stderr
    assert not RAW.search(text), text[-3000:]
    assert re.search(r"chgnet-0\.3\.0: \d+ warnings? from model packages \(first: UserWarning: No Pauling", text)
    loud = subprocess.run([*cmd, "-s", str(tmp_path / "s2"), "--verbose"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert loud.returncode == 0 and RAW.search(loud.stderr) and "No Pauling electronegativity" in loud.stderr


def test_the_worker_sends_its_warnings_back_with_each_reply(monkeypatch):
    """The model worker catches the package warnings of ``load`` and ``extract`` and replies with them."""
    import io

    from mlipspace.data import builtin
    from mlipspace.models import _worker, load
    from mlipspace.models._wire import pack_frames, read_message, write_message

    monkeypatch.setattr(_worker, "_load", lambda spec, device: (package_code(2), Noisy(load(spec)))[1])
    frames = builtin(size=3)
    info, arrays = pack_frames(frames)
    requests = io.BytesIO()
    write_message(requests, {"op": "load", "spec": "descriptor-rdf"})
    write_message(requests, {"op": "extract", "layers": ["last"], "batch_size": 2, "on_unsupported": "raise",
                             "frames": info}, arrays)
    requests.seek(0)
    replies = io.BytesIO()
    with shown() as rec:
        _worker.serve(requests, replies)
    replies.seek(0)
    (loaded, _), (extracted, _) = read_message(replies), read_message(replies)
    assert loaded["ok"] and loaded["warnings"]["count"] == 2 and loaded["warnings"]["first"] == f"UserWarning: {NOISE}"
    assert extracted["ok"] and extracted["warnings"]["count"] == len(frames)
    assert not [w for w in rec if NOISE in str(w.message)]
