"""mlipspace.Results (results as DataFrames) and results.csv: the numbers equal those index.html shows."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from mlipspace.errors import InputError
from mlipspace.records import RECORD_KEYS
from mlipspace.report import Results, write_report, write_results
from mlipspace.report.results import write_table
from test_report import synthetic_results

pd = pytest.importorskip("pandas")


def _with_na_and_ci(res: dict) -> dict:
    """One cross-model GFRE record without a value (fit outside its regime); CIs on the others."""
    recs = [dict(r) for r in res["records"]]
    gfre = [r for r in recs if r["analysis"] == "cross-model" and r["metric"] == "gfre" and r["level"] == "atom"]
    gfre[0].update(value=None, spread=None, reason="too few training structures")
    for r in gfre[1:]:
        r.update(ci_low=r["value"] - 0.05, ci_high=r["value"] + 0.05)
    return dict(res, records=recs)


def html_matrix(text: str, metric: str, level: str) -> pd.DataFrame:
    """The value table of a matrix in index.html as a DataFrame (first number of each cell; n/a -> NaN)."""
    table = re.search(rf'<table class="matrix {metric} {level}">(.*?)</table>', text, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    cols = [re.sub("<[^>]+>", "", c) for c in re.findall(r"<th[^>]*>(.*?)</th>", rows[0])][1:]
    data, index = [], []
    for row in rows[1:]:
        cells = [re.sub("<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        index.append(cells[0])
        data.append([float(c.split()[0]) if c and c[0].isdigit() else np.nan for c in cells[1:]])
    return pd.DataFrame(data, index=index, columns=cols)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One report of synthetic results (read only by the tests)."""
    tmp_path = tmp_path_factory.mktemp("report")
    res = _with_na_and_ci(synthetic_results())
    path = write_results(tmp_path / "results.json", res)
    write_table(tmp_path / "results.csv", res)
    write_report(path)
    return tmp_path


def test_matrix_equals_the_numbers_index_html_shows(out):
    M = Results.load(out).matrix("gfre")
    assert M.index.name == "source" and M.columns.name == "target"
    shown = html_matrix((out / "index.html").read_text(), "gfre", "atom")
    assert list(shown.index) == list(M.index) and list(shown.columns) == list(M.columns)
    np.testing.assert_allclose(shown.to_numpy(), M.to_numpy(), atol=5e-4)  # the page prints 3 decimals
    assert np.isnan(np.diag(M.to_numpy())).all()
    assert M.isna().to_numpy().sum() == len(M) + 1  # the diagonal and the record without a value
    structure = Results.load(out).matrix("lfre", level="structure")
    assert structure.loc["chgnet-0.3.0", "sevennet-0"] == pytest.approx(0.7 * 0.6, abs=0.02)  # across families
    assert structure.loc["chgnet-0.3.0", "chgnet-0.2.0"] == pytest.approx(0.3 * 0.6, abs=0.02)  # variants


def test_html_cells_show_na_with_reason_and_the_interval(out):
    text = (out / "index.html").read_text()
    assert 'title="too few training structures">too few training structures<' in text  # the reason, shown
    assert re.search(r"\d\.\d{3} ± \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", text)


def test_load_from_folder_and_from_file_agree(out):
    a, b = Results.load(out), Results.load(out / "results.json")
    assert a.records == b.records and a.meta == b.meta
    assert len(a) == len((out / "results.csv").read_text().splitlines()) - 1
    assert "records" in repr(a)


def test_load_reads_a_compare_output_list_of_records(tmp_path):
    recs = synthetic_results()["records"][:5]
    (tmp_path / "cmp.json").write_text(json.dumps(recs))
    assert Results.load(tmp_path / "cmp.json").records == recs


def test_load_bad_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="no such results file"):
        Results.load(tmp_path / "missing.json")
    with pytest.raises(InputError, match="folder has no results.json"):
        Results.load(tmp_path)
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(InputError, match="not an mlipspace results file"):
        Results.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        Results.load(tmp_path / "broken.json")


def test_matrix_of_an_absent_metric_is_a_clear_error(out):
    with pytest.raises(InputError, match="no cross-model records of metric 'cka'"):
        Results.load(out).matrix("cka")


def test_to_pandas_round_trips_the_records_and_matches_the_csv(out):
    res = Results.load(out)
    df = res.to_pandas()
    assert list(df.columns[: len(RECORD_KEYS)]) == list(RECORD_KEYS) and len(df) == len(res.records)
    back = [{k: v for k, v in row.items() if not (v is None or (isinstance(v, float) and math.isnan(v)))}
            for row in df.to_dict("records")]
    want = [{k: v for k, v in r.items() if v is not None} for r in res.records]
    assert back == want
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == list(df.columns)
    np.testing.assert_array_equal(csv["value"].to_numpy(), df["value"].to_numpy(dtype=float))
    assert (csv["source"] == df["source"]).all()


def test_results_csv_is_deterministic_and_rounded_like_the_json(tmp_path):
    res = synthetic_results()
    res["records"][0]["value"] = 0.123456789123
    a = write_table(tmp_path / "a.csv", res).read_bytes()
    b = write_table(tmp_path / "b.csv", res["records"]).read_bytes()
    assert a == b
    assert a.decode().splitlines()[1].split(",")[6] == "0.123457"


def test_summary_is_the_four_findings(out):
    s = Results.load(out).summary()
    assert list(s.index) == ["i", "ii", "iii", "iv"]
    assert {"title", "holds", "text", "numbers"} <= set(s.columns)


def test_compare_output_gets_a_csv_beside_the_json(tmp_path):
    from mlipspace.commands.study import _emit

    recs = synthetic_results()["records"][:4]
    _emit(recs, False, tmp_path / "cmp.json", lambda: None)
    assert (tmp_path / "cmp.csv").read_text().count("\n") == 5


def test_import_mlipspace_stays_light_and_exports_results():
    code = ("import sys, mlipspace; assert 'pandas' not in sys.modules and 'mlipspace.report' not in sys.modules; "
            "from mlipspace.report.results import Results; assert mlipspace.Results is Results")
    subprocess.run([sys.executable, "-c", code], check=True)
