"""ablations.json beside ablations.md / .html (pipeline/ablation.py, no MLflow): every row and reference row of the
table with the markdown's numbers, byte-identical on a rebuild, a missing reference absent (not null-filled); the
reference rows read generically from the evaluate results' `references` dict; what each row re-trained / re-ran,
from dvc.yaml; the committed JSONs (reports/ablations.json, reports/toy-full/ablations.json) checked where present."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

VIDEOS = ["v0", "v1", "v2"]


def _run(row, seed, aggregate, per_video=None):
    from pipeline.ablation import RowRun

    return RowRun(run_id=f"{row}-{seed}", row=row, seed=seed, aggregate=aggregate, per_video=per_video or {})


def _runs():
    """Two seeds of full / w/o ID reg / w/o CMA, same and cross identity; w/o ID reg's same-identity l1 worse on
    every video (significant), one pooled metric (fid_toy: pairs on seeds)."""
    out = []
    for seed in (0, 1):
        for row, shift in (("full", 0.0), ("w/o ID reg", 0.01), ("w/o CMA", 0.0003)):
            same = [0.08 + 0.001 * i + 0.0005 * seed + shift + (0.0002 * i if row == "w/o CMA" else 0) for i in range(3)]
            cross = [0.09 + 0.002 * i - 0.001 * seed + shift / 2 for i in range(3)]
            aggregate = {"same.l1": {"mean": sum(same) / 3, "lo": min(same), "hi": max(same)},
                         "same.fid_toy": {"mean": 1.0 + seed * 0.2 + shift * 10},
                         "cross.l1_gt": {"mean": sum(cross) / 3, "lo": min(cross), "hi": max(cross)}}
            per_video = {"same.l1": dict(zip(VIDEOS, same)), "cross.l1_gt": dict(zip(VIDEOS, cross))}
            out.append(_run(row, seed, aggregate, per_video))
    return out


def _results(seed: int, oracle: bool = True) -> dict:
    """The evaluate stage's results (reports/evaluate/<protocol>.json), only what the references need."""
    def agg(v):
        return {"mean": v, "std": None, "ci95": [v - 0.002, v + 0.002], "n": 3}

    same = {"copy_source": {"aggregate": {"l1": agg(0.085 + seed * 0.002), "fid_toy": agg(2.0)}, "per_video": {}},
            "copy_driving": {"aggregate": {"l1": agg(0.0)}, "per_video": {}}}
    cross = {"copy_source": {"aggregate": {"l1_gt": agg(0.094)}, "per_video": {}},
             "ground_truth": {"aggregate": {"l1_gt": agg(0.0)}, "per_video": {}}}
    if oracle:
        cross["oracle"] = {"aggregate": {"l1_gt": agg(0.07 + seed * 0.01)}, "per_video": {}}
    return {"same": {"references": same}, "cross": {"references": cross}}


def _references(oracle=True):
    from pipeline.ablation import ReferenceRun, references_from_results

    return [ReferenceRun(f"eval-{s}", s, references_from_results(_results(s, oracle))) for s in (0, 1)]


def _base():
    from pipeline.ablation import params_tree
    from pipeline.config import validate_params

    return params_tree(validate_params(yaml.safe_load((REPO / "params.yaml").read_text())))


def _table(references=None, plans=True):
    from pipeline.ablation import build_table, row_plans

    table = build_table(_runs(), grid="g0", resamples=2000, references=_references() if references is None
                        else references)
    if plans:
        table.plans = row_plans(table.rows, _base(), REPO / "dvc.yaml")
    table.overrides = {"pretrain.iters": 20}
    return table


# -- the markdown, read back --------------------------------------------------------------------------------

def markdown_tables(md: str) -> dict[str, dict[str, dict[str, str]]]:
    """{protocol: {row label: {metric: cell text}}} of an ablations.md's protocol tables."""
    from pipeline.ablation import PROTOCOL_TITLE

    by_title = {v: k for k, v in PROTOCOL_TITLE.items()}
    out: dict[str, dict[str, dict[str, str]]] = {}
    for section in md.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        if title.strip() not in by_title:
            continue
        lines = [ln for ln in body.splitlines() if ln.startswith("|")]
        header = [c.strip().rstrip(" ↑↓").strip() for c in lines[0].strip("|").split("|")][1:]
        rows = {}
        for ln in lines[2:]:
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            rows[cells[0]] = dict(zip(header, cells[1:]))
        out[by_title[title.strip()]] = rows
    return out


