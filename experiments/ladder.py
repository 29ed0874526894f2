"""Part VII: the ladder from the GPT-2 recipe to the modern recipe, on Tiny Shakespeare, over seeds.

The first rung is the GPT-2 recipe: the ``shakespeare-char`` preset at ``--size``
(``gptcourse.run.preset``) with GPT-2's choices made explicit (learned positions, LayerNorm,
biases, AdamW, tied embeddings). Each later rung adds one change to the rung before it
(cumulative), as ``GPTConfig`` / ``TrainConfig`` overrides (:data:`RUNGS`):

    gpt2 -> +rope -> +rmsnorm -> +no-bias -> +qk-norm -> (+moe) -> +muon -> +relu2 -> (+swiglu)
    -> +untied -> +softcap -> +sssl

``+moe`` is a side rung: a Switch-style mixture of experts (4 GELU experts, top-1, so each token
pays the dense MLP's compute while the MLP holds 4 times the parameters) in place of the dense MLP
of ``+qk-norm``, on AdamW; ``+muon`` builds on ``+qk-norm``. ``+swiglu`` is a side rung: SwiGLU in
place of ReLU² (on ``+relu2``), at about equal parameters (``GPTConfig(mlp="swiglu")`` sizes its
hidden width with ``gptcourse.layers.swiglu_hidden``: the parameter column shows the small
difference its rounding leaves); the rungs after it build on ``+relu2``, as nanochat does. ``+sssl``
sets ``attn_window`` to half the context (nanochat's short window). A rung whose field ``GPTConfig``
does not have (``dataclasses.fields``) is skipped, and the ``SKIPPED`` line says which and why.

Every rung trains each seed of ``--seeds`` (one after another, seed by seed over the rungs, so a
partial output already compares the rungs) with the same steps, batches and schedule, and measures:

* ``val_steps``, held-out loss at equal steps: the last ``eval_val_loss`` (after ``max_steps``);
* ``val_time``, held-out loss at equal wall time: let ``T`` be the GPT-2 rung's total time for the
  same seed (``history.elapsed[-1]``: wall seconds from the start of training to the end of its
  last evaluation, evaluations included). ``val_time`` is the ``eval_val_loss`` of the first
  evaluation whose ``elapsed >= T``; a rung that finishes sooner than ``T`` (it never reaches
  ``T``) reports its last evaluation and ``time_reached: false`` (it stopped early: an upper
  bound on the loss the rest of the time would have reached). For GPT-2, ``val_time == val_steps``;
* ``tokens_per_s`` (mean over the evaluation windows, evaluation excluded), ``params``,
  ``seconds`` (the whole ``train`` call);
* ``steps_to_target``: the first evaluation step whose val loss is at or below the GPT-2 rung's
  final val loss (same seed), None if none is. The headline (``TARGET`` line) is that of the
  final rung: its steps against the GPT-2 rung's own (normally ``max_steps``), and the ratio.

Evaluations run every ``--eval-interval`` steps (default a fifth of the preset's, so the steps to
target and the wall-time point are resolved finely), on the same held-out batches each time.
Printed: the device and size (first line), ``SKIPPED``, ``CONFIG``, one ``RUN`` JSON line per
run as it finishes, then a table (mean ± std over seeds, and the values), one ``LADDER`` JSON line
per rung (what a chapter loads: the seeds and every value listed) and the ``TARGET`` line.
``--out FILE`` writes all of it to ``FILE`` as well. ``--budget-s`` stops cleanly before a run
that would not finish within the budget (judged from the longest run so far) and prints what did.

Run (the cpu size's model and batches; the preset's 3000 steps make 11 to 15 minutes a run on one
thread, 7 to 8 hours for 36 runs, so the committed run, ``experiments/results/ladder-cpu.txt``,
trains a sixth of them: 500 steps, evaluated every 50, about 2.5 minutes a run and 1.5 hours in all
on one thread of the 2-core machine)::

    OMP_NUM_THREADS=1 python experiments/ladder.py --size cpu --seeds 0 1 2 --steps 500 --eval-interval 50 \\
        --out experiments/results/ladder-cpu.txt
    OMP_NUM_THREADS=1 python experiments/ladder.py --size cpu --seeds 0 1 2      # the preset's 3000 steps
    OMP_NUM_THREADS=1 python experiments/ladder.py --size smoke --seeds 0 1 --steps 10   # a check

Seeds can also run apart (side by side, one thread each, or on other machines) and be merged into
one ladder, the same lines as one run would print (``--merge``). The committed output was made so:
seeds 0 and 1 in one process and seed 2 in another, side by side; 18 minutes in, seed 1 was started
in a third process and the first stopped after seed 0 (its outputs are in
``experiments/results/ladder-cpu-runs/``)::

    cd experiments/results/ladder-cpu-runs
    python ../../ladder.py --merge seeds01.txt:0 seed1.txt seed2.txt --out ../ladder-cpu.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from gptcourse.hardware import describe, get_device, get_size
from gptcourse.model import GPT, GPTConfig
from gptcourse.run import prepare_data, preset
from gptcourse.train import TrainConfig, train

GPT2 = dict(model=dict(pos="learned", norm_type="layernorm", bias=True, qk_norm=False), train=dict(optimizer="adamw"))

# name -> (GPTConfig overrides, TrainConfig overrides, the rung it builds on: None = the one before)
RUNGS: dict[str, tuple[dict, dict, str | None]] = {
    "gpt2": (GPT2["model"], GPT2["train"], None),
    "+rope": (dict(pos="rope"), {}, None),
    "+rmsnorm": (dict(norm_type="rmsnorm"), {}, None),
    "+no-bias": (dict(bias=False), {}, None),
    "+qk-norm": (dict(qk_norm=True), {}, None),
    # a side rung: a Switch-style MoE (4 experts, top-1: the dense rung's active compute, 4x its MLP
    # parameters) in place of the dense GELU MLP, on +qk-norm; the next rung builds on +qk-norm
    "+moe": (dict(ffn="moe", n_expert=4, expert_top_k=1), {}, "+qk-norm"),
    "+muon": ({}, dict(optimizer="muon"), None),
    "+relu2": (dict(mlp="relu2"), {}, None),
    "+swiglu": (dict(mlp="swiglu"), {}, "+relu2"),  # a side rung: the next builds on +relu2
    "+untied": (dict(tie_embeddings=False), {}, None),  # on +relu2 (side rungs are passed over)
    "+softcap": (dict(logit_softcap=15.0), {}, None),
    "+sssl": (dict(window_pattern="SSSL"), {}, None),
}
SIDE = {"+moe", "+swiglu"}  # rungs off the main line: the final rung is the last one not in here


class Tee:
    """Print to stdout and, when given, to a file as well (line by line, flushed)."""

    def __init__(self, path: str | None):
        self.file = open(path, "w") if path else None  # noqa: SIM115 (closed in close())

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def build_rungs(block_size: int) -> tuple[dict[str, tuple[dict, dict]], dict[str, str]]:
    """The rungs this ``GPTConfig`` can build, each as its full ``(model overrides, train overrides)``
    (cumulative), and the skipped ones with the reason."""
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    built: dict[str, tuple[dict, dict]] = {}
    skipped: dict[str, str] = {}
    previous = None
    for name, (model_over, train_over, base) in RUNGS.items():
        missing = [k for k in model_over if k not in fields] + [k for k in train_over if k not in train_fields]
        base = base if base is not None else previous
        if missing:
            skipped[name] = f"GPTConfig has no field {', '.join(repr(k) for k in missing)}"
            continue
        if base is not None and base not in built:
            skipped[name] = f"it builds on {base}, which was skipped"
            continue
        model_kwargs, train_kwargs = ({}, {}) if base is None else (dict(built[base][0]), dict(built[base][1]))
        model_kwargs.update(model_over)
        train_kwargs.update(train_over)
        if name == "+sssl" and "attn_window" in fields:
            model_kwargs["attn_window"] = max(1, block_size // 2)  # nanochat's short window: half the context
        built[name] = (model_kwargs, train_kwargs)
        if name not in SIDE:
            previous = name
    return built, skipped


def first_at_or_below(steps: list[int], losses: list[float], target: float) -> int | None:
    """The first evaluation step whose loss is ``<= target``, or None."""
    return next((s for s, v in zip(steps, losses) if v <= target), None)


def run(
    name: str,
    overrides: tuple[dict, dict],
    seed: int,
    base: tuple[dict, dict],
    data: tuple[torch.Tensor, torch.Tensor, int],
    device: str,
    gpt2: dict | None,
) -> dict:
    """Train rung ``name`` with ``seed``; what it measured (``gpt2``: that seed's GPT-2 run, None for it)."""
    train_ids, val_ids, vocab = data
    model_kwargs = {**base[0], **overrides[0], "vocab_size": vocab}
    train_kwargs = {**base[1], **overrides[1], "seed": seed, "progress": False}
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**model_kwargs))
    start = time.perf_counter()
    history = train(model, train_ids, val_ids, TrainConfig(**train_kwargs), device)
    seconds = time.perf_counter() - start
    steps, vals, elapsed = history.eval_steps, history.eval_val_loss, history.elapsed
    wall = elapsed[-1] if gpt2 is None else gpt2["wall_s"]
    at = next((i for i, t in enumerate(elapsed) if t >= wall), None)
    target = vals[-1] if gpt2 is None else gpt2["val_steps"]
    return {
        "rung": name,
        "seed": seed,
        "params": model.num_params(),
        "val_steps": round(vals[-1], 4),
        "val_time": round(vals[-1 if at is None else at], 4),
        "time_reached": at is not None,
        "time_step": steps[-1 if at is None else at],
        "wall_s": round(elapsed[-1], 2),
        "steps_to_target": first_at_or_below(steps, vals, target),
        "target": round(target, 4),
        "tokens_per_s": round(sum(history.tokens_per_s) / len(history.tokens_per_s)),
        "seconds": round(seconds, 2),
        "eval_steps": steps,
        "eval_val_loss": [round(v, 4) for v in vals],
        "elapsed": [round(t, 2) for t in elapsed],
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict], built: dict) -> list[dict]:
    """One dict per rung that ran: the seeds, every value listed, mean and std."""
    out = []
    for name in built:
        rows = [r for r in runs if r["rung"] == name]
        if not rows:
            continue
        entry: dict = {
            "rung": name,
            "model": built[name][0],
            "train": built[name][1],
            "seeds": [r["seed"] for r in rows],
        }
        for key in ("val_steps", "val_time", "tokens_per_s", "seconds", "params"):
            values = [r[key] for r in rows]
            m, s = mean_std(values)
            entry[key] = {"mean": round(m, 4), "std": round(s, 4), "values": values}
        entry["time_reached"] = [r["time_reached"] for r in rows]
        entry["steps_to_target"] = [r["steps_to_target"] for r in rows]
        out.append(entry)
    return out


