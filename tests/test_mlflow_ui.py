"""The ablation table in the MLflow UI, end to end: row runs logged by the evaluate stage's code, the table built
from them (`reenact ablate --table-only`'s call), `mlflow server` on 127.0.0.1, and the printed compare-runs URL
opened in headless Chromium (Debian's, driven by playwright; no browser is ever downloaded): each ablation row is a
column headed by its name, and each metric's value sits in that column, as MLflow formats it."""
from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def _playwright():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian: apt-get install chromium; .ci/run installs it when it can)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -c requirements.lock playwright; never `playwright "
                    "install`: the test drives the system chromium)")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_js_format(value: float) -> str:
    """MLflow UI's Utils.formatMetric (mlflow/server/js: 0, toExponential(3) below 1e-3, else rounded to 3 / 2 / 1
    decimals below 10 / 100 / above), in Python: how the compare-runs page shows a metric."""
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent)}"  # JS: 1.768e-4
    places = 3 if abs(value) < 10 else 2 if abs(value) < 100 else 1
    rounded = math.floor(value * 10 ** places + 0.5) / 10 ** places  # JS Math.round: half up
    text = repr(rounded)
    return text[:-2] if text.endswith(".0") else text


def test_js_format_matches_mlflows_rules():
    assert [mlflow_js_format(v) for v in (0.0, 0.081125, 1.768e-4, 0.5, 1.0, 12.345, 123.45, -0.0025)] == \
        ["0", "0.081", "1.768e-4", "0.5", "1", "12.35", "123.5", "-0.002"]  # JS rounds -2.5 to -2


@pytest.fixture
def served_table(tmp_path):
    """The grid's row runs and its ablation table in tmp_path/mlflow.db, served by `mlflow server`."""
    from pipeline.ablation import ablation_report
    from tests.test_ablation import fresh_store, log_grid

    sync_playwright = _playwright()
    fresh_store(tmp_path)
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    # the server starts (seconds) while the runs are logged into the same store
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                              start_new_session=True)
    try:
        old = os.environ.get("DVC_ROOT")
        os.environ["DVC_ROOT"] = str(tmp_path)
        try:
            grid = log_grid(tmp_path)
        finally:
            if old is None:
                os.environ.pop("DVC_ROOT", None)
            else:
                os.environ["DVC_ROOT"] = old
        result = ablation_report(uri, tmp_path / "reports", grid, base_url=f"http://127.0.0.1:{port}")
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield result, uri, sync_playwright
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server this fixture started (its own session)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(tmp_path / "mlartifacts", ignore_errors=True)


def test_compare_runs_view_shows_every_row_and_its_metrics(served_table):
    import mlflow

    result, uri, sync_playwright = served_table
    client = mlflow.MlflowClient(tracking_uri=uri)
    rows = list(result["table"].rows)
    metrics = {run_id: client.get_run(run_id).data.metrics for run_id in result["summary_runs"]}
    names = sorted({k for m in metrics.values() for k in m})
    assert rows == ["full", "w/o ID reg", "w/o CMA"] and "same.l1" in names and "same.l1.p" in names
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2400})
            page.goto(result["url"])
            page.get_by_text(names[-1], exact=True).first.wait_for(state="visible", timeout=90_000)
            header = page.get_by_text("Run Name:", exact=True).first.locator("xpath=ancestor::tr[1]").locator("td")
            columns = [(c.inner_text().strip(), c.bounding_box()) for c in header.all()]
            assert [name for name, _ in columns] == rows  # one column per ablation row, headed by its name
            for name, _ in columns:
                assert page.get_by_text(name, exact=True).first.is_visible()
            labels = {a.inner_text().strip(): a.bounding_box() for a in page.locator("a[title='Plot chart']").all()}
            assert sorted(labels) == names  # every metric of the table is a row of the view
            for metric in names:
                y = labels[metric]["y"] + labels[metric]["height"] / 2
                for (row, box), run_id in zip(columns, result["summary_runs"]):
                    if metric not in metrics[run_id]:
                        continue  # e.g. full's p-values: full is not compared with itself
                    x = box["x"] + box["width"] / 2
                    shown = page.evaluate("([x, y]) => { const e = document.elementFromPoint(x, y); "
                                          "return e ? e.innerText.trim() : null }", [x, y])
                    assert shown == mlflow_js_format(metrics[run_id][metric]), (row, metric)
        finally:
            browser.close()
    # the values are the table's: full's same-identity L1 over two seeds, and the w/o ID reg row's paired-test p
    table = result["table"]
    assert metrics[result["summary_runs"][0]]["same.l1"] == pytest.approx(table.rows["full"]["same.l1"].mean)
    assert metrics[result["summary_runs"][1]]["same.l1.p"] == pytest.approx(table.rows["w/o ID reg"]["same.l1"].p_value)
