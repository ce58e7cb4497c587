"""`crl_steered`: CRL's lm-eval model, the frozen base model steered token by token by a
trained controller (an `harness.lm_models.LeanHFLM` that runs every forward and generation
under the controller's intervention)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.artifacts import check_model, read_config, require_run_dir
from harness.lm_models import LeanHFLM
from harness.steering import Intervention
from rl.crl.controller import CONTROLLER_TYPES, ControllerRun, at_decision, from_last_prompt_token, load_controller
from rl.crl.through_lm.gate import CONTROLLER_TYPE as GATE_TYPE
from rl.crl.through_lm.gate import GateRun, load_gate

POSITIONS = ("answer", "generated")  # where a controller acts on a task of the other kind


class CRLSteeredLM(LeanHFLM):
    """The frozen base model steered token by token by a CRL controller: `controller=<run dir>`.

    The SAE directions, layers and controller come from the run directory. Multiple-choice
    requests are steered at the answer position (the context's last token), generation at the
    prompt's last token and every generated token. The controller takes its most probable
    action unless `sample=True`. `log_interventions=<file.jsonl>` appends every decision:
    (item, token position, token, layer, feature, coefficient).

    A controller acts where its setting trained it to: one-token and multi-layer controllers at
    the answer position of multiple-choice requests, generation controllers at every generated
    token. A task of the other kind is refused unless `positions=` says where to act anyway:
    `answer` (the context's last token only) or `generated` (the prompt's last token and every
    generated token).
    """

    def __init__(
        self,
        pretrained: str = "gemma-3-270m",
        controller: str | None = None,
        sample: bool = False,
        log_interventions: str | None = None,
        seed: int = 0,
        allow_other_model: bool = False,
        positions: str | None = None,
        **kwargs,
    ):
        how = "train one with `crl-bench train crl --model M --task T`"
        if controller is None:
            raise ValueError(f"crl_steered needs controller=<run dir>; {how}")
        run_dir = require_run_dir(controller, "CRL controller run", ("config.json", "*.safetensors"), how)
        config = read_config(run_dir, f"retrain it: {how}")
        if not allow_other_model:
            check_model(config.get("model"), pretrained, f"CRL controller {run_dir}", "allow_other_model=True")
        if config.get("controller") not in (*CONTROLLER_TYPES.values(), GATE_TYPE):
            raise ValueError(
                f"{run_dir}: controller type {config.get('controller')!r} is not one this version of "
                f"crl-bench can load; {how} with this version"
            )
        super().__init__(pretrained=pretrained, **kwargs)
        if config["d_model"] != self.info.d_model:
            raise ValueError(
                f"{run_dir} was trained on a model with d_model {config['d_model']}; "
                f"{pretrained} has {self.info.d_model}. Pass the model it was trained on ({config['model']})"
            )
        for layer in config["layers_resolved"]:
            self.info.check_layer(layer)
        # CRL's discrete controller (PPO), or CRL through the LM's feature gate (`rl.crl.through_lm`)
        self.gate = load_gate(run_dir, device=self.device) if config["controller"] == GATE_TYPE else None
        self.controller, self.bank = load_controller(run_dir, device=self.device) if self.gate is None else (None, None)
        if positions not in (None, *POSITIONS):
            raise ValueError(f"crl_steered positions= must be one of {', '.join(POSITIONS)}, got {positions!r}")
        self.positions, self.setting, self.run_dir = positions, config.get("setting"), run_dir
        self.mode = "sample" if sample else "greedy"
        self.generator = torch.Generator().manual_seed(int(seed))
        self.log_path = log_interventions
        self.items: dict[str, int] = {}
        self._runs: list = []
        self.generation_contexts: list[str] | None = None

    def _where(self, ctx):
        if self.decision_positions is not None:
            return at_decision(self.decision_positions)(ctx)
        if self.positions == "answer":  # generation, but act only where the prompt ends
            return at_decision(ctx.prompt_lengths - 1)(ctx)
        return from_last_prompt_token(ctx)

    def _check_kind(self, kind: str) -> None:
        """Refuse a controller on requests of the other kind unless `positions=` was given."""
        trained = "generation" if self.setting == "generation" else "one-token"
        if self.positions is not None or self.setting is None or trained == kind:
            return
        if kind == "generation":
            raise ValueError(
                f"{self.run_dir} is a {self.setting} controller: it was trained to act once, at the answer "
                "position of multiple-choice requests, but this task generates. Evaluate it on a multiple-choice "
                "task, or pass positions=generated (every generated token) or positions=answer (the prompt's "
                "last token only) to steer generation anyway"
            )
        raise ValueError(
            f"{self.run_dir} is a generation controller: it was trained to act at every generated token, but this "
            "task is scored by log-likelihood (multiple choice). Evaluate it on a generation task, or pass "
            "positions=answer to let it act at the answer position"
        )

    def interventions(self) -> list[Intervention]:
        if self.gate is not None:  # acts at every token; logs where a CRL controller decides
            run = GateRun(self.gate, self._where)
        else:
            run = ControllerRun(
                self.controller, self.bank, self._where, mode=self.mode, generator=self.generator, keep_residuals=False
            )
        if self.log_path:
            # the rows of this forward or generation batch, captured now: the next batch replaces them
            contexts = self.batch_contexts if self.batch_contexts is not None else self.generation_contexts
            self._runs.append((run, list(contexts or [])))
        return [run.intervention()]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._check_kind("one-token")
        self.items.update({r.args[0]: r.doc_id for r in requests})
        return self._logged(super().loglikelihood, requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        self._check_kind("generation")
        self.items.update({r.args[0]: r.doc_id for r in requests})
        return self._logged(super().generate_until, requests, disable_tqdm=disable_tqdm)

    def _logged(self, method, requests, **kwargs):
        self._runs: list = []
        try:
            return method(requests, **kwargs)
        finally:
            if self.log_path:
                self._write_log()

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        self.generation_contexts = self.tokenizer.batch_decode(context, skip_special_tokens=True)
        try:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        finally:
            self.generation_contexts = None

    def _write_log(self) -> None:
        from filelock import FileLock

        path = Path(self.log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for run, contexts in self._runs:
            for record in run.records:
                context = contexts[record.row] if record.row < len(contexts) else None
                entry = {
                    "item": self.items.get(context),
                    "position": record.position,
                    "token": self.tokenizer.decode([record.token]) if record.token >= 0 else None,
                    "layer": record.layer,
                    "feature": record.feature,
                    "coef": record.coef,
                }
                lines.append(json.dumps(entry) + "\n")
        # one locked append: the processes of an `accelerate launch` / `torchrun` run share the file
        with FileLock(str(path) + ".lock"), open(path, "a") as handle:
            handle.write("".join(lines))