def pm(entry: dict, key: str, digits: int) -> str:
    """``mean ± std`` of ``entry[key]``."""
    return f"{entry[key]['mean']:.{digits}f} ± {entry[key]['std']:.{digits}f}"


def table(summary: list[dict]) -> list[str]:
    """The printed table: one row per rung (``ROW`` lines), mean ± std over seeds, values listed."""
    head = (
        f"{'':4}{'rung':<10} {'params':>8} {'val@steps':>16} {'val@time':>16}  {'tok/s':>14} {'s/run':>12}  "
        "values (val@steps; val@time)"
    )
    lines = [head, "-" * len(head)]
    for e in summary:
        star = " " if all(e["time_reached"]) else "*"
        values = (
            ", ".join(f"{v:.4f}" for v in e["val_steps"]["values"])
            + "; "
            + ", ".join(f"{v:.4f}" for v in e["val_time"]["values"])
        )
        lines.append(
            f"ROW {e['rung']:<10} {int(e['params']['mean']):>8,} {pm(e, 'val_steps', 4):>16} "
            f"{pm(e, 'val_time', 4):>16}{star} {pm(e, 'tokens_per_s', 0):>14} {pm(e, 'seconds', 1):>12}  {values}"
        )
    lines.append("* finished before the GPT-2 rung's time: its last evaluation (see the docstring)")
    return lines


