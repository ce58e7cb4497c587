"""Bench's analysis stage: behavioural similarity to RLVR and SAE-feature overlap, per task.

Reads the finished evaluation stages (their `samples.jsonl` and CRL intervention logs), the
vector sweeps' fitted directions and the RLVR adapters, and writes

- `results/<model>/similarity.{json,md}`: every method vs RLVR (`crl_bench.analyses.similarity`), with base vs
  RLVR beside it;
- `results/<model>/overlap.{json,md}`: the features each method implicates at the SAE layer and their
  pairwise top-k overlap with a frequency-matched permutation null (`crl_bench.analyses.overlap`);
- `results/<model>/circuits.{json,md}`: attribution-patching circuits (`crl_bench.analyses.circuits`);
- `results/<model>/interactions.{json,md}`: how the choices of CRL controllers with several layers or
  generated tokens depend on each other (`crl_bench.analyses.interactions`).

Tasks without an RLVR run get no similarity rows; methods that implicate no features at the
SAE layer are listed with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crl_bench.bench_config import BenchConfig
from harness.models import model_results

TOP_K = 20
SHIFT_PROMPTS = 64


def _label(stage: Any) -> str:
    setting = stage.settings.get("setting")
    return stage.method if not setting else f"{stage.method}:{setting}"


def similarity_rows(stages: list, reserved: dict[str, frozenset[int]]) -> list[dict[str, Any]]:
    from crl_bench.analyses.similarity import read_behaviour, similarity

    rows = []
    for task in sorted({s.task for s in stages}):
        mine = [s for s in stages if s.task == task and (s.run_dir / "samples.jsonl").exists()]
        base = next((s for s in mine if s.method == "base"), None)
        rlvr = sorted((s for s in mine if s.method == "rlvr"), key=lambda s: s.settings["seed"])
        if base is None or not rlvr:
            continue
        exclude = reserved.get(task, frozenset())
        read = lambda s: read_behaviour(s.run_dir / "samples.jsonl", exclude=exclude)  # noqa: E731
        base_b, rlvr_b = read(base), read(rlvr[0])
        for stage in mine:
            if stage.method == "rlvr":
                continue
            result = similarity(read(stage), rlvr_b, base_b)
            rows.append({"task": task, "method": _label(stage), "seed": stage.settings["seed"], **result.to_dict()})
    return rows


def _frequency(sae: Any, model: Any, tokenizer: Any, prompts: list[str]) -> np.ndarray:
    """Float[d_sae]: the share of the prompts' tokens (BOS excluded) each feature fires on."""
    return (_encoded(model, tokenizer, sae, prompts) > 0).mean(0)


def _encoded(model: Any, tokenizer: Any, sae: Any, prompts: list[str], batch_size: int = 8) -> np.ndarray:
    import torch

    from harness.activations import residuals
    from harness.padding import batch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids, mask = batch(tokenizer, prompts[start : start + batch_size], device)
            real = mask.bool().clone()
            real[torch.arange(len(ids)), mask.shape[1] - mask.sum(-1)] = False  # BOS
            acts = residuals(model, ids, mask, layers=[sae.layer])[sae.layer][real]
            out.append(sae.encode(acts).float().cpu())
    return torch.cat(out).numpy()


