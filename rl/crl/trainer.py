"""`crl-bench train crl`: train a CRL controller (`rl.crl.controller`) with RL from the task's
verifiable reward while the LLM and the SAE stay frozen.

Settings (`--setting`):

1. `one-token`: multiple-choice tasks, one controlled layer; the controller acts once, at
   the answer position (the prompt's last token); the answer is the model's choice among
   the task's choices (the highest log-likelihood, as lm-eval's `acc` scores it), so the
   reward is 1 when the steered model's choice is right;
2. `multi-layer`: the same with several controlled layers at once (one decision per layer;
   each reads its own layer's residual, after the earlier layers' interventions);
3. `generation`: generation tasks, one layer; the controller acts at the prompt's last token
   and at every generated token (greedy decoding, so the controller's actions are the only
   randomness); the reward is the task's scoring of the completion.

Algorithms (`--algorithm`): `ppo` (the paper's: clipped surrogate, a value head as critic,
advantage = reward - value) or `grpo` (critic-free: the reward normalised within each
prompt's group of samples). Both run `ppo_epochs` passes over the stored decisions: the
controller re-reads the residuals it saw, so an update needs no LLM forward at all.

Advantage baseline (`--baseline`): `value` (ppo's critic), `group` (grpo's), or `unsteered`:
the reward of the same prompt with no intervention at all. Under greedy decoding that reward
is exact and deterministic (one extra rollout per distinct training prompt, cached and counted
in the spent rollouts), so a rollout whose interventions did not change the outcome teaches
nothing, and only the interventions of rollouts they fixed (+1) or broke (-1) move the policy
(its no-op decisions are the baseline's own actions and get no credit). `auto` (the
default) uses it for the generation setting, where a completion holds ~30 decisions and a
learned critic or a group of 8 is a far noisier baseline.

Exploration: an entropy bonus (`--entropy-coef`) and adaptive feature masking
(`--mask-share`): a feature chosen in more than that share of the recent decisions whose
reward when chosen is no better than the recent average is masked out of sampling for
`--mask-steps` steps, so the policy cannot collapse onto a feature that does not help and
must keep trying others (Cho et al. 2026 mask adaptively for the same reason); a dominant
feature that does help is left alone (`rl.crl.exploration.FeatureMask`). Both can be switched
off (0).

Setting 3 does not beat base on arith_gen at RLVR's budget; the variants tried for it (a
pathwise first-order update, token flips, a choice temperature, an exploration floor, the
`likelihood` and `gold` candidate rules) did not help either and were retired from the
product: docs/notebook.md keeps their findings and the commit that had them.

Budget and bookkeeping are RLVR's (`rl.budget`, `rl.rlvr.RLTrainConfig`): the same
prompts (lm-eval's few-shot context), reward functions, steps x prompts x samples, seeds;
the manifest records rollouts, generated tokens, wall time and trainable parameters.
Checkpoints (controller, optimiser and masking state as safetensors + JSON, never pickle;
`rl.crl.checkpoints`) every `checkpoint_every` steps; a rerun resumes from the newest.

Run directory `<runs>/<model>/crl-<setting>/<task>/seed<k>/`: `config.json`,
`controller.safetensors` (weights and input standardisation), `bank.safetensors` (the
features' typical activations), `manifest.json`, `curve.csv` / `curve.png`, `choices.json`
(the most chosen features), `interventions.jsonl` (every validation decision).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rl.budget import Spent
from rl.crl.candidates import choose_candidates
from rl.crl.checkpoints import CONTROLLER_FILE, latest_checkpoint, load_checkpoint, save_checkpoint, save_tensors
from rl.crl.config import CRLConfig
from rl.crl.controller import Decision
from rl.crl.exploration import FeatureMask
from rl.crl.features import choices_summary, write_features, write_interventions
from rl.crl.ppo import advantages, ppo_update
from rl.crl.rollouts import Rollouts, build_problem
from rl.runs import frozen_fingerprint, publish_run, run_dir_for, write_curve

CURVE_FIELDS = (
    "step",
    "rollouts",
    "reward",
    "validation",
    "entropy",
    "steered_share",
    "distinct_features",
    "masked",
    "newly_masked",
    "fixed",
    "broken",
    "top_share",
)
BANK_FILE = "bank.safetensors"


def controlled_layers(config: CRLConfig, n_layers: int, sae_layer: int | None) -> list[int]:
    """The layers a CRL run steers: its --layers, else a third and half of the depth (multi-layer),
    else the SAE's layer."""
    if config.layers:
        return list(config.layers)
    if config.setting == "multi-layer":
        return sorted({n_layers // 3, n_layers // 2})
    return [sae_layer if sae_layer is not None else n_layers // 2]


@torch.no_grad()
def measure_bank(model: Any, tokenizer: Any, saes: dict[int, Any], prompts: list[str], batch_size: int):
    """Typical activation of every feature (mean where it fires, over the prompts' tokens, BOS
    excluded) and residual samples at the prompts' last token for the controller's inputs."""
    from harness.activations import residuals
    from harness.padding import batch

    device = next(model.parameters()).device
    layers = sorted(saes)
    sums = {l: torch.zeros(saes[l].d_sae, dtype=torch.float64) for l in layers}
    counts = {l: torch.zeros(saes[l].d_sae, dtype=torch.float64) for l in layers}
    last = {l: [] for l in layers}
    # counts: how often each feature fires on these prompts (the candidate score of generation tasks)
    for start in range(0, len(prompts), batch_size):
        ids, mask = batch(tokenizer, prompts[start : start + batch_size], device)
        acts = residuals(model, ids, mask, layers=layers)
        real = mask.bool().clone()
        real[torch.arange(len(ids)), (mask.shape[1] - mask.sum(-1))] = False  # BOS
        for l in layers:
            features = saes[l].encode(acts[l][real]).float().cpu()
            sums[l] += features.clamp_min(0).sum(0).double()
            counts[l] += (features > 0).sum(0).double()
            last[l].append(acts[l][:, -1].float().cpu())
    scales = {}
    for l in layers:
        mean = (sums[l] / counts[l].clamp_min(1)).float()
        fired = counts[l] > 0
        fallback = mean[fired].median() if fired.any() else torch.tensor(1.0)
        scales[l] = torch.where(fired, mean, fallback)
    return scales, {l: torch.cat(last[l]) for l in layers}, counts


def _sampled_update(
    config: CRLConfig,
    controller,
    optimizer,
    rewards: list[float],
    records: list[Decision],
    residuals: list[torch.Tensor],
    masked,
    rows: list[int],
    group_size: int,
    unsteered: dict[int, float] | None,
    device,
) -> dict[str, float]:
    """ppo / grpo: the clipped surrogate over the step's sampled decisions (`rl.crl.ppo`)."""
    step_advantages, returns = advantages(
        config, rewards, records, group_size, [unsteered[doc] for doc in rows] if unsteered is not None else None
    )
    batch = {
        "h": torch.stack(residuals).to(device),
        "layer_index": torch.tensor([r.layer_index for r in records], device=device),
        "feature": torch.tensor([r.feature_index for r in records], device=device),
        "coef": torch.tensor([r.coef_index for r in records], device=device),
        "logp": torch.tensor([r.logp for r in records], device=device),
        "advantage": torch.tensor(step_advantages, device=device, dtype=torch.float32),
        "returns": torch.tensor(returns, device=device, dtype=torch.float32),
        "masked": masked,
    }
    return ppo_update(controller, optimizer, batch, config)


def train(config: CRLConfig) -> Path:
    """Train (or resume) one CRL controller; returns its run directory."""
    from rich.console import Console
    from tqdm.auto import tqdm

    from harness.manifest import build_manifest, write_json
    from harness.models import default_device, load_causal_lm, model_info, resolve_dtype
    from harness.sae import load_sae
    from harness.splits import method_splits
    from harness.tasks import load_task
    from rl.crl.controller import COEFS, CONTROLLER_TYPES, Controller, FeatureBank

    console = Console(stderr=True, soft_wrap=True)
    started = time.time()
    task = load_task(config.task)
    budget = config.task_budget(task)
    if config.setting == "generation" and task.OUTPUT_TYPE != "generate_until":
        raise ValueError(
            f"the generation setting needs a generation task; {config.task} is {task.OUTPUT_TYPE} "
            "(use --setting one-token or multi-layer)"
        )
    if config.setting != "generation" and task.OUTPUT_TYPE != "multiple_choice":
        raise ValueError(
            f"the {config.setting} setting needs a multiple-choice task; {config.task} is "
            f"{task.OUTPUT_TYPE} (use --setting generation)"
        )
    splits = method_splits(task)
    device = config.device or default_device()
    dtype = resolve_dtype(
        "auto" if config.dtype == "auto" else config.dtype, device
    )  # forward only: bf16 on a CPU with native bf16
    model, tokenizer = load_causal_lm(config.model, dtype=str(dtype).replace("torch.", ""), device=device)
    info = model_info(config.model)  # as bench names it: an auto SAE is found in the same cache entry

    def sae_for(layer):  # a `{layer}` pattern is filled in by load_sae (the middle layer when none is named)
        return load_sae(config.sae, info, layer, device=device, corpus=config.sae_corpus)

    first = sae_for(config.layers[0]) if config.layers else sae_for(None)
    layers = controlled_layers(config, info.n_layers, first.layer)
    saes = {first.layer: first} if first.layer in layers else {}
    for layer in layers:
        if layer not in saes:
            saes[layer] = sae_for(layer)
    run_dir = run_dir_for(config, config.method)
    checkpoints = run_dir / "checkpoints"
    if not config.resume and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)

    n_docs = min(budget.distinct_prompts, len(splits.train))
    docs = splits.train[:n_docs]
    val_docs = splits.validation[: config.val_limit] if config.val_limit else splits.validation
    problem = build_problem(task, docs, tokenizer, config.seed)
    val_problem = build_problem(task, val_docs, tokenizer, config.seed)
    scales, samples, counts = measure_bank(model, tokenizer, saes, problem.prompts[:64], config.batch_size)
    ids = {
        l: choose_candidates(
            model, tokenizer, saes[l], problem, scales[l], counts[l], config.candidates, config.candidate_rule
        )
        for l in layers
    }
    bank = FeatureBank(
        layers,
        {l: saes[l].directions().float()[ids[l]].to(device) for l in layers},
        {l: scales[l][ids[l]].to(device) for l in layers},
        {l: ids[l].to(device) for l in layers},
    )
    torch.manual_seed(config.seed)
    noop_prior = (
        config.noop_prior
        if config.noop_prior is not None
        else (1 - 2 / max(4, budget.max_new_tokens) if config.setting == "generation" else 0.5)
    )
    controller = Controller(
        info.d_model, bank.d_sae, len(layers), config.hidden, noop_prior=noop_prior, policy=config.resolved_policy
    ).to(device)
    controller.standardise_from({i: samples[l] for i, l in enumerate(layers)})
    optimizer = torch.optim.Adam([p for p in controller.parameters() if p.requires_grad], lr=config.learning_rate)
    mask = FeatureMask(bank.d_sae, config.mask_share, config.mask_steps, config.mask_window)
    generator = torch.Generator().manual_seed(config.seed)
    order = list(range(n_docs))
    random.Random(config.seed).shuffle(order)
    rollouts = Rollouts(model, tokenizer, controller, bank, problem, budget.max_new_tokens, config.batch_size)
    validator = Rollouts(model, tokenizer, controller, bank, val_problem, budget.max_new_tokens, config.batch_size)

    spent, curve, start_step, chosen_counts = Spent(), [], 0, Counter()
    unsteered_baseline = config.resolved_baseline == "unsteered"
    unsteered: dict[int, float] = {}  # training doc -> its reward with no intervention (that baseline)
    latest = latest_checkpoint(checkpoints) if config.resume else None
    if (
        latest is not None
        and json.loads((latest / "state.json").read_text()).get("fingerprint") != config.fingerprint()
    ):
        console.print(f"{run_dir} holds a checkpoint of a run with other settings: starting over")
        import shutil

        shutil.rmtree(checkpoints)
        latest = None
    if latest is not None:
        state = load_checkpoint(latest, controller, optimizer)
        spent, curve, start_step = Spent(**state["spent"]), state["curve"], state["step"]
        mask.load(state["mask"])
        chosen_counts = Counter({int(k): v for k, v in state["chosen"].items()})
        unsteered = {int(k): v for k, v in state.get("unsteered", {}).items()}
        generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        console.print(f"resuming {run_dir} from {latest.name} ({spent.rollouts} rollouts)")
    spent.trainable_parameters = sum(p.numel() for p in controller.parameters() if p.requires_grad)
    frozen_before = frozen_fingerprint(model) + sum(float(d.double().abs().sum()) for d in bank.directions.values())

    def validate() -> tuple[float, list[dict], list[float]]:
        rewards, records, _, _ = validator.run(list(range(len(val_docs))), "greedy", keep_residuals=False)
        return sum(rewards) / len(rewards), records, rewards

    if not curve:
        curve.append({"step": 0, "rollouts": 0, "reward": None, "validation": validate()[0]})
    console.print(
        f"[bold]CRL[/] {config.setting} on {config.task}: layers {layers}, {bank.d_sae} features + no-op, "
        f"{budget.steps} steps x {budget.prompts_per_step} prompts x {budget.samples_per_prompt} samples, "
        f"{config.algorithm}, {spent.trainable_parameters:,} trainable parameters, LLM in {dtype} on {device}"
    )
    wall_before = spent.wall_s
    bar = tqdm(total=budget.steps, initial=start_step, desc=f"CRL {config.setting} {config.task}", unit="step")
    for step in range(start_step, budget.steps):
        step_started = time.time()
        picks = [order[(step * budget.prompts_per_step + j) % n_docs] for j in range(budget.prompts_per_step)]
        rows = [doc for doc in picks for _ in range(budget.samples_per_prompt)]
        masked = mask.tensor(step)
        tokens_before = rollouts.generated_tokens
        new = [doc for doc in dict.fromkeys(picks) if doc not in unsteered] if unsteered_baseline else []
        if new:  # greedy decoding is deterministic: each prompt's unsteered reward is computed once
            unsteered.update(zip(new, rollouts.run(new, "off", keep_residuals=False)[0]))
            spent.rollouts += len(new)
        rewards, records, residuals, _ = rollouts.run(rows, "sample", masked, generator)
        spent.rollouts += len(rows)
        spent.generated_tokens += (
            (rollouts.generated_tokens - tokens_before) if problem.kind == "generation" else len(rows)
        )
        stats = _sampled_update(
            config,
            controller,
            optimizer,
            rewards,
            records,
            residuals,
            masked,
            rows,
            budget.samples_per_prompt,
            unsteered if unsteered_baseline else None,
            device,
        )
        spent.train_s += time.time() - step_started
        chosen = [r.feature_index for r in records]
        steered = [(r.layer, r.feature_index) for r in records if r.feature_index < bank.d_sae]
        chosen_counts.update(bank.sae_id(r.layer, r.feature_index) for r in records if r.feature_index < bank.d_sae)
        # masking keeps sampled actions off a dominant feature
        newly_masked = mask.update(step, chosen, [rewards[r.row] for r in records])
        spent.steps = step + 1
        spent.wall_s = wall_before + time.time() - started
        row = {
            "step": step + 1,
            "rollouts": spent.rollouts,
            "reward": sum(rewards) / len(rewards),
            "validation": None,
            "entropy": stats["entropy"],
            "steered_share": sum(r.feature is not None for r in records) / max(1, len(records)),
            "distinct_features": len(chosen_counts),
            "masked": int(masked.sum()),
            "newly_masked": len(newly_masked),
            # of the step's interventions, the share its most chosen feature took: 1 is collapse
            "top_share": max(Counter(steered).values()) / len(steered) if steered else None,
        }
        if unsteered_baseline:  # the step's rollouts that the interventions fixed / broke
            row["fixed"] = sum(r > unsteered[doc] for r, doc in zip(rewards, rows))
            row["broken"] = sum(r < unsteered[doc] for r, doc in zip(rewards, rows))
        if (config.eval_every and (step + 1) % config.eval_every == 0) or step + 1 == budget.steps:
            row["validation"] = validate()[0]
        curve.append(row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.2f}", features=len(chosen_counts))
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < budget.steps:
            save_checkpoint(
                checkpoints / f"step-{step + 1}",
                controller,
                optimizer,
                {
                    "step": step + 1,
                    "fingerprint": config.fingerprint(),
                    "spent": spent.to_dict(),
                    "curve": curve,
                    "mask": mask.state(),
                    "chosen": {str(k): v for k, v in chosen_counts.items()},
                    "generator": generator.get_state().tolist(),
                    "unsteered": {str(k): v for k, v in unsteered.items()},
                },
            )
    bar.close()

    frozen_after = frozen_fingerprint(model) + sum(float(d.double().abs().sum()) for d in bank.directions.values())
    if frozen_after != frozen_before:
        raise RuntimeError(
            "the LLM or SAE weights changed during CRL training; only the controller may train. "
            "This is a bug: please report it"
        )
    score, decisions, val_rewards = validate()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(run_dir / CONTROLLER_FILE, controller.state_dict())
    save_tensors(
        run_dir / BANK_FILE,
        {
            **{f"directions.{l}": bank.directions[l] for l in layers},
            **{f"scales.{l}": bank.scales[l] for l in layers},
            **{f"ids.{l}": bank.ids[l] for l in layers},
        },
    )
    write_interventions(run_dir / "interventions.jsonl", decisions, val_rewards, tokenizer)
    write_json(run_dir / "choices.json", choices_summary(chosen_counts, decisions))
    write_features(
        run_dir / "features.md",
        run_dir,
        saes,
        f"CRL ({config.setting}) on {config.task}, {config.model}",
    )
    write_json(
        run_dir / "config.json",
        {
            "method": config.method,
            "controller": CONTROLLER_TYPES[config.resolved_policy],
            **asdict(config),
            "layers_resolved": layers,
            "policy_resolved": config.resolved_policy,
            "noop_prior_resolved": noop_prior,
            "baseline_resolved": config.resolved_baseline,
            "d_model": info.d_model,
            "d_sae": bank.d_sae,
            "sae_width": saes[layers[0]].d_sae,
            "coefs": list(COEFS),
            "hidden": config.hidden,
            "saes": {str(l): saes[l].describe() for l in layers},
            "budget_resolved": budget.to_dict(),
            "identity": config.identity(),
            "fingerprint": config.fingerprint(),
        },
    )
    write_json(
        run_dir / "manifest.json",
        build_manifest(
            kind="crl",
            config=asdict(config),
            budget=budget.to_dict(),
            spent=spent.to_dict(),
            splits=splits.sizes(),
            curve=curve,
            frozen_weights_checksum=frozen_after,
            resumed_from=str(latest) if latest else None,
        ),
    )
    write_curve(
        curve,
        run_dir,
        f"CRL ({config.setting}, {config.algorithm}): {config.task}, {config.model}",
        "score",
        fields=CURVE_FIELDS,
    )
    publish_run(config, config.method)
    import shutil

    shutil.rmtree(checkpoints, ignore_errors=True)
    console.print(
        f"CRL done: {spent.rollouts} rollouts, {spent.wall_s:.0f} s; validation "
        f"{curve[0]['validation']:.3f} -> {score:.3f}; {len(chosen_counts)} features tried; {run_dir}"
    )
    return run_dir
