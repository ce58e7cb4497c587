"""`crl-bench train csft`: C-SFT, control-model supervised fine-tuning (issue 27). The feature
controller of CRL through the LM (`rl.crl.through_lm.gate.FeatureGate`: a few candidate SAE
features per token, non-negative coefficients) is trained to make the frozen model behave like
an already trained one, the teacher (an RLVR run's LoRA adapter; a steering artifact or another
controller also work).

Each step takes the teacher's own completions of training prompts (sampled at `--temperature`
on generation tasks; on multiple-choice tasks the teacher's whole next-token distribution at
the answer position is the target, so nothing is sampled) and minimises KL(teacher || steered)
of the next-token distributions at every completion token, teacher forcing, the gradient
flowing through the frozen model into the controller. The budget counts teacher completions
(`rollouts`: prompts x samples per step; on multiple-choice tasks distinct prompts) and their
tokens. The LLM, the teacher and the SAE stay frozen.

It answers how much of what the teacher changed a few SAE features added per token at one
layer can write: the run records KL(teacher || base) and KL(teacher || steered) on held-out
(validation) prompts, the share of that divergence the controller closes, and the features it
adds most (`features.md`, with their cards, in the run's results folder
`results/<model>/csft/<task>/<budget>-seed<k>/`). The run directory is a
`crl-lm` controller run (`"controller": "crl-lm-topk-v1"`), so `crl_steered` evaluates it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rl.csft.config import CSFTConfig

METHOD = "csft"
STATE = "state.json"
KEEP_CHECKPOINTS = 2


def _targets(
    teacher: Any,
    tokenizer: Any,
    prompts: list[str],
    generation: bool,
    config: CSFTConfig,
    budget: Any,
    sampler: Any = None,
):
    """The teacher's completions: (prompt token ids, completion token ids) per row, sampled from
    `sampler` (a `RolloutCopy` of a LoRA teacher) where given. Multiple choice: no completion
    (the target is the distribution at the answer position)."""
    from harness.padding import batch
    from rl.prefix import generate_on, shared_prefix_generate

    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    if not generation:
        return [(ids, []) for ids in encoded]
    model = teacher.model
    stops = model.generation_config.eos_token_id
    stops = set([stops] if isinstance(stops, int) else stops or [])
    rows = []
    for start in range(0, len(prompts), config.batch_size):
        ids, mask = batch(tokenizer, prompts[start : start + config.batch_size], next(model.parameters()).device)
        sampling = {"do_sample": True, "temperature": config.temperature} if config.temperature > 0 else {}
        # each prompt's samples share its prefill; not under a steering teacher, whose positions (e.g. the
        # prompt's last token) are read from the first call of its steering session
        generate = functools.partial(shared_prefix_generate, model, model.generate) if teacher.kind == "lora" else None
        if sampler is not None:
            generate = functools.partial(sampler.generate, functools.partial(generate_on, True))
        with torch.no_grad(), teacher.on():
            out = (generate or model.generate)(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=budget.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **({"do_sample": False} | sampling),
            )
        for i, row in enumerate(out[:, ids.shape[1] :].tolist()):
            completion = []
            for token in row:
                completion.append(token)
                if token in stops:
                    break
            rows.append((encoded[start + i], completion))
    return rows


def _left_padded(rows: list[tuple[list[int], list[int]]], pad_id: int, device: Any) -> tuple:
    """(ids, mask) of each row's prompt and completion but its last token, left-padded: every row's
    completion ends at the last position, so the positions that predict it are the last ones."""
    sequences = [prompt + completion[:-1] for prompt, completion in rows]
    width = max(len(s) for s in sequences)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :], mask[i, width - len(s) :] = torch.tensor(s), 1
    return ids.to(device), mask.to(device)


def _log_probs(model: Any, rows: list[tuple[list[int], list[int]]], pad_id: int, device: Any) -> tuple:
    """Log-probabilities Float[B, keep, V] of the next token at the positions that predict each
    row's completion (the answer position where there is none), and the mask Bool[B, keep] of
    those positions; only the last `keep` positions' logits are computed."""
    counts = [max(1, len(completion)) for _, completion in rows]
    keep = max(counts)
    ids, mask = _left_padded(rows, pad_id, device)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    chosen = torch.arange(keep)[None, :] >= keep - torch.tensor(counts)[:, None]
    return logits.float().log_softmax(-1), chosen.to(device)