def feature_weights(
    config: BenchConfig, task: str, stages: list, sae: Any, model: Any, tokenizer: Any, prompts: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per method, its weighting over the SAE's features at the SAE layer (and why any is missing)."""
    from baselines.train import fit_at_layer, fitted_directions
    from crl_bench.analyses.overlap import activation_shift, crl_weights, vector_weights

    weights: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    decoder = sae.directions().float().cpu().numpy()
    mine = [s for s in stages if s.task == task]
    for stage in mine:
        label = _label(stage)
        if stage.method in ("crl", "crl-lm", "csft"):  # the features its controller added, from its log
            log = stage.run_dir / "interventions.jsonl"
            if log.exists():
                weights[label] = crl_weights(log, sae.d_sae, layer=sae.layer)
                if not weights[label].any():
                    missing[label] = f"chose no feature at layer {sae.layer}"
                    del weights[label]
    for stage in (s for s in mine if s.method in ("rl-vector", "corrsteer")):  # its vector at the SAE layer
        from harness.vectors import SteeringVectors

        trained = SteeringVectors.load(stage.artifact).vectors
        if sae.layer in trained:
            weights[_label(stage)] = vector_weights(trained[sae.layer].float().numpy(), decoder)
        else:
            missing[_label(stage)] = f"has no vector at the SAE layer {sae.layer}"
    vector_stages = [s for s in mine if s.method == "vector"]
    if vector_stages:
        from crl_bench.bench_config import vector_config

        vectors = vector_config(config, task)
        directions = fitted_directions(vectors, sae.layer)
        wanted = {s.settings["setting"] for s in vector_stages}
        if wanted - {"das"} - set(directions):
            directions = {**fit_at_layer(vectors, sae.layer, model, tokenizer), **directions}
        for method in sorted(wanted):
            if method in directions:
                weights[f"vector:{method}"] = vector_weights(directions[method].float().numpy(), decoder)
            else:
                missing[f"vector:{method}"] = f"not fitted at the SAE layer {sae.layer} (DAS is trained at one layer)"
    rlvr = sorted((s for s in mine if s.method == "rlvr"), key=lambda s: s.settings["seed"])
    if rlvr:
        from peft import PeftModel

        before = _encoded(model, tokenizer, sae, prompts)
        tuned = PeftModel.from_pretrained(model, str(rlvr[0].adapter)).eval()
        try:
            after = _encoded(tuned, tokenizer, sae, prompts)
        finally:
            tuned.unload()  # leaves the shared base model as it was
        weights["rlvr"] = activation_shift(before, after)
    return weights, missing


CIRCUIT_ITEMS = 32


def _items(config: BenchConfig, default: int) -> int:
    """Validation items an analysis reads: its default, or fewer under `--limit` (a quick run stays quick)."""
    return min(default, config.limit) if config.limit else default


K_COMPONENTS = 10
K_FEATURES = 20


def circuit_rows(config: BenchConfig, task: str, stages: list, sae: Any, model: Any, tokenizer: Any) -> dict[str, Any]:
    """Attribution-patching circuits of each method on one one-token task (`crl_bench.analyses.circuits`):
    top components and SAE features, the share of the method's own change they recover when
    patched, their overlap between methods, and the share of RLVR's change each method's
    nodes recover."""
    from crl_bench.analyses.circuits import (
        attribution,
        make_batches,
        node_overlap,
        patched_metric,
        recovered,
        top_nodes,
    )
    from harness.models import load_causal_lm
    from harness.splits import method_splits
    from harness.tasks import load_task
    from harness.vectors import SteeringVectors
    from rl.crl.controller import ControllerRun, at_decision, load_controller
    from rl.crl.rollouts import build_problem

    task_obj = load_task(task)
    docs = method_splits(task_obj).validation[: _items(config, CIRCUIT_ITEMS)]
    problem = build_problem(task_obj, docs, tokenizer, config.seed)
    if problem.kind != "one-token-choices":
        return {
            "skipped": f"circuits need one-token choices (logit difference at the answer); {task} has {problem.kind}"
        }
    device = next(model.parameters()).device
    batches = make_batches(tokenizer, problem, 8, device)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = text_config.num_attention_heads
    methods: dict[str, tuple[Any, Any]] = {}
    rlvr_model = None
    for stage in (s for s in stages if s.task == task):
        if stage.method in ("vector", "rl-vector", "corrsteer"):
            methods[_label(stage)] = (model, [SteeringVectors.load(stage.artifact).intervention()])
        elif stage.method in ("crl-lm", "csft"):  # its controller at every token, as crl_steered runs it
            from rl.crl.through_lm.gate import load_gate

            methods[_label(stage)] = (model, [load_gate(stage.controller, device=device)])
        elif stage.method == "crl" and stage.settings.get("setting") != "generation":
            controller, bank = load_controller(stage.controller, device=device)

            def decide(b, controller=controller, bank=bank):
                return [
                    ControllerRun(
                        controller, bank, at_decision(b.mask.sum(-1) - 1), mode="greedy", keep_residuals=False
                    ).intervention()
                ]

            methods[_label(stage)] = (model, decide)
        elif stage.method == "rlvr" and rlvr_model is None:
            from peft import PeftModel

            copy, _ = load_causal_lm(config.model, dtype="float32", device=device)
            rlvr_model = PeftModel.from_pretrained(copy, str(stage.adapter)).eval()
            methods["rlvr"] = (rlvr_model, [])
    universe = [("head", l, h) for l in range(text_config.num_hidden_layers) for h in range(n_heads)] + [
        ("mlp", l, 0) for l in range(text_config.num_hidden_layers)
    ]
    found: dict[str, dict[str, Any]] = {}
    for name, (method_model, interventions) in methods.items():
        scores, metrics = attribution(model, method_model, batches, n_heads, sae, interventions)
        components = top_nodes(scores, K_COMPONENTS, ("head", "mlp"))
        features = top_nodes(scores, K_FEATURES, ("sae",))
        patched = patched_metric(model, method_model, batches, n_heads, components + features, sae, interventions)
        found[name] = {
            "metric_base": metrics["base"],
            "metric_method": metrics["method"],
            "components": [list(n) for n in components],
            "features": [n[2] for n in features],
            "scores": {f"{k}:{l}:{i}": scores[(k, l, i)] for k, l, i in components + features},
            "recovered_by_own_nodes": recovered(patched, metrics["base"], metrics["method"]),
        }
        if rlvr_model is not None and name != "rlvr":
            found[name]["_rlvr_patched"] = patched_metric(
                model, rlvr_model, batches, n_heads, components + features, sae, []
            )
    if "rlvr" in found:
        for name, entry in found.items():
            if "_rlvr_patched" in entry:
                entry["rlvr_change_recovered"] = recovered(
                    entry.pop("_rlvr_patched"), found["rlvr"]["metric_base"], found["rlvr"]["metric_method"]
                )
    pairs = []
    names = sorted(found)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            comp = node_overlap(
                [tuple(n) for n in found[a]["components"]], [tuple(n) for n in found[b]["components"]], universe
            )
            feats = node_overlap(
                [("sae", sae.layer, f) for f in found[a]["features"]],
                [("sae", sae.layer, f) for f in found[b]["features"]],
                [("sae", sae.layer, f) for f in range(sae.d_sae)],
            )
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "components_jaccard": comp["jaccard"],
                    "components_p": comp["p"],
                    "features_jaccard": feats["jaccard"],
                    "features_p": feats["p"],
                }
            )
    if rlvr_model is not None:
        rlvr_model.unload()
    return {"items": len(problem.prompts), "methods": found, "pairs": pairs}