def report(out: Tee, runs: list[dict], built: dict, final: str) -> None:
    """Print the table, one ``LADDER`` line per rung and the ``TARGET`` headline of ``runs``."""
    summary = summarise(runs, built)
    out()
    for line in table(summary):
        out(line)
    out()
    for entry in summary:
        out("LADDER " + json.dumps(entry))
    by_seed = {r["seed"]: r for r in runs if r["rung"] == "gpt2"}
    finals = [r for r in runs if r["rung"] == final and r["seed"] in by_seed]
    per_seed = []
    for r in finals:
        g = by_seed[r["seed"]]
        base_steps = g["steps_to_target"]
        ratio = None if r["steps_to_target"] is None else round(base_steps / r["steps_to_target"], 3)
        per_seed.append(
            {
                "seed": r["seed"],
                "target": g["val_steps"],
                "gpt2_steps": base_steps,
                "steps": r["steps_to_target"],
                "ratio": ratio,
            }
        )
    ratios = [p["ratio"] for p in per_seed if p["ratio"] is not None]
    headline = {
        "final": final,
        "per_seed": per_seed,
        "ratio_mean": round(statistics.fmean(ratios), 3) if ratios else None,
        "ratio_std": round(statistics.stdev(ratios), 3) if len(ratios) > 1 else None,
    }
    out("TARGET " + json.dumps(headline))
    if ratios:
        out(
            f"# headline: {final} reaches the GPT-2 recipe's final val loss in 1/{headline['ratio_mean']:.2f} "
            f"of its steps (gpt2 steps / {final} steps = {', '.join(f'{x:.2f}' for x in ratios)})"
        )