def _kl(teacher_lp: torch.Tensor, student_lp: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over the chosen positions."""
    per_position = (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1)
    return (per_position * chosen).sum()


class Distiller:
    """The teacher, the student (the frozen model under the controller) and the KL between them."""

    def __init__(self, teacher: Any, gate: Any, tokenizer: Any, config: CSFTConfig, device: Any):
        self.teacher, self.gate, self.tokenizer, self.config, self.device = teacher, gate, tokenizer, config, device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def teacher_log_probs(self, rows: list) -> tuple:
        with torch.no_grad(), self.teacher.on():
            return _log_probs(self.teacher.model, rows, self.pad_id, self.device)

    def student_log_probs(self, rows: list, steered: bool = True) -> tuple:
        from harness.steering import steer

        with self.teacher.off(), steer(self.teacher.model, [self.gate] if steered else []):
            return _log_probs(self.teacher.model, rows, self.pad_id, self.device)

    def step(self, rows: list) -> tuple[float, int]:
        """Backward of the summed KL over `rows` (micro-batched); (summed KL, positions)."""
        total, positions = 0.0, sum(max(1, len(c)) for _, c in rows)
        for start in range(0, len(rows), self.config.micro_batch):
            part = rows[start : start + self.config.micro_batch]
            target, chosen = self.teacher_log_probs(part)
            student, _ = self.student_log_probs(part)
            loss = _kl(target, student, chosen)
            (loss / positions).backward()
            total += float(loss.detach())
        return total, positions

    @torch.no_grad()
    def divergence(self, rows: list, steered: bool = True) -> float:
        """Mean KL(teacher || student) per completion token over `rows` (base model: steered=False)."""
        total, positions = 0.0, 0
        for start in range(0, len(rows), self.config.micro_batch):
            part = rows[start : start + self.config.micro_batch]
            target, chosen = self.teacher_log_probs(part)
            student, _ = self.student_log_probs(part, steered)
            total += float(_kl(target, student, chosen))
            positions += int(chosen.sum())
        return total / max(1, positions)

    @torch.no_grad()
    def features_used(self, rows: list) -> Counter:
        """How often each SAE feature is among those the controller adds at the completion
        positions (the answer position on multiple-choice tasks) of `rows`."""
        from harness.activations import residuals

        used: Counter = Counter()
        for start in range(0, len(rows), self.config.micro_batch):
            part = rows[start : start + self.config.micro_batch]
            ids, mask = _left_padded(part, self.pad_id, self.device)
            width = ids.size(1)
            with self.teacher.off():
                hidden = residuals(self.teacher.model, ids, mask, [self.gate.layer])
            coefs = self.gate.coefficients(hidden[self.gate.layer])
            for i, (_, completion) in enumerate(part):
                for position in range(width - max(1, len(completion)), width):
                    used.update(int(self.gate.ids[f]) for f in coefs[i, position].nonzero().flatten().tolist())
        return used


def _step_rows(docs_prompts: list[str], step: int, generation: bool, budget: Any, seed: int) -> list[str]:
    """The prompts of `step`, in a seeded order: prompts x samples on generation tasks (each
    prompt repeated), prompts x samples distinct prompts on multiple-choice tasks."""
    import random

    order = list(range(len(docs_prompts)))
    random.Random(seed).shuffle(order)
    if generation:
        chosen = [order[(step * budget.prompts_per_step + i) % len(order)] for i in range(budget.prompts_per_step)]
        return [docs_prompts[i] for i in chosen for _ in range(budget.samples_per_prompt)]
    per_step = budget.prompts_per_step * budget.samples_per_prompt
    return [docs_prompts[order[(step * per_step + i) % len(order)]] for i in range(per_step)]


def _save_checkpoint(folder: Path, gate: Any, optimizer: Any, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from harness.manifest import write_json

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in gate.state_dict().items()},
        str(partial / "controller.safetensors"),
    )
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    write_json(partial / STATE, state)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)  # a checkpoint is whole or absent, never half-written
    older = sorted(folder.parent.glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
    for stale in older[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(stale, ignore_errors=True)


def _latest(checkpoints: Path, fingerprint: str) -> Path | None:
    found = (
        sorted(checkpoints.glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1])) if checkpoints.is_dir() else []
    )
    for folder in reversed(found):
        try:
            if json.loads((folder / STATE).read_text()).get("fingerprint") == fingerprint:
                return folder
        except (OSError, ValueError):
            continue
    return None


def train(config: CSFTConfig, name: str = METHOD) -> Path:
    """Distil (or resume distilling) the teacher into a feature controller; returns the run
    directory, `<runs>/<model>/<name>/<task>/seed<k>` (results under
    `results/<model>/<name>/<task>/<budget>-seed<k>/`)."""
    from rich.console import Console
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from harness.lm_models import LeanHFLM
    from harness.manifest import build_manifest, write_json
    from harness.models import default_device, load_causal_lm
    from harness.prompts import task_prompts
    from harness.scoring import TaskScorer
    from harness.splits import method_splits
    from harness.tasks import load_task
    from rl.budget import Spent
    from rl.crl.through_lm.trainer import ThroughLM
    from rl.csft.teacher import load_teacher
    from rl.grpo import TrainingFailed, stop_at_until, train_dtype
    from rl.rollout_copy import RolloutCopy, resolve_rollout_dtype
    from rl.runs import frozen_fingerprint, publish_run, run_dir_for, run_done, write_curve

    config.check_teacher()  # before any model load
    console = Console(stderr=True, soft_wrap=True)
    device = config.device or default_device()
    task = load_task(config.task)
    generation = task.OUTPUT_TYPE == "generate_until"
    budget = config.task_budget(task)
    splits = method_splits(task)
    run_dir = run_dir_for(config, name)
    if config.resume and run_done(config, name):
        console.print(f"{run_dir} already holds this C-SFT run, finished; reused (--no-resume trains it again)")
        return run_dir
    checkpoints = run_dir / "checkpoints"
    if not config.resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    docs = [splits.train[i % len(splits.train)] for i in range(min(budget.distinct_prompts, len(splits.train)))]
    val_docs = splits.validation[: config.val_limit] if config.val_limit else splits.validation
    dtype = train_dtype(config.dtype, device)
    model, tokenizer = load_causal_lm(config.model, dtype=dtype, device=device)
    if generation:
        stop_at_until(model, tokenizer, task)
    prompts = task_prompts(task, docs, seed=config.seed)
    val_prompts = task_prompts(task, val_docs, seed=config.seed)
    parameterisation = ThroughLM(config)  # the candidates and the controller, from the base model
    gate = parameterisation.build(model, tokenizer, task, docs, prompts, device).to(device)
    teacher = load_teacher(config.teacher, model, config.model)
    rollout_dtype = resolve_rollout_dtype(
        config.rollout_dtype, dtype, device, budget.max_new_tokens if generation else 1
    )
    sampler = None  # a bf16 copy of a LoRA teacher samples its completions (`rl.rollout_copy`)
    if generation and teacher.kind == "lora" and rollout_dtype != dtype:
        sampler = RolloutCopy(teacher.model, rollout_dtype, lambda copy: contextlib.nullcontext())
    else:
        rollout_dtype = dtype
    frozen_before = frozen_fingerprint(teacher.model, ())
    optimizer = torch.optim.Adam(gate.trunk.parameters(), lr=config.learning_rate)
    distiller = Distiller(teacher, gate, tokenizer, config, device)
    lm = LeanHFLM(
        pretrained=teacher.model,
        tokenizer=tokenizer,
        batch_size=config.batch_size,
        generation_batch_size=config.generation_batch_size,
        device=device,
    )
    scorer = TaskScorer(lm, task, val_docs, seed=config.seed)

    def student_score() -> float:
        with teacher.off():
            return scorer([gate])

    spent, curve, start = Spent(), [], 0
    resume_from = _latest(checkpoints, config.fingerprint()) if config.resume else None
    if resume_from is not None:
        state = json.loads((resume_from / STATE).read_text())
        gate.load_state_dict(load_file(str(resume_from / "controller.safetensors")))
        optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", weights_only=True))
        spent, curve, start = Spent(**state["spent"]), state["curve"], state["step"]
        console.print(f"resuming {run_dir} from {resume_from.name} (step {start}, {spent.rollouts} completions)")
    torch.manual_seed(config.seed)
    # fixed: the same every resume
    held_out = _targets(teacher, tokenizer, val_prompts, generation, config, budget, sampler)
    with teacher.off():
        references = {"base_validation": scorer([])}
    references["kl_base"] = distiller.divergence(held_out, steered=False)  # switches the teacher on and off itself
    references["teacher_validation"] = scorer(teacher.interventions)
    spent.trainable_parameters = sum(p.numel() for p in gate.parameters() if p.requires_grad)
    console.print(
        f"[bold]C-SFT[/] {config.model} on {config.task}: distil {teacher.kind} teacher {config.teacher} into "
        f"{parameterisation.describe(spent.trainable_parameters)}; {budget.steps} steps x "
        f"{budget.prompts_per_step * budget.samples_per_prompt} teacher completions; validation base "
        f"{references['base_validation']:.3f}, teacher {references['teacher_validation']:.3f}, "
        f"KL(teacher || base) {references['kl_base']:.4f} per token"
    )
    if not curve:
        curve.append(
            {
                "step": 0,
                "rollouts": 0,
                "loss": None,
                "validation": student_score(),
                "held_out_kl": distiller.divergence(held_out),
            }
        )
    run_started, wall_before = time.time(), spent.wall_s
    for step in tqdm(range(start, budget.steps), initial=start, total=budget.steps, desc="C-SFT", unit="step"):
        began = time.time()
        torch.manual_seed(config.seed * 100_003 + step)  # the step's samples, the same after a resume
        step_prompts = _step_rows(prompts, step, generation, budget, config.seed)
        rows = _targets(teacher, tokenizer, step_prompts, generation, config, budget, sampler)
        optimizer.zero_grad(set_to_none=True)
        kl, positions = distiller.step(rows)
        loss = kl / positions
        if not torch.isfinite(torch.tensor(loss)) or abs(loss) > config.max_loss:
            kept = _latest(checkpoints, config.fingerprint())
            raise TrainingFailed(
                f"C-SFT stopped: the KL became {loss} at step {step + 1}; the last good checkpoint is {kept}. "
                f"Lower --learning-rate (now {config.learning_rate}) and rerun: it resumes from there."
            )
        optimizer.step()
        spent.steps, spent.rollouts = step + 1, spent.rollouts + len(rows)
        spent.generated_tokens += sum(len(c) for _, c in rows)
        spent.train_s += time.time() - began
        row = {"step": step + 1, "rollouts": spent.rollouts, "loss": loss, "validation": None, "held_out_kl": None}
        if (config.eval_every and (step + 1) % config.eval_every == 0) or step + 1 == budget.steps:
            row["validation"], row["held_out_kl"] = student_score(), distiller.divergence(held_out)
        curve.append(row)
        spent.wall_s = wall_before + time.time() - run_started
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < budget.steps:
            state = {"step": step + 1, "spent": spent.to_dict(), "curve": curve, "fingerprint": config.fingerprint()}
            _save_checkpoint(checkpoints / f"step-{step + 1}", gate, optimizer, state)

    frozen_after = frozen_fingerprint(teacher.model, ())
    if frozen_after != frozen_before:
        raise TrainingFailed(f"the frozen model or teacher changed during C-SFT ({frozen_before} -> {frozen_after})")
    kl_steered = curve[-1]["held_out_kl"]
    fidelity = {
        **references,
        "kl_steered": kl_steered,
        "kl_closed": 1 - kl_steered / references["kl_base"] if references["kl_base"] > 0 else None,
        "validation": curve[-1]["validation"],
        "held_out_prompts": len(held_out),
    }
    used = distiller.features_used(held_out)
    record = {
        "method": METHOD,
        **asdict(config),
        "budget_resolved": budget.to_dict(),
        "identity": config.identity(),
        "fingerprint": config.fingerprint(),
        "teacher_kind": teacher.kind,
        "fidelity": fidelity,
        "features_used": [[f, n] for f, n in used.most_common()],
    }
    gate.eval()
    model.add_module(parameterisation.module_name, gate)  # where ThroughLM.save finds it
    parameterisation.save(model, run_dir, record)
    write_json(
        run_dir / "manifest.json",
        build_manifest(
            kind=METHOD,
            config=asdict(config),
            budget=budget.to_dict(),
            spent=spent.to_dict(),
            splits=splits.sizes(),
            curve=curve,
            fidelity=fidelity,
            torch_threads=torch.get_num_threads(),
            rollout_dtype=rollout_dtype,
            frozen_weights_checksum=frozen_after,
            resumed_from=str(resume_from) if resume_from else None,
        ),
    )
    write_curve(
        curve,
        run_dir,
        f"C-SFT: {config.task}, {config.model} (teacher: {teacher.kind})",
        scorer.metric,
        fields=("step", "rollouts", "loss", "validation", "held_out_kl"),
    )
    _write_features(run_dir / "features.md", used, parameterisation.sae, fidelity, config, run_dir)
    publish_run(config, name)
    shutil.rmtree(checkpoints, ignore_errors=True)
    console.print(
        f"C-SFT done: {spent.rollouts} teacher completions, {spent.wall_s:.0f} s; KL(teacher || .) per token "
        f"base {references['kl_base']:.4f} -> steered {kl_steered:.4f}"
        + ("" if fidelity["kl_closed"] is None else f" (closed {fidelity['kl_closed']:.1%})")
        + "; "
        f"validation base {references['base_validation']:.3f}, steered {fidelity['validation']:.3f}, "
        f"teacher {references['teacher_validation']:.3f}; saved in {run_dir}"
    )
    return run_dir


def _write_features(path: Path, used: Counter, sae: Any, fidelity: dict, config: CSFTConfig, run_dir: Path) -> None:
    """The features the distilled controller adds most on held-out prompts, with their cards."""
    from harness.manifest import write_text
    from harness.sae.cards import cards_markdown

    total = sum(used.values())
    closed = fidelity["kl_closed"]
    lines = [
        f"# C-SFT on {config.task}: the features that write the teacher's change",
        "",
        f"Teacher {config.teacher}; layer {getattr(sae, 'layer', config.layer)} of {getattr(sae, 'name', config.sae)}, "
        f"at most {config.k} features per token. On {fidelity['held_out_prompts']} held-out (validation) prompts, "
        f"KL(teacher || base) {fidelity['kl_base']:.4f} and KL(teacher || steered) {fidelity['kl_steered']:.4f} "
        f"per completion token"
        + (f": the controller closes {closed:.1%} of the divergence." if closed is not None else ".")
        + f" Validation score: base {fidelity['base_validation']:.3f}, steered {fidelity['validation']:.3f}, "
        f"teacher {fidelity['teacher_validation']:.3f}. Generated by `crl-bench train csft` ({run_dir}).",
        "",
        "| feature | times added | share |",
        "|---:|---:|---:|",
    ]
    top = used.most_common(20)
    lines += [f"| {f} | {n} | {n / max(1, total):.1%} |" for f, n in top]
    lines += ["", *cards_markdown(getattr(sae, "directory", None), [f for f, _ in top])]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "\n".join(lines) + "\n")