def run(
    config: BenchConfig, stages: list, reserved: dict[str, frozenset[int]], console: Any, times: Any = None
) -> None:
    """Every analysis of a bench run, each on its own row of the run's stage table (`times`)."""
    from contextlib import nullcontext

    def timed(name: str, task: str = "-") -> Any:
        return times(f"analyses: {name}", task) if times is not None else nullcontext()

    with timed("similarity"):
        _similarity(config, stages, reserved, console)
    if config.sae == "none":
        return
    from harness.models import default_device, load_causal_lm, model_info
    from harness.sae import load_sae

    results = model_results(config.results_dir, config.model)
    info = model_info(config.model)
    device = config.device or default_device()  # the run's device: attribution patching on the GPU where there is one
    with timed("SAE-feature overlap"):
        sae = load_sae(config.sae, info, config.sae_layer, device=device, corpus=config.sae_corpus)
        model, tokenizer = load_causal_lm(config.model, dtype="float32", device=device)
        _overlap(config, stages, sae, model, tokenizer, console)
    tasks = {s.task for s in stages}
    with timed("circuits"):
        circuits = {task: circuit_rows(config, task, stages, sae, model, tokenizer) for task in sorted(tasks)}
        _publish(
            results,
            "circuits",
            "tasks",
            config,
            lambda old: {**old, **circuits},
            lambda merged: render_circuits(merged, sae.layer),
        )
    console.print(f"analysis: {results / 'circuits.md'}")
    del model
    with timed("interactions"):
        interaction_rows(config, stages, results, console)


def _similarity(config: BenchConfig, stages: list, reserved: dict[str, frozenset[int]], console: Any) -> None:
    results = model_results(config.results_dir, config.model)  # another model's analyses live beside it
    tasks = {s.task for s in stages}
    sim = similarity_rows(stages, reserved)
    # like the leaderboard, results of tasks this run did not cover are kept
    sim = _publish(
        results,
        "similarity",
        "rows",
        config,
        lambda old: [r for r in old if r["task"] not in tasks] + sim,
        render_similarity,
    )
    console.print(f"analysis: {results / 'similarity.md'} ({len(sim)} rows)")


