"""`crl-bench ceiling`: how far one SAE feature per token could take a generation task if it
knew where and what to push: an oracle upper bound for CRL's generation setting (setting 3).

CRL's generation controller adds, at each decision (the prompt's last token and every
generated token), at most one SAE feature at one of `rl.crl.controller.COEFS` times the feature's
typical activation, at one layer. The oracle has that action space and reads the gold
solution (the task's `doc_to_target`, a worked solution for arith_gen and gsm8k):

- it decodes greedily, with the model unsteered wherever the completion is right so far;
- while the completion is still the gold solution token for token, wherever the model's next
  token would leave it, it ranks every feature of the SAE by its first-order effect on the
  gold token's logit minus the model's (the gradient of that gap at the controlled layer,
  dotted with the feature's decoder direction at its typical activation), tries the `top`
  best at each coefficient from the weakest up (real forwards), and keeps the first that puts
  the gold token on top;
- where none does, or once the completion has left the gold solution, it decodes greedily,
  unsteered, to the task's stop strings.

The completions are scored with the task's own reward. Because it reads the answers this is
not a method and never a leaderboard row: it bounds what a controller with CRL's action space
at that layer could reach (up to the `top` features tried at each deviation) and so tells a
CRL run that learnt too little apart from a task that one feature per token cannot move.
Output: `<out>/<task>/ceiling.{json,md}` (scores per item, every deviation and the feature
that fixed it, McNemar against the unsteered greedy decode, manifest).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from harness.config import Dtype, ModelConfig
from harness.models import model_results
from rl.crl.controller import COEFS


@dataclass
class CeilingConfig(ModelConfig):
    task: str = field(
        default="arith_gen",
        metadata={"help": "a generation task whose target is the solution to follow (arith_gen, gsm8k)"},
    )
    sae: str = field(default="auto", metadata={"help": "SAE (as bench's --sae)"})
    sae_corpus: str = field(default="builtin", metadata={"help": "corpus for an auto SAE that has to be trained"})
    layer: int | None = field(default=None, metadata={"help": "controlled layer (default: the SAE's, as CRL)"})
    split: Literal["validation", "test"] = field(
        default="validation",
        metadata={"help": "documents to decode (harness.splits: the methods' validation split, or the evaluated one)"},
    )
    limit: int | None = field(default=None, metadata={"help": "first N documents of the split"})
    top: int = field(
        default=8,
        metadata={"help": "features tried at each deviation (the first-order best), each at every coefficient"},
    )
    only: str | None = field(
        default=None,
        metadata={
            "help": "fix only the deviations whose gold token matches this regular expression (e.g. '^ [+-]$': "
            "arith_gen's operators); the others are left to the model"
        },
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "default: the task's max_gen_toks"})
    bank_prompts: int = field(
        default=64,
        metadata={
            "help": "training prompts the features' typical activations are measured on (CRL measures them on 64)"
        },
    )
    seed: int = field(default=0, metadata={"help": "few-shot seed of the prompts"})
    dtype: Dtype = field(
        default="auto", metadata={"help": "model dtype (auto: bf16 on a CPU with native bf16, else fp32)"}
    )
    out: str | None = field(
        default=None, metadata={"help": "where <task>/ceiling.{json,md} go (default: results/<model>/ceiling)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top < 1:
            raise ValueError(f"--top must be at least 1, got {self.top}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.bank_prompts < 1:
            raise ValueError(f"--bank-prompts must be at least 1, got {self.bank_prompts}")
        if self.only is not None:
            try:
                re.compile(self.only)
            except re.error as err:
                raise ValueError(f"--only {self.only!r} is not a regular expression ({err}); e.g. '^ [+-]$'") from None

    def identities(self, dtype: str) -> dict[str, str]:
        """Per decoding, the hash of the settings its completions depend on (not where results go or
        how many documents: a document decodes the same whatever the limit)."""
        from harness.manifest import fingerprint

        settings = {**asdict(self), "out": None, "limit": None, "dtype": dtype}
        if self.bank_prompts == 64:  # the only value before the field existed: those decodes stay valid
            settings.pop("bank_prompts")
        unsteered = {k: v for k, v in settings.items() if k not in ("sae", "sae_corpus", "layer", "top", "only")}
        return {"greedy": fingerprint(unsteered), "oracle": fingerprint(settings)}


class _Pending:
    """The delta the next forward adds at its last position: Float[B, D] (one per row) or None."""

    def __init__(self) -> None:
        self.delta: Tensor | None = None

    def policy(self, hidden: Tensor, ctx: Any) -> Tensor | None:
        if self.delta is None:
            return None
        out = torch.zeros_like(hidden)
        out[:, -1] = self.delta.to(hidden.dtype)
        return out


def _forward(model: Any, token: Tensor, cache: Any) -> Tensor:
    """Float[B, V]: logits after feeding `token` (Long[B, 1]) on top of `cache` (updated)."""
    past = cache.get_seq_length()
    mask = torch.ones(token.shape[0], past + 1, dtype=torch.long, device=token.device)
    return (
        model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
    )


def oracle_decode(
    model: Any,
    tokenizer: Any,
    layer: int,
    directions: Tensor,
    scales: Tensor,
    prompt: str,
    gold: list[int],
    max_new_tokens: int,
    until: list[str],
    top: int = 8,
    coefs: tuple[float, ...] | None = None,
    steer_on: bool = True,
    only: str | None = None,
) -> tuple[str, list[dict]]:
    """Greedy completion of `prompt` with the oracle's interventions (`steer_on=False`: none),
    and one record per deviation from `gold` (token ids of the target, with its delimiter) met
    on the gold path: step, gold and model token, and the (feature, coef) that fixed it or None.
    `only`: a regular expression; deviations whose gold token's text does not match it are
    left to the model (and end the gold path, as any unfixed deviation does).

    directions: Float[d_sae, D] decoder rows; scales: Float[d_sae] typical activations."""
    from transformers import DynamicCache

    from harness.steering import PolicyIntervention, steer
    from rl.crl.rollouts import _stop_length

    coefs = coefs or COEFS
    device = next(model.parameters()).device
    directions, scales = directions.to(device).float(), scales.to(device).float()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    pending = _Pending()
    events: list[dict] = []
    out: list[int] = []
    on_path = True
    with steer(model, [PolicyIntervention(pending.policy, [layer])]):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :-1], use_cache=True, cache=cache)
        token = ids[:, -1:]
        for step in range(max_new_tokens):
            before = copy.deepcopy(cache) if steer_on and on_path and step < len(gold) else None
            with torch.no_grad():
                logits = _forward(model, token, cache)
            nxt = int(logits[0].argmax())
            if (
                before is not None
                and nxt != gold[step]
                and (only is None or re.search(only, tokenizer.decode([gold[step]])))
            ):
                fix = _fix(model, pending, before, token, gold[step], nxt, directions, scales, top, coefs)
                events.append(
                    {
                        "step": step,
                        "gold": gold[step],
                        "model": nxt,
                        "feature": None if fix is None else fix[0],
                        "coef": None if fix is None else fix[1],
                    }
                )
                if fix is not None:
                    cache, nxt = fix[2], gold[step]
            on_path = on_path and step < len(gold) and nxt == gold[step]
            out.append(nxt)
            if nxt == tokenizer.eos_token_id or any(
                u in tokenizer.decode(out, skip_special_tokens=True) for u in until
            ):
                break
            token = torch.tensor([[nxt]], device=device)
    n = _stop_length(tokenizer, out, until, tokenizer.eos_token_id)
    text = tokenizer.decode(out[:n], skip_special_tokens=True)
    for stop in until:  # lm-eval cuts the completion at the first stop string
        text = text.split(stop)[0]
    return text, events


def _fix(
    model,
    pending: _Pending,
    before,
    token: Tensor,
    want: int,
    got: int,
    directions: Tensor,
    scales: Tensor,
    top: int,
    coefs: tuple[float, ...],
):
    """(feature, coef, cache after the steered forward) for the first of the `top` first-order
    best features, weakest coefficient first, whose addition at `token` puts `want` on top; None
    if none does. `before`: the cache without `token`."""
    # the gradient of logit(want) - logit(got) with respect to the residual at the layer
    z = torch.zeros(1, directions.shape[1], device=token.device, requires_grad=True)
    pending.delta = z
    try:
        with torch.enable_grad():
            logits = _forward(model, token, copy.deepcopy(before))
            (logits[0, want] - logits[0, got]).backward()
    finally:
        pending.delta = None
    order = ((directions @ z.grad[0].float()) * scales).argsort(descending=True)[:top]
    k = len(order)
    for coef in coefs:  # one batched forward per coefficient: the `top` features side by side
        trial = copy.deepcopy(before)
        trial.batch_repeat_interleave(k)
        pending.delta = directions[order] * (scales[order] * coef)[:, None]
        try:
            with torch.no_grad():
                won = (_forward(model, token.expand(k, 1), trial).argmax(-1) == want).nonzero()
        finally:
            pending.delta = None
        if len(won):
            row = int(won[0])
            trial.batch_select_indices(torch.tensor([row], device=token.device))
            return int(order[row]), coef, trial
    return None


def run(config: CeilingConfig) -> Path:
    """Decode the split unsteered and with the oracle; write `<out>/<task>/ceiling.{json,md}`."""
    from tqdm.auto import tqdm

    from harness.manifest import build_manifest, write_json, write_text
    from harness.models import default_device, load_causal_lm, model_info, model_slug, resolve_dtype
    from harness.paths import cache_root
    from harness.prompts import task_prompts
    from harness.rewards import task_reward
    from harness.sae import load_sae
    from harness.splits import method_splits
    from harness.stats import mcnemar_exact, mean_ci95
    from harness.tasks import load_task
    from rl.crl.trainer import measure_bank

    task = load_task(config.task)
    if task.OUTPUT_TYPE != "generate_until":
        raise ValueError(
            f"the ceiling follows a generated solution; {config.task} is {task.OUTPUT_TYPE} "
            "(pass a generation task such as arith_gen or gsm8k)"
        )
    device = config.device or default_device()
    dtype = str(resolve_dtype(config.dtype, device)).replace("torch.", "")
    model, tokenizer = load_causal_lm(config.model, dtype=dtype, device=device)
    loaded = load_sae(config.sae, model_info(config.model), config.layer, device=device, corpus=config.sae_corpus)
    layer = loaded.layer
    splits = method_splits(task)
    docs = getattr(splits, config.split)[: config.limit] if config.limit else getattr(splits, config.split)
    prompts = task_prompts(task, docs, seed=config.seed)
    # typical activations measured as CRL measures them, on the training prompts
    scales, _, _ = measure_bank(
        model, tokenizer, {layer: loaded}, task_prompts(task, splits.train[: config.bank_prompts], config.seed), 8
    )
    directions = loaded.directions().float()
    kwargs = task.config.generation_kwargs or {}
    until = [u for u in kwargs.get("until", []) if u]
    max_new = config.max_new_tokens or int(kwargs.get("max_gen_toks", 256))
    delimiter = task.config.target_delimiter
    reward = task_reward(task)
    fields = {k: [d[k] for d in docs] for k in docs[0]}
    directory = Path(config.out or model_results("results", config.model) / "ceiling") / config.task
    directory.mkdir(parents=True, exist_ok=True)
    # every decoded document is appended to a cache file as it comes, so a killed run resumes where it
    # stopped and a run with other oracle settings (or more documents) reuses the greedy decodes
    partial = cache_root() / "ceiling" / model_slug(config.model) / f"{config.task}-{config.split}.jsonl"
    partial.parent.mkdir(parents=True, exist_ok=True)
    identities = config.identities(dtype)
    done = _read_partial(partial, identities)
    found: dict[str, Any] = {}
    for label, steer_on in (("greedy", False), ("oracle", True)):
        todo = [i for i in range(len(docs)) if (label, i) not in done]
        with partial.open("a") as handle:
            for i in tqdm(todo, desc=f"ceiling {label}", initial=len(docs) - len(todo), total=len(docs)):
                gold = tokenizer(delimiter + str(task.doc_to_target(docs[i])), add_special_tokens=False)["input_ids"]
                text, evs = oracle_decode(
                    model,
                    tokenizer,
                    layer,
                    directions,
                    scales[layer],
                    prompts[i],
                    gold,
                    max_new,
                    until,
                    config.top,
                    steer_on=steer_on,
                    only=config.only,
                )
                done[(label, i)] = (text, evs)
                handle.write(
                    json.dumps({"run": identities[label], "label": label, "doc": i, "text": text, "events": evs}) + "\n"
                )
                handle.flush()
        texts = [done[(label, i)][0] for i in range(len(docs))]
        found[label] = {
            "scores": reward(prompts, texts, **fields),
            "completions": texts,
            "deviations": [done[(label, i)][1] for i in range(len(docs))],
        }
    base, oracle = found["greedy"]["scores"], found["oracle"]["scores"]
    deviations = [e for row in found["oracle"]["deviations"] for e in row]
    (greedy_low, greedy_high), (oracle_low, oracle_high) = mean_ci95(base), mean_ci95(oracle)
    summary = {
        "n": len(docs),
        "layer": layer,
        "sae": loaded.name,
        "top": config.top,
        "split": config.split,
        "greedy": sum(base) / len(base),
        "oracle": sum(oracle) / len(oracle),
        "greedy_ci95": [greedy_low, greedy_high],
        "oracle_ci95": [oracle_low, oracle_high],
        "fixed": sum(o > b for b, o in zip(base, oracle)),
        "broken": sum(o < b for b, o in zip(base, oracle)),
        "p_mcnemar": mcnemar_exact(oracle, base),
        "deviations": len(deviations),
        "deviations_fixed": sum(e["feature"] is not None for e in deviations),
        "items_steered": sum(any(e["feature"] is not None for e in row) for row in found["oracle"]["deviations"]),
        "coefs_used": {
            str(c): sum(e["coef"] == c for e in deviations)
            for c in sorted({e["coef"] for e in deviations if e["coef"]})
        },
    }
    path = directory / "ceiling.json"
    write_json(
        path,
        {"manifest": build_manifest(kind="ceiling", config=asdict(config), dtype=dtype), "summary": summary, **found},
    )
    write_text(directory / "ceiling.md", render(config, summary, tokenizer, deviations))
    return path


def _read_partial(path: Path, identities: dict[str, str]) -> dict[tuple[str, int], tuple[str, list[dict]]]:
    """(label, doc) -> (completion, deviations) already decoded by a run with these settings."""
    done: dict[tuple[str, int], tuple[str, list[dict]]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line a killed run was writing
            continue
        if row.get("run") == identities.get(row.get("label")):
            done[(row["label"], row["doc"])] = (row["text"], row["events"])
    return done


def render(config: CeilingConfig, s: dict[str, Any], tokenizer: Any, deviations: list[dict]) -> str:
    def tok(i: int) -> str:
        return repr(tokenizer.decode([i]))

    lines = [
        f"# Single-feature steering ceiling: {config.task}, {config.model}",
        "",
        "Generated by `crl-bench ceiling` (rl/ceiling.py) from ceiling.json; do not edit by hand.",
        "",
        f"An oracle with CRL setting 3's action space (one SAE feature per token at layer {s['layer']}, "
        f"coefficients {', '.join(str(c) for c in COEFS)} x its typical activation) that reads the gold "
        f"solution: wherever the greedy completion would leave it, it adds the first of the {s['top']} "
        "first-order best features that puts the gold token back on top. Not a method: an upper bound on what "
        f"a controller could reach here. {s['n']} documents of the {s['split']} split; SAE {s['sae']}.",
        "",
        "| decoding | accuracy | 95% CI | fixed / broken vs greedy | exact McNemar p |",
        "|---|---:|---|---:|---:|",
        f"| greedy, unsteered | {s['greedy']:.3f} | [{s['greedy_ci95'][0]:.3f}, {s['greedy_ci95'][1]:.3f}] | | |",
        f"| oracle | {s['oracle']:.3f} | [{s['oracle_ci95'][0]:.3f}, {s['oracle_ci95'][1]:.3f}] | "
        f"{s['fixed']} / {s['broken']} | {s['p_mcnemar']:.2g} |",
        "",
        f"Deviations from the gold solution met on its path: {s['deviations']}; fixed by one feature: "
        f"{s['deviations_fixed']} (on {s['items_steered']} items); coefficients of the fixes: "
        + (", ".join(f"{c}: {n}" for c, n in s["coefs_used"].items()) or "none")
        + ".",
        "",
    ]
    if deviations:
        lines += ["| gold token | model's token | deviations | fixed |", "|---|---|---:|---:|"]
        pairs: dict[tuple[int, int], list[int]] = {}
        for e in deviations:
            pairs.setdefault((e["gold"], e["model"]), [0, 0])
            pairs[(e["gold"], e["model"])][0] += 1
            pairs[(e["gold"], e["model"])][1] += e["feature"] is not None
        for (g, m), (n, fixed) in sorted(pairs.items(), key=lambda kv: -kv[1][0])[:15]:
            lines.append(f"| {tok(g)} | {tok(m)} | {n} | {fixed} |")
    return "\n".join(lines) + "\n"