def read_output(path: str) -> tuple[list[str], dict, list[dict]]:
    """The lines of a ladder's printed output (``--out``), its ``CONFIG`` and its ``RUN`` results.

    ``path`` may end in ``:SEEDS`` (``out.txt:0`` or ``out.txt:0,2``) to take only those seeds'
    runs, e.g. from an output whose process was stopped part of the way through a seed."""
    path, _, wanted = path.partition(":")
    lines = Path(path).read_text().splitlines()
    configs = [json.loads(line[len("CONFIG ") :]) for line in lines if line.startswith("CONFIG ")]
    if len(configs) != 1:
        raise ValueError(f"{path}: not a ladder output (expected one CONFIG line, found {len(configs)})")
    runs = [json.loads(line[len("RUN ") :]) for line in lines if line.startswith("RUN ")]
    if wanted:
        seeds = {int(s) for s in wanted.split(",")}
        runs = [r for r in runs if r["seed"] in seeds]
    return lines, configs[0], runs


def merge(paths: list[str], out: Tee) -> None:
    """Print one ladder from the outputs of runs made separately (other seeds, other processes), as
    if one run had made them: the same table, ``LADDER`` and ``TARGET`` lines. Their sizes, models,
    schedules and rungs must agree and their seeds must not overlap (``ValueError`` otherwise).
    Equal wall time is judged within each seed, so seeds run side by side compare as fairly as
    seeds run one after another on an equally loaded machine."""
    outputs = [read_output(p) for p in paths]
    first = outputs[0][1]
    same = ("size", "device", "model", "train", "rungs", "final")
    seen: dict[int, str] = {}
    for path, (_, config, runs) in zip(paths, outputs, strict=True):
        for key in same:
            if config[key] != first[key]:
                raise ValueError(f"{path}: its {key} differs from {paths[0]}'s, so their runs do not form one ladder")
        for seed in sorted({r["seed"] for r in runs}):
            if seed in seen:
                raise ValueError(f"seed {seed} is in both {seen[seed]} and {path}")
            seen[seed] = path
    order = list(first["rungs"])
    runs = sorted((r for _, _, rs in outputs for r in rs), key=lambda r: (r["seed"], order.index(r["rung"])))
    out(f"{outputs[0][0][0]} | merged from {len(paths)} outputs")
    for path, (lines, _, rs) in zip(paths, outputs, strict=True):
        out(f"# merged: {Path(path).name}: seeds {sorted({r['seed'] for r in rs})}, {len(rs)} runs | {lines[0]}")
    out(next(line for line in outputs[0][0] if line.startswith("SKIPPED ")))
    out("CONFIG " + json.dumps({**first, "seeds": sorted(seen), "merged_from": [Path(p).name for p in paths]}))
    for r in runs:
        out("RUN " + json.dumps(r))
    built = {name: (v["model"], v["train"]) for name, v in first["rungs"].items()}
    report(out, runs, built, first["final"])
    out(f"TIME {sum(r['seconds'] for r in runs):.1f} s of training in all, {len(runs)} runs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["smoke", "cpu", "gpu"], default=get_size())
    parser.add_argument("--device", default=get_device())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the seeds, run one after another")
    parser.add_argument("--rungs", nargs="*", default=None, choices=list(RUNGS), help="a subset (gpt2 always runs)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's max_steps (a quick check)")
    parser.add_argument("--eval-interval", type=int, default=None, help="default: the preset's / 5")
    parser.add_argument("--budget-s", type=float, default=None, help="stop before a run that would end past this")
    parser.add_argument("--out", default=None, help="write the printed output to this file too")
    parser.add_argument("--merge", nargs="+", default=None, metavar="OUTPUT", help="print one ladder of these outputs")
    args = parser.parse_args(argv)
    if args.merge:
        out = Tee(args.out)
        merge(args.merge, out)
        out.close()
        return
    seeds = args.seeds
    t0 = time.perf_counter()
    out = Tee(args.out)
    model_kwargs, train_kwargs = preset("shakespeare-char", args.size)
    if args.steps is not None:
        train_kwargs["max_steps"] = args.steps
        train_kwargs["warmup_steps"] = min(train_kwargs.get("warmup_steps", 0), max(0, args.steps // 10))
    interval = args.eval_interval or max(1, train_kwargs["eval_interval"] // 5)
    train_kwargs["eval_interval"] = min(interval, train_kwargs["max_steps"])
    machine = describe().replace(f"size: {get_size()}", f"size: {args.size}")  # the size this ladder runs
    out(f"# ladder | {machine} | run on: {args.device}")
    built, skipped = build_rungs(model_kwargs["block_size"])
    if args.rungs:
        built = {k: v for k, v in built.items() if k == "gpt2" or k in args.rungs}
    out("SKIPPED " + json.dumps(skipped))  # rung -> why; {} when every rung's fields exist
    for name, reason in skipped.items():
        out(f"# skipped {name}: {reason}")
    if not skipped:
        out("# skipped: none (GPTConfig has every rung's fields)")
    final = [k for k in built if k not in SIDE][-1]
    train_ids, val_ids, tokenizer = prepare_data("shakespeare-char")
    data = (train_ids, val_ids, tokenizer.vocab_size)
    config = {
        "size": args.size,
        "device": args.device,
        "model": model_kwargs,
        "train": train_kwargs,
        "rungs": {k: {"model": v[0], "train": v[1]} for k, v in built.items()},
        "final": final,
        "seeds": seeds,
        "budget_s": args.budget_s,
    }
    out("CONFIG " + json.dumps(config))
    runs: list[dict] = []
    stopped = None
    for seed in seeds:
        gpt2 = None
        for name, overrides in built.items():
            longest = max((r["seconds"] for r in runs), default=0.0)
            if args.budget_s is not None and time.perf_counter() - t0 + longest > args.budget_s:
                stopped = f"budget {args.budget_s:g} s: stopped before {name} seed {seed}"
                break
            result = run(name, overrides, seed, (model_kwargs, train_kwargs), data, args.device, gpt2)
            if name == "gpt2":
                gpt2 = result
            runs.append(result)
            out("RUN " + json.dumps(result))
        if stopped:
            break
    if stopped:
        out(f"STOPPED {stopped}; {len(runs)} runs finished")
    report(out, runs, built, final)
    out(f"TIME {time.perf_counter() - t0:.1f} s in all, {len(runs)} runs")
    out.close()


if __name__ == "__main__":
    main()