def _close(printed: str, value: float) -> bool:
    """`value` rounds to `printed` (3 significant digits, fmt): within half a unit of its last digit."""
    if printed == "0":
        return abs(value) < 1e-12
    mantissa = printed.split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(printed.split("e")[1]) if "e" in printed else 0
    return abs(float(printed) - value) <= 0.5 * 10 ** (exponent - decimals) * (1 + 1e-6) + 1e-12


_CELL = re.compile(r"^(?P<mean>\S+)(?: ± (?P<sd>\S+)| \[(?P<lo>\S+), (?P<hi>\S+)\])?(?P<star> \*)?$")


def assert_json_matches_markdown(data: dict, md: str) -> None:
    """Every row and reference row of every protocol table of the markdown is in the JSON with the same numbers
    (mean, sd over seeds or the one seed's CI, the significance mark), and the JSON has nothing the tables lack."""
    tables = markdown_tables(md)
    assert sorted(tables) == sorted(data["protocols"])
    labels = {**{r: ("rows", r) for r in data["rows"]},
              **{f"{ref['label']} (reference)": ("references", k) for k, ref in data["references"].items()}}
    for protocol, rows in tables.items():
        metrics = data["protocols"][protocol]["metrics"]
        assert list(next(iter(rows.values()))) == metrics, protocol
        in_json = {lab for lab, (kind, k) in labels.items() if protocol in data[kind][k]["metrics"]}
        assert set(rows) == in_json, protocol
        for label, cells in rows.items():
            kind, key = labels[label]
            have = data[kind][key]["metrics"][protocol]
            for metric, text in cells.items():
                if text == "—":
                    assert metric not in have, (label, metric)
                    continue
                cell = have[metric]
                m = _CELL.match(text)
                assert m, text
                assert _close(m["mean"], cell["mean"]), (label, metric, text, cell)
                if m["sd"]:
                    assert cell["n_seeds"] >= 2 and _close(m["sd"], cell["sd_seeds"]), (label, metric)
                if m["lo"]:
                    assert cell["n_seeds"] == 1 and _close(m["lo"], cell["ci95"][0]) and _close(m["hi"], cell["ci95"][1])
                assert bool(m["star"]) == bool(cell.get("vs_full", {}).get("significant")), (label, metric)


# -- tests --------------------------------------------------------------------------------------------------

def test_json_holds_every_row_and_reference_of_the_markdown(tmp_path):
    from pipeline.ablation import read_ablations_json, table_json, table_markdown

    table = _table()
    md, text = table_markdown(table), table_json(table)
    (tmp_path / "ablations.json").write_text(text)
    data = read_ablations_json(tmp_path / "ablations.json")
    assert_json_matches_markdown(data, md)
    assert data["row_order"] == ["full", "w/o ID reg", "w/o CMA"] and data["grid_hash"] == "g0"
    assert data["reference_order"] == ["copy_source", "copy_driving", "ground_truth", "oracle"]
    assert data["overrides"] == {"pretrain.iters": 20}
    cell = data["rows"]["w/o ID reg"]["metrics"]["same"]["l1"]
    t = table.rows["w/o ID reg"]["same.l1"]
    assert cell["mean"] == pytest.approx(t.mean, rel=1e-6) and cell["sd_seeds"] == pytest.approx(t.spread, rel=1e-5)
    assert cell["vs_full"] == {"difference": pytest.approx(t.difference, rel=1e-5), "n_pairs": 6, "significant": True,
                               "p_value": pytest.approx(t.p_value, rel=1e-5),
                               "verdict": "significantly worse than full"}
    assert data["rows"]["w/o ID reg"]["metrics"]["same"]["fid_toy"]["vs_full"]["n_pairs"] == 2  # pooled: on seeds
    assert "vs_full" not in data["rows"]["full"]["metrics"]["same"]["l1"]
    assert data["protocols"]["same"]["higher_is_better"] == {"l1": False, "fid_toy": False}
    # the references: mean over seeds ± sd; oracle's second seed is its own value (0.07, 0.08)
    oracle = data["references"]["oracle"]
    assert oracle["label"] == "oracle" and oracle["seeds"] == [0, 1] and oracle["runs"] == ["eval-0", "eval-1"]
    assert oracle["metrics"] == {"cross": {"l1_gt": {"mean": 0.075, "sd_seeds": pytest.approx(0.00707107), "n_seeds": 2}}}
    assert "| oracle (reference) | 0.0750 ± 0.0071 |" in md
    assert "| ground truth (reference) | 0 ± 0 |" in md
    # the reference's set metric (fid_toy of copy source) is a table metric: shown; no test on references
    assert data["references"]["copy_source"]["metrics"]["same"]["fid_toy"] == {"mean": 2.0, "n_seeds": 2, "sd_seeds": 0.0}
    assert not any("vs_full" in c for ref in data["references"].values() for p in ref["metrics"].values()
                   for c in p.values())
    assert text.endswith("}\n") and "NaN" not in text and "null" not in text and text.isascii()