def _overlap(config: BenchConfig, stages: list, sae: Any, model: Any, tokenizer: Any, console: Any) -> None:
    from crl_bench.analyses.overlap import overlap_table, top_k
    from harness.prompts import task_prompts
    from harness.splits import method_splits
    from harness.tasks import load_task

    results = model_results(config.results_dir, config.model)
    overlap = {}
    for task in sorted({s.task for s in stages}):
        docs = method_splits(load_task(task)).validation[: _items(config, SHIFT_PROMPTS)]
        prompts = task_prompts(load_task(task), docs, seed=config.seed)
        weights, missing = feature_weights(config, task, stages, sae, model, tokenizer, prompts)
        frequency = _frequency(sae, model, tokenizer, prompts)
        overlap[task] = {
            "layer": sae.layer,
            "sae": sae.name,
            "k": TOP_K,
            "missing": missing,
            "top": {name: top_k(w, TOP_K) for name, w in weights.items()},
            "pairs": overlap_table(weights, frequency, k=TOP_K),
        }
    _publish(results, "overlap", "tasks", config, lambda old: {**old, **overlap}, render_overlap)
    console.print(f"analysis: {results / 'overlap.md'}")


def interaction_rows(config: BenchConfig, stages: list, results: Path, console: Any) -> None:
    """`results/<model>/interactions.{json,md}` for every CRL stage of the multi-layer and generation
    settings, with the model in the dtype the controllers were trained and evaluated in."""
    from crl_bench.analyses.interactions import analyse, render, steered_nothing
    from harness.models import default_device, load_causal_lm
    from harness.tasks import load_task

    chosen = [s for s in stages if s.method == "crl" and s.settings.get("setting") in ("multi-layer", "generation")]
    if not chosen:
        return
    model, tokenizer = load_causal_lm(config.model, dtype=config.dtype, device=config.device or default_device())
    found: dict[str, dict[str, Any]] = {}
    for stage in chosen:
        args = (stage.controller, stage.settings["setting"], load_task(stage.task), model, tokenizer, config.seed)
        entry = found.setdefault(stage.task, {})
        entry[_label(stage)] = analyse(*args)
        if steered_nothing(entry[_label(stage)]):  # then the policy it was trained as, sampling
            entry[f"{_label(stage)} (sampled)"] = analyse(*args, mode="sample")
    _publish(results, "interactions", "tasks", config, lambda old: {**old, **found}, render)
    console.print(f"analysis: {results / 'interactions.md'}")


def _publish(results: Path, name: str, key: str, config: BenchConfig, merge: Any, render_md: Any) -> Any:
    """Merge this run's entries into `<name>.json` (entries of tasks it did not cover are kept,
    as the leaderboard keeps rows; an entry it replaces without re-running all of its methods is
    kept under `earlier`: `crl_bench.analyses.earlier`) and rewrite `<name>.md`, under the results
    folder's lock so that runs writing one folder at once keep each other's entries. Returns the
    merged entries."""
    import json

    from crl_bench.analyses.earlier import displaced, render_earlier
    from harness.manifest import build_manifest, results_lock, write_json, write_text

    path = results / f"{name}.json"
    with results_lock(results):
        old = json.loads(path.read_text()) if path.exists() else {}
        before = old.get(key, [] if key == "rows" else {})
        merged = merge(before)
        earlier = old.get("earlier", []) + displaced(before, merged, old.get("manifest", {}))
        record = {"manifest": build_manifest(bench_config=vars(config)), key: merged}
        write_json(path, {**record, **({"earlier": earlier} if earlier else {})})
        write_text(results / f"{name}.md", render_md(merged) + render_earlier(earlier, render_md, key == "rows"))
    return merged


def rerender(results_dir: str | Path) -> None:
    """Regenerate the analyses' markdown tables from their JSON files (those that exist)."""
    import json

    from crl_bench.analyses.earlier import render_earlier
    from crl_bench.analyses.interactions import render

    results = Path(results_dir)
    overlap = results / "overlap.json"
    tasks = json.loads(overlap.read_text())["tasks"] if overlap.exists() else {}
    sae_layer = next((e["layer"] for e in tasks.values()), "?")
    for name, key, render_md in (
        ("similarity", "rows", render_similarity),
        ("overlap", "tasks", render_overlap),
        ("circuits", "tasks", lambda entries: render_circuits(entries, sae_layer)),
        ("interactions", "tasks", render),
    ):
        if (results / f"{name}.json").exists():
            record = json.loads((results / f"{name}.json").read_text())
            earlier = render_earlier(record.get("earlier", []), render_md, key == "rows")
            (results / f"{name}.md").write_text(render_md(record[key]) + earlier)


