"""DVC stage `evaluate`: the evaluation harness on the `reenact` stage's videos (same identity, cross identity,
robustness; every adaptation) and on the `oracle` stage's (the reference row `oracle`). Outputs and MLflow runs:
pipeline/evaluate.py."""
from __future__ import annotations

from pipeline.ablation import params_tree, row_of_params
from pipeline.evaluate import evaluate_reenacted, log_runs, summary, write_outputs
from pipeline.paths import ORACLE, REENACTED
from pipeline.stage import Stage, StageContext, StageResult


def _assets(params) -> list[str]:
    """The asset files the listed metrics can need under the chosen backends."""
    from pipeline.evaluation.registry import METRICS

    ev, analysis = params.evaluate, params.analysis
    names = {m for p in ("same", "cross", "robustness") for m in getattr(ev.metrics, p)}
    nets = {METRICS[m].network for m in names}
    used = {"lpips": ["lpips_alexnet"], "inception": ["fid_inception"], "i3d": ["fvd_i3d"],
            "dlib_identity": ["dlib_face_descriptor"]}
    out = [a for net in sorted(nets, key=str) for a in used.get(net, [])]
    if names & {"fvd_m", "fvd_m_toy"}:
        out.append("dlib_landmarks68")  # where the index gives no landmarks
    backends = ({analysis.identity_metric} if "identity" in nets else set()) | \
               ({analysis.motion_metric} if "motion" in nets else set())
    if "arcface" in backends:
        out.append("arcface_ir_se50")
    if "dlib" in backends:
        out += ["dlib_landmarks68", "dlib_face_descriptor"]
    if "pyfeat" in backends:
        out += [a for a in params.assets if a.startswith("pyfeat_")]
    return sorted(set(out))


def run(ctx: StageContext) -> StageResult:
    ev = evaluate_reenacted(ctx.root / REENACTED, ctx.params, progress=ctx.progress, log=print,
                            oracle=ctx.root / ORACLE)
    artifacts = write_outputs(ev, ctx.root)
    # the whole params (not only the declared sections) name the ablation grid of the run: MLflow tags only,
    # never an output, so DVC's view of what the stage reads stays exact
    tags = log_runs(ev, params_tree(ctx.params.whole_for_tags()), ctx.params.seed)
    return StageResult(summary(ev), artifacts=artifacts, tags={**tags, "ablation": row_of_params(ctx.params)},
                       timings={f"evaluate.{k}": v for k, v in ev.timings.items()})


STAGE = Stage("evaluate", run, sections=("seed", "data", "model", "loss", "analysis", "evaluate", "assets"),
              assets=_assets)

if __name__ == "__main__":
    STAGE.main()