def test_json_is_byte_identical_on_a_rebuild_with_sorted_keys_and_rounded_numbers():
    from pipeline.ablation import table_json

    first, second = table_json(_table()), table_json(_table())
    assert first == second
    data = json.loads(first)
    assert json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n" == first

    def numbers(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from numbers(v)
        elif isinstance(node, list):
            for v in node:
                yield from numbers(v)
        elif isinstance(node, float):
            yield node

    assert all(float(f"{x:.6g}") == x for x in numbers(data))


def test_a_missing_reference_is_absent_not_null():
    """Without the oracle in the evaluate results there is no `oracle` key at all; copy driving (same identity
    only) has no cross-identity entry; a reference row lacking a metric has no key for it."""
    from pipeline.ablation import table_json, table_markdown

    table = _table(references=_references(oracle=False))
    data = json.loads(table_json(table))
    assert "oracle" not in data["references"] and "oracle" not in data["reference_order"]
    assert list(data["references"]["copy_driving"]["metrics"]) == ["same"]
    assert list(data["references"]["copy_driving"]["metrics"]["same"]) == ["l1"]
    assert "fid_toy" not in data["references"]["copy_driving"]["metrics"]["same"]
    md = table_markdown(table)
    assert "oracle" not in md and "| copy driving (reference) | 0 ± 0 | — |" in md
    assert_json_matches_markdown(data, md)
    none = json.loads(table_json(_table(references=[])))
    assert none["references"] == {} and none["reference_order"] == []


def test_reference_rows_are_read_generically_from_the_results():
    """Any key of a result's `references` dict is a reference row (a new one needs no code), finite means only."""
    from pipeline.ablation import references_from_results

    results = _results(0)
    results["cross"]["references"]["some_new_ceiling"] = {"aggregate": {"l1_gt": {"mean": 0.01, "ci95": [0, 0.02]},
                                                                        "psnr_gt": {"mean": None}}}
    refs = references_from_results(results)
    assert sorted(refs) == ["copy_driving", "copy_source", "ground_truth", "oracle", "some_new_ceiling"]
    assert refs["some_new_ceiling"] == {"cross.l1_gt": {"mean": 0.01, "lo": 0.0, "hi": 0.02}}
    assert refs["copy_source"]["same.l1"] == pytest.approx({"mean": 0.085, "lo": 0.083, "hi": 0.087})
    assert references_from_results({"same": {"rows": {}}}) == {}


def test_reference_rows_of_the_workspace_evaluate_results():
    """The committed reports/evaluate/<protocol>.json: every reference key of theirs (oracle too, where the stage
    wrote it) becomes a reference row, with their numbers."""
    from pipeline.ablation import references_from_results

    results = {}
    for path in sorted((REPO / "reports" / "evaluate").glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "references" in data:
            results[data["protocol"]] = data
    if not results:
        pytest.skip("no reports/evaluate results in this checkout")
    refs = references_from_results(results)
    expected = {ref for r in results.values() for ref in r["references"]}
    assert set(refs) == expected
    for protocol, result in results.items():
        for ref, rows in result["references"].items():
            for metric, agg in rows["aggregate"].items():
                if isinstance(agg.get("mean"), float) and math.isfinite(agg["mean"]):
                    assert refs[ref][f"{protocol}.{metric}"]["mean"] == agg["mean"]


def test_one_seed_rows_and_references_give_the_ci():
    from pipeline.ablation import build_table, table_json, table_markdown

    runs = [r for r in _runs() if r.seed == 0]
    table = build_table(runs, grid="g1", resamples=200, references=_references()[:1])
    data = json.loads(table_json(table))
    cell = data["rows"]["full"]["metrics"]["same"]["l1"]
    assert cell["n_seeds"] == 1 and "sd_seeds" not in cell and cell["ci95"] == [0.08, 0.082]
    assert data["references"]["oracle"]["metrics"]["cross"]["l1_gt"]["ci95"] == [0.068, 0.072]
    assert_json_matches_markdown(data, table_markdown(table))


def test_what_each_row_ran_comes_from_dvc_yaml():
    """Stages from the keys a row's switches change, via dvc.yaml's `params`, downstream up to evaluate."""
    from pipeline.ablation import read_stages, row_plan, stages_affected

    base = _base()
    stages = read_stages(REPO / "dvc.yaml", base)
    assert f"assets.{base['generator']['checkpoint']}" in stages["generator"].params  # ${...} filled from params
    declares_loss = [n for n, st in stages.items() if any(p == "loss" or p.startswith("loss.") for p in st.params)]
    full = row_plan("full", base, stages)
    assert full.rerun == [] and full.changes == {} and full.text.startswith("none beyond the default")
    id_reg = row_plan("w/o ID reg", base, stages)
    assert id_reg.changes == {"loss.id_reg": False}
    assert id_reg.rerun == stages_affected(["loss.id_reg"], stages)
    assert set(declares_loss) <= set(id_reg.rerun) | {"report"}
    assert [s for s in ("pretrain", "finetune", "reenact", "evaluate") if s in id_reg.rerun] == \
        ["pretrain", "finetune", "reenact", "evaluate"]
    assert "report" not in id_reg.rerun and "data" not in id_reg.rerun  # no number comes from report
    assert id_reg.text.startswith("pretrain") and "finetune, reenact, evaluate" in id_reg.text
    assert "loss.id_reg=false: Eq. 9 off" in id_reg.text
    if base["pretrain"]["source"] == "train":
        assert id_reg.retrained == ["pretrain", "finetune"]
    hybrid = row_plan("w/o Hybrid", base, stages)
    assert hybrid.changes["model.hybrid"] is False and "E_F's output space changes" in hybrid.text
    assert {"pretrain", "finetune", "reenact", "evaluate"} <= set(hybrid.rerun)
    for row, adaptation in (("w/o CMA", "none"), ("CMA -> PTI", "pti")):
        plan = row_plan(row, base, stages)
        assert plan.rerun == [] and plan.retrained == [] and plan.encoder_of == "full" and plan.adaptation == adaptation
        assert plan.text.startswith("no re-training: another adaptation") and "full's encoder" in plan.text
    combo = row_plan("w/o Hybrid, w/o CMA", base, stages)
    assert combo.rerun == hybrid.rerun and combo.encoder_of == "w/o Hybrid" and combo.text.endswith("adaptation none")


def test_a_shipped_pretrain_is_said_and_a_row_it_cannot_serve_retrains():
    """pretrain.source native: w/o Hybrid (model.hybrid changes the encoder's heads) is queued with
    pretrain.source=train and says so; w/o ID reg re-runs pretrain as a reload, Eq. 9 acting from finetune on."""
    from pipeline.ablation import grid_commands, grid_hash, read_stages, row_plan

    base = _base()
    base["pretrain"]["source"] = "native"
    stages = read_stages(REPO / "dvc.yaml", base)
    hybrid = row_plan("w/o Hybrid", base, stages)
    assert hybrid.forced == {"pretrain.source": "train"} and hybrid.retrained[:2] == ["pretrain", "finetune"]
    assert "pretrain (re-trained: pretrain.source=train, the shipped encoder does not fit model.hybrid=false)" in hybrid.text
    id_reg = row_plan("w/o ID reg", base, stages)
    assert id_reg.forced == {} and "pretrain" in id_reg.rerun and id_reg.retrained == ["finetune"]
    assert "pretrain (pretrain.source=native: the shipped pre-trained encoder reloaded, not re-trained; " \
           "loss.id_reg=false acts from finetune on)" in id_reg.text
    full = row_plan("full", base, stages)
    assert full.rerun == [] and full.text == ("none beyond the default (pretrain.source=native: the shipped "
                                              "pre-trained encoder, not trained here, for every seed)")
    cmds = [" ".join(c) for c in grid_commands(["full", "w/o ID reg", "w/o Hybrid"], [0], base=base)]
    assert [("pretrain.source=train" in c) for c in cmds] == [False, False, True]
    trained = json.loads(json.dumps(base))
    trained["pretrain"]["source"] = "train"
    assert grid_hash(trained) == grid_hash(base)  # the forced row stays in its grid
    trained_cmds = grid_commands(["w/o Hybrid"], [0], base=trained)
    assert all("pretrain.source" not in " ".join(c) for c in trained_cmds)  # trained here anyway: nothing forced


def test_markdown_and_html_say_what_each_row_ran():
    from pipeline.ablation import table_html, table_markdown

    table = _table()
    md, html = table_markdown(table), table_html(table)
    assert "| row | seeds | runs | re-trained / re-ran |" in md
    for row, plan in table.plans.items():
        assert f"| {row} | 0, 1 | {f'{row}-0'[:8]}, {f'{row}-1'[:8]} | {plan.text} |" in md
    assert "<td class='plan'>none beyond the default" in html and "<td>oracle (reference)</td>" in html
    assert "re-trained / re-ran" not in table_markdown(_table(plans=False))


def test_row_config_inverts_row_name():
    from pipeline.ablation import row_config, row_name

    for id_reg in (True, False):
        for hybrid in (True, False):
            for adaptation in ("cma", "none", "pti", "other"):
                assert row_config(row_name(id_reg, hybrid, adaptation)) == (id_reg, hybrid, adaptation)


COMMITTED = [REPO / "reports" / "ablations.md", REPO / "reports" / "toy-full" / "ablations.md"]


def check_json_beside(md_path: Path) -> dict:
    """The ablations.json beside an ablations.md: well-formed, the table's numbers, every row's stages, no path."""
    from pipeline.ablation import read_ablations_json

    path = md_path.with_suffix(".json")
    data = read_ablations_json(path)
    assert_json_matches_markdown(data, md_path.read_text())
    for row in data["row_order"]:
        assert data["rows"][row]["seeds"] and "stages" in data["rows"][row], row
    text = path.read_text()
    assert "/work/" not in text and "/home/" not in text and "/tmp/" not in text
    return data


def test_the_committed_check_passes_on_a_fresh_pair_and_catches_a_null(tmp_path):
    from pipeline.ablation import AblationError, table_json, table_markdown

    table = _table()
    (tmp_path / "ablations.md").write_text(table_markdown(table))
    (tmp_path / "ablations.json").write_text(table_json(table))
    check_json_beside(tmp_path / "ablations.md")
    broken = json.loads(table_json(table))
    broken["references"]["oracle"]["metrics"]["cross"]["l1_gt"]["sd_seeds"] = None
    (tmp_path / "ablations.json").write_text(json.dumps(broken))
    with pytest.raises(AblationError, match=r"references.oracle.metrics.cross.l1_gt.sd_seeds is null"):
        check_json_beside(tmp_path / "ablations.md")


@pytest.mark.parametrize("md_path", COMMITTED, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_json_beside_each_committed_table(md_path):
    """Where a committed ablations.json sits beside the table, it is well-formed and has the table's numbers (the
    gate tests read their numbers from it). Written by `reenact ablate` (--table-only rebuilds it from mlflow.db)."""
    if not md_path.with_suffix(".json").is_file():
        pytest.skip(f"{md_path.with_suffix('.json').relative_to(REPO)}: not written yet (the next `reenact ablate` "
                    f"writes it)")
    check_json_beside(md_path)
