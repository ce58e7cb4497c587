"""One GRPO trainer for every method trained through the language model's own token
log-probabilities: RLVR (a LoRA adapter), the RL steering vector (one dense vector per layer)
and, as they land, the other rungs of the ladder. They share TRL's `GRPOTrainer` and
everything around it: the prompts (`harness.prompts.task_prompts`), the reward (the task's own
metric, `harness.rewards`), sampling (multiple-choice tasks sample among their one-token
choices; generation stops at the task's `until` strings), the budget object, validation,
checkpoints, resume, the NaN guard and the run directory. A `Parameterisation`
(`rl.parameterisation`) says what trains and how the result is saved.

TRL's fused LM head (`trl.trainer.utils`, 1.16) scores only the completion tokens on devices
with Triton; everywhere else it scores every position of prompt and completion, full
vocabulary, then masks the prompt out: fixed tile shapes spare compilers such as Neuron's a
recompilation per batch. On a CPU nothing is compiled, so that is pure waste: on arith_gen a
rollout is ~230 prompt tokens and ~16 completion tokens, and every prompt position paid for
262k logits forward and backward. `score_completions_only` makes the CPU take TRL's own compact
path (the same per-token log-probabilities, for the completion tokens only).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rl.budget import Spent
from rl.config import GRPOSettings, RLTrainConfig, activation_bytes
from rl.parameterisation import Parameterisation
from rl.rollout_copy import RolloutCopy, resolve_rollout_dtype
from rl.runs import frozen_fingerprint, publish_run, run_dir_for, write_curve


def score_completions_only() -> bool:
    """Route CPU tensors through TRL's compact scoring path; True when it is in place (TRL
    versions without the switch keep their own behaviour)."""
    from trl.trainer import utils

    original = getattr(utils, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, "crl_bench_compact", False):
        return True

    def compact(device: Any) -> bool:
        return device.type == "cpu" or original(device)

    compact.crl_bench_compact = True  # type: ignore[attr-defined]
    utils._use_triton = compact
    return True


STATE_FILE = "crl_bench_state.json"  # spent budget and curve, saved inside each checkpoint
CHOICE_BIAS = 100.0  # logit bias that restricts one-token sampling to the task's choices


def train_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "float32" if str(device).startswith("cpu") else "bfloat16"


def unsupported(task: Any, tokenizer: Any) -> str | None:
    """Why RL training cannot run on `task` (None when it can)."""
    if task.OUTPUT_TYPE not in ("multiple_choice", "generate_until"):
        return f"output_type {task.OUTPUT_TYPE!r} has no RL regime"
    if task.OUTPUT_TYPE == "multiple_choice":
        try:
            docs = list(task.training_docs() if task.has_training_docs() else task.eval_docs)[:50]
            check_one_token_choices(task, docs, tokenizer)
        except ValueError as err:
            return str(err)
    return None


def check_one_token_choices(task: Any, docs: list[dict], tokenizer: Any) -> list[int]:
    """Multiple-choice training answers with one token: every choice must be one token.
    Returns the choice tokens (all documents' together)."""
    delimiter = task.config.target_delimiter
    tokens: set[int] = set()
    for doc in docs:
        for choice in task.doc_to_choice(doc):
            ids = tokenizer(delimiter + choice, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(
                    f"task {task.config.task!r} has the choice {choice!r}, which is more than one token for this "
                    "tokenizer; the one-token regime needs one-token choices (train on a task whose answers are "
                    "single tokens, e.g. arith_mc, boolq, toy_sentiment)"
                )
            tokens.add(ids[0])
    return sorted(tokens)


class RewardMeter:
    """The task reward in TRL's convention, passing only the document's fields, and counting
    rollouts, generated tokens and the mean reward of each call (one call per step)."""

    def __init__(self, reward: Any, doc_keys: list[str], spent: Spent, random_seed: int | None = None):
        self.reward, self.doc_keys, self.spent = reward, doc_keys, spent
        self.random_seed = random_seed  # the random-reward control: coin flips with the step's mean reward
        self.last_mean: float | None = None
        self.__name__ = getattr(reward, "__name__", "task_reward")

    def __call__(
        self, prompts: list, completions: list, completion_ids: list | None = None, **kwargs: Any
    ) -> list[float]:
        values = self.reward(prompts, completions, **{k: kwargs[k] for k in self.doc_keys})
        flips = None
        if self.random_seed is not None:  # seeded by the rollouts so far: a resumed run draws what it would have
            import random

            draw = random.Random(f"{self.random_seed}:{self.spent.rollouts}:{_rank()}")
            mean = sum(values) / max(1, len(values))
            flips = [float(draw.random() < mean) for _ in values]
        tokens = sum(len(ids) for ids in completion_ids) if completion_ids is not None else 0
        # under `accelerate launch` / `torchrun` each process scores its own completions: count all of them
        rollouts, tokens, total = _summed([len(completions), tokens, sum(values)])
        self.spent.rollouts += int(rollouts)
        self.spent.generated_tokens += int(tokens)
        self.last_mean = total / rollouts  # the task's reward, also under the control: what the curve shows
        return values if flips is None else flips


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _summed(numbers: list[float]) -> list[float]:
    """`numbers` summed over the processes of a distributed run (unchanged in one process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return numbers
    tensor = torch.tensor(numbers, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


class TrainingFailed(RuntimeError):
    pass


def _callbacks(
    config: RLTrainConfig,
    meter: RewardMeter,
    spent: Spent,
    curve: list[dict],
    validate: Any,
    run_started: float,
    wall_before: float,
):
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        """Stops on a NaN or exploding loss before the bad step is checkpointed."""

        failure: str | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if curve and curve[-1]["step"] == state.global_step and logs.get("loss") is not None:
                curve[-1]["loss"] = logs["loss"]  # the step's loss, logged after its curve row
            for key in ("loss", "grad_norm"):
                value = logs.get(key)
                if value is not None and (not math.isfinite(value) or abs(value) > config.max_loss):
                    Guard.failure = f"{key} became {value} at step {state.global_step}"
                    control.should_training_stop = True
                    control.should_save = False
            return control

    class Curve(TrainerCallback):
        step_started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            if not curve:
                curve.append({"step": 0, "rollouts": 0, "reward": None, "validation": validate()})

        def on_step_begin(self, args, state, control, **kwargs):
            Curve.step_started = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            spent.train_s += time.time() - Curve.step_started
            spent.steps = state.global_step
            spent.wall_s = wall_before + time.time() - run_started
            row = {"step": state.global_step, "rollouts": spent.rollouts, "reward": meter.last_mean, "validation": None}
            last = state.global_step >= state.max_steps
            if (config.eval_every and state.global_step % config.eval_every == 0) or last:
                if Guard.failure is None:
                    row["validation"] = validate()
            curve.append(row)
            return control

        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                (checkpoint / STATE_FILE).write_text(
                    json.dumps({"spent": spent.to_dict(), "curve": curve, "fingerprint": config.fingerprint()})
                )
            return control

    return Guard, Curve


def activation_estimate(model: Any, tokenizer: Any, prompts: list[str], micro: int, new_tokens: int, dtype: str) -> str:
    """`activation_bytes` for this model and the longest of the first prompts, in words."""
    tokens = max(len(tokenizer(p)["input_ids"]) for p in prompts[: min(len(prompts), 64)]) + new_tokens
    total = activation_bytes(model.config, tokens, micro, dtype)
    layers = getattr(model.config.get_text_config(), "num_hidden_layers", "?")
    return f"about {total / 1024**3:.1f} GiB of activations per micro-batch ({tokens} tokens, {layers} layers)"


def stop_at_until(model: Any, tokenizer: Any, task: Any) -> None:
    """Rollouts stop at the first token that contains one of the task's one-token `until`
    strings (e.g. arith_gen's newline, also inside "\n\n" or ".\n" tokens), as lm-eval's
    generation does: TRL stops and masks at the model's `eos_token_id`s, which we extend."""
    until = [u for u in (task.config.generation_kwargs or {}).get("until", []) if u]
    short = [u for u in until if len(tokenizer(u, add_special_tokens=False)["input_ids"]) == 1]
    if not short:
        return
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    decoded = {
        i: tokenizer.convert_tokens_to_string([p])
        for i, p in enumerate(pieces)
        if p is not None and any(u in p or u.replace("\n", "Ċ") in p for u in short)
    }
    stops = sorted(i for i, text in decoded.items() if any(u in text for u in short))
    current = model.generation_config.eos_token_id
    current = [] if current is None else [current] if isinstance(current, int) else list(current)
    model.generation_config.eos_token_id = current + [t for t in stops if t not in current]


def _validator(
    model: Any,
    tokenizer: Any,
    task: Any,
    docs: list[dict],
    config: RLTrainConfig,
    device: str,
    rollout_copy: RolloutCopy | None = None,
):
    """Validation score of the model being trained, with lm-eval's requests (`TaskScorer`), on
    its rollout copy where it has one."""
    from harness.lm_models import LeanHFLM
    from harness.scoring import TaskScorer

    lm = LeanHFLM(
        pretrained=model if rollout_copy is None else rollout_copy.copy,
        tokenizer=tokenizer,
        batch_size=config.batch_size,
        generation_batch_size=config.generation_batch_size,
        device=device,
    )
    scorer = TaskScorer(lm, task, docs, seed=config.seed)

    def validate() -> float:
        if rollout_copy is not None:
            with rollout_copy.active():
                return scorer([])
        was_training = model.training
        model.eval()
        try:
            return scorer([])
        finally:
            model.train(was_training)

    validate.metric = scorer.metric
    return validate


def _latest_checkpoint(directory: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not directory.is_dir():
        return None
    found = get_last_checkpoint(str(directory))
    return Path(found) if found else None


def train(config: GRPOSettings, param: Parameterisation) -> Path:
    """Train (or resume) one GRPO run of `param` on `config`; returns its run directory."""
    import datasets
    import torch
    from accelerate import PartialState
    from rich.console import Console
    from trl import GRPOConfig

    from harness.manifest import build_manifest, write_json
    from harness.models import default_device, load_causal_lm
    from harness.prompts import doc_columns, task_prompts
    from harness.rewards import task_reward
    from harness.splits import method_splits
    from harness.tasks import load_task

    device = config.device or default_device()
    # several under `accelerate launch` / `torchrun` (`--cpu`: CPU processes): data-parallel training
    processes = PartialState(cpu=str(device).startswith("cpu"))
    main = processes.is_main_process
    console = Console(stderr=True, soft_wrap=True, quiet=not main)
    task = load_task(config.task)
    budget = config.task_budget(task)
    splits = method_splits(task)
    dtype = train_dtype(config.dtype, device)
    run_dir = run_dir_for(config, param.method)
    name = run_dir.parent.parent.name  # the method, or <method>-random-reward for the control
    title = param.title + (" on a random reward" if config.reward == "random" else "")
    checkpoints = run_dir / "checkpoints"
    if main and not config.resume and run_dir.exists():
        shutil.rmtree(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    processes.wait_for_everyone()

    docs = [splits.train[i % len(splits.train)] for i in range(min(budget.distinct_prompts, len(splits.train)))]
    val_docs = splits.validation[: config.val_limit] if config.val_limit else splits.validation
    model, tokenizer = load_causal_lm(config.model, dtype=dtype, device=device)
    generation_kwargs = None
    if task.OUTPUT_TYPE == "multiple_choice":
        choice_tokens = check_one_token_choices(task, docs, tokenizer)
        generation_kwargs = {"sequence_bias": [[[token], CHOICE_BIAS] for token in choice_tokens]}
    if task.OUTPUT_TYPE == "generate_until":
        stop_at_until(model, tokenizer, task)
    prompts = task_prompts(task, docs, seed=config.seed)
    dataset = datasets.Dataset.from_dict({"prompt": prompts, **doc_columns(docs)})

    resume_from = _latest_checkpoint(checkpoints) if config.resume else None
    spent, curve = Spent(), []
    if (
        resume_from is not None
        and (resume_from / STATE_FILE).exists()
        and json.loads((resume_from / STATE_FILE).read_text()).get("fingerprint") != config.fingerprint()
    ):
        console.print(f"{run_dir} holds a checkpoint of a run with other settings: starting over")
        processes.wait_for_everyone()  # every process has read it before the main one deletes it
        if main:
            shutil.rmtree(checkpoints)
        resume_from = None
    if resume_from is not None and (resume_from / STATE_FILE).exists():
        state = json.loads((resume_from / STATE_FILE).read_text())
        spent, curve = Spent(**state["spent"]), state["curve"]
        console.print(f"resuming {run_dir} from {resume_from.name} (step {spent.steps}, {spent.rollouts} rollouts)")
    elif resume_from is not None:
        resume_from = None  # a checkpoint without our state is not one we wrote: start over

    meter = RewardMeter(task_reward(task), list(docs[0]), spent, config.seed if config.reward == "random" else None)
    total = budget.prompts_per_step * budget.samples_per_prompt
    if total % processes.num_processes:
        raise ValueError(
            f"a step's {total} completions do not split evenly over {processes.num_processes} processes; "
            "launch a number of processes that divides --prompts-per-step x --samples-per-prompt"
        )
    # each process generates and trains on its share of the step; the step's total stays the budget's
    micro, accumulation = config.micro_batches(total // processes.num_processes, device)
    args = GRPOConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_generations=budget.samples_per_prompt,
        max_completion_length=budget.max_new_tokens,
        max_steps=budget.steps,
        learning_rate=config.learning_rate,
        temperature=config.temperature,
        beta=config.beta,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=1,
        save_steps=config.checkpoint_every,
        save_total_limit=2,
        report_to="none",
        bf16=dtype == "bfloat16",
        use_cpu=str(device).startswith("cpu"),
        remove_unused_columns=False,
        disable_tqdm=False,
        generation_kwargs=generation_kwargs,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        gradient_checkpointing=config.gradient_checkpointing,
        use_vllm=config.vllm,
        logging_nan_inf_filter=False,  # a NaN loss must reach the guard, not be averaged away
    )
    param.attach(model, tokenizer, task, docs, prompts, device)
    score_completions_only()  # the loss's log-probabilities for completion tokens only, on a CPU too
    started = time.time()
    validate_holder: dict[str, Any] = {}
    Guard, Curve = _callbacks(config, meter, spent, curve, lambda: validate_holder["fn"](), started, spent.wall_s)
    trainer_class = param.trainer_class()
    shared = config.shared_prefix and not config.gradient_checkpointing  # checkpointing drops the prefix's cache
    rollout_dtype = resolve_rollout_dtype(config.rollout_dtype, dtype, device, budget.max_new_tokens)
    copied = rollout_dtype != dtype and not config.vllm  # vLLM samples in its own engine
    attributes = {"shared_prefix": shared, "rollout_dtype": rollout_dtype if copied else None}
    trainer = type(
        trainer_class.__name__, (trainer_class,), {**attributes, "rollout_context": staticmethod(param.active)}
    )(
        model=model,
        reward_funcs=[meter],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=param.peft_config(),
        callbacks=[Guard(), Curve()],
    )
    spent.trainable_parameters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    frozen_before = frozen_fingerprint(trainer.model, param.frozen_skip)
    validate_holder["fn"] = _validator(trainer.model, tokenizer, task, val_docs, config, device, trainer.rollout_copy)
    console.print(
        f"[bold]{title}[/] {config.model} on {config.task}: {budget.steps} steps x {budget.prompts_per_step} "
        f"prompts x {budget.samples_per_prompt} samples (max {budget.max_new_tokens} new tokens), "
        f"{len(docs)} distinct prompts, {param.describe(spent.trainable_parameters)}, {dtype} on {device}"
        + (f"; rollouts and validation sampled from a {rollout_dtype} copy" if copied else "")
    )
    console.print(
        f"{accumulation} micro-batch(es) of {micro} completions per step"
        f"{f' in each of {processes.num_processes} processes' if processes.num_processes > 1 else ''}; "
        f"{activation_estimate(trainer.model, tokenizer, prompts, micro, budget.max_new_tokens, dtype)}; "
        "lower --micro-batch (or pass --gradient-checkpointing) if that does not fit"
    )
    with param.active(trainer.model):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        final_validation = validate_holder["fn"]
    if Guard.failure is not None:
        good = _latest_checkpoint(checkpoints)
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint was saved before it"
        raise TrainingFailed(
            f"{title} training stopped: {Guard.failure}; {kept}. Lower --learning-rate "
            f"(now {config.learning_rate}) and rerun: it resumes from that checkpoint."
        )

    frozen_after = frozen_fingerprint(trainer.model, param.frozen_skip)
    if frozen_after != frozen_before:
        raise TrainingFailed(
            f"the base model's weights changed during {title} training ({frozen_before} -> "
            f"{frozen_after}); only the trained parameters may change. This is a bug: please report it"
        )
    spent.steps = trainer.state.global_step
    processes.wait_for_everyone()
    if not main:  # the main process writes the run's files
        return run_dir
    param.save(
        trainer.model,
        run_dir,
        {
            "method": name,
            **asdict(config),
            "budget_resolved": budget.to_dict(),
            "identity": config.identity(),
            "fingerprint": config.fingerprint(),
        },
    )
    write_json(
        run_dir / "manifest.json",
        build_manifest(
            kind=name,
            config=asdict(config),
            budget=budget.to_dict(),
            spent=spent.to_dict(),
            splits=splits.sizes(),
            curve=curve,
            torch_threads=torch.get_num_threads(),
            rollout_dtype=rollout_dtype if copied else dtype,
            processes=processes.num_processes,
            frozen_weights_checksum=frozen_after,
            resumed_from=str(resume_from) if resume_from else None,
        ),
    )
    write_curve(curve, run_dir, f"{title}: {config.task}, {config.model}", final_validation.metric)
    publish_run(config, param.method)
    final = curve[-1]["validation"] if curve and curve[-1].get("validation") is not None else float("nan")
    console.print(
        f"{title} done: {spent.rollouts} rollouts, {spent.generated_tokens} generated tokens, "
        f"{spent.wall_s:.0f} s; validation {curve[0]['validation']:.3f} -> {final:.3f}; saved in {run_dir}"
    )
    return run_dir