def _f(value: Any, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def render_similarity(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Behavioural similarity to RLVR",
        "",
        "Generated from `similarity.json` by bench's analysis stage (`crl_bench.analyses.similarity`). Agreement: same "
        "answer as RLVR; κ: Cohen's kappa of per-item correctness with RLVR; fixed: items base gets wrong that "
        "RLVR / the method / both get right, their Jaccard index and hypergeometric p; KL(RLVR‖m) and JS "
        "distance to RLVR on the answer distribution, with base's beside it (gap closed = 1 − JS(m) / JS(base)); "
        "KL(m‖base): how far the method moved the model.",
        "",
        "| task | method | n | agreement | κ | fixed RLVR / m / both | Jaccard | p | KL(RLVR‖m) | JS | JS base | "
        "gap closed | KL(m‖base) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['n']} | {_f(r['answer_agreement'])} | {_f(r['kappa'])} | "
            f"{r['fixed_by_rlvr']} / {r['fixed_by_method']} / {r['fixed_both']} | {_f(r['fixed_jaccard'])} | "
            f"{_f(r['fixed_overlap_p'], 4)} | {_f(r['kl_from_rlvr'])} | {_f(r['js_to_rlvr'])} | "
            f"{_f(r['base_js_to_rlvr'])} | {_f(r['gap_closed'])} | {_f(r['kl_from_base'])} |"
        )
    return "\n".join(lines) + "\n"


def render_overlap(tasks: dict[str, Any]) -> str:
    lines = [
        "# SAE-feature overlap between methods",
        "",
        "Generated from `overlap.json` by bench's analysis stage (`crl_bench.analyses.overlap`). Top-k features each "
        "method implicates at the SAE layer (CRL: chosen, by frequency; vectors: orthogonal matching pursuit "
        "of the direction fitted at the SAE layer; RLVR: mean |activation change| LoRA vs base on validation "
        "prompts); Jaccard and rank-biased overlap (p = 0.9) with permutation p-values against random sets "
        "matched for firing frequency.",
        "",
    ]
    for task, entry in tasks.items():
        lines += [
            f"## {task} (layer {entry['layer']}, top {entry['k']})",
            "",
            "| a | b | Jaccard | p | RBO | p | shared |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for pair in entry["pairs"]:
            lines.append(
                f"| {pair['a']} | {pair['b']} | {_f(pair['jaccard'])} | {_f(pair['jaccard_p'], 4)} | "
                f"{_f(pair['rbo'])} | {_f(pair['rbo_p'], 4)} | {', '.join(map(str, pair['shared'][:10]))} |"
            )
        for name, why in entry["missing"].items():
            lines.append(f"\n{name}: no features ({why}).")
        lines.append("")
    return "\n".join(lines) + "\n"


def render_circuits(tasks: dict[str, Any], layer: int) -> str:
    from crl_bench.analyses.circuits import MIN_CHANGE

    lines = [
        "# Circuit overlap between methods",
        "",
        "Generated from `circuits.json` by bench's analysis stage (`crl_bench.analyses.circuits`). Metric: logit of "
        "the "
        "correct choice minus the mean of the others at the answer position, on validation items. Nodes: "
        f"attention heads, MLP outputs, and SAE features at layer {layer}; scored by attribution patching "
        f"(activation difference method vs base times the base gradient); top {K_COMPONENTS} components and top "
        f"{K_FEATURES} features per method. 'Own nodes recover': share of the method's metric change restored "
        "by patching only those nodes into the base run (real activation patching). 'RLVR change recovered': "
        "the same with RLVR's activations at the method's nodes. A share is left blank when the method (or "
        f"RLVR) moves the mean logit difference by less than {MIN_CHANGE} (a ratio of two near-zero numbers).",
        "",
    ]
    for task, entry in tasks.items():
        lines += [f"## {task}", ""]
        if "skipped" in entry:
            lines += [entry["skipped"], ""]
            continue
        lines += [
            "| method | metric base → method | own nodes recover | RLVR change recovered | top components |",
            "|---|---|---:|---:|---|",
        ]
        for name, m in entry["methods"].items():
            comps = ", ".join(f"{k[0]}{k[1]}" + (f".{k[2]}" if k[0] == "head" else "") for k in m["components"][:5])
            lines.append(
                f"| {name} | {_f(m['metric_base'], 2)} → {_f(m['metric_method'], 2)} | "
                f"{_f(m['recovered_by_own_nodes'], 2)} | {_f(m.get('rlvr_change_recovered'), 2)} | {comps} |"
            )
        lines += ["", "| a | b | components Jaccard | p | features Jaccard | p |", "|---|---|---:|---:|---:|---:|"]
        for p in entry["pairs"]:
            lines.append(
                f"| {p['a']} | {p['b']} | {_f(p['components_jaccard'])} | {_f(p['components_p'], 4)} | "
                f"{_f(p['features_jaccard'])} | {_f(p['features_p'], 4)} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"
