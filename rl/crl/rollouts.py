"""CRL rollouts: the frozen model run under the controller on a task's prompts.

`build_problem` turns a task's documents into what a rollout needs (lm-eval's few-shot
prompts, the choices' tokens, the gold answers); `Rollouts.run` runs a batch of (document,
sample) rows in sample, greedy or replay mode and returns the rewards and every decision:

- multiple-choice tasks: one forward per row with the controller acting at the answer
  position; the answer is the choice with the highest log-likelihood (one-token choices
  read from that position's logits; multi-token choices scored with the row's actions
  replayed on each choice);
- generation tasks: greedy generation with the controller acting at the prompt's last token
  and every generated token; decisions after the stop string are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rl.crl.controller import Decision


@dataclass
class Problem:
    """What a rollout needs from the task, built once."""

    task: Any
    docs: list[dict]
    prompts: list[str]
    kind: str  # one-token-choices | choices | generation
    choice_tokens: list[list[int]] | None = None  # one-token: per doc, the choice token ids
    gold: list[int] | None = None


def build_problem(task: Any, docs: list[dict], tokenizer: Any, seed: int) -> Problem:
    from harness.prompts import task_prompts

    prompts = task_prompts(task, docs, seed=seed)
    if task.OUTPUT_TYPE == "generate_until":
        return Problem(task, docs, prompts, "generation")
    if task.OUTPUT_TYPE != "multiple_choice":
        raise ValueError(
            f"task {task.config.task!r} has output_type {task.OUTPUT_TYPE!r}; CRL needs a "
            "multiple_choice or generate_until task"
        )
    delimiter = task.config.target_delimiter
    gold, tokens, one_token = [], [], True
    for doc in docs:
        choices = task.doc_to_choice(doc)
        target = task.doc_to_target(doc)
        gold.append(target if isinstance(target, int) else choices.index(target))
        ids = [tokenizer(delimiter + c, add_special_tokens=False)["input_ids"] for c in choices]
        one_token &= all(len(i) == 1 for i in ids)
        tokens.append([i[0] for i in ids])
    return Problem(
        task, docs, prompts, "one-token-choices" if one_token else "choices", tokens if one_token else None, gold
    )


class Rollouts:
    """Runs the frozen model under the controller for a batch of (document, sample) rows."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        controller: Any,
        bank: Any,
        problem: Problem,
        max_new_tokens: int,
        batch_size: int,
    ):
        self.model, self.tokenizer, self.controller, self.bank = model, tokenizer, controller, bank
        self.problem, self.max_new_tokens, self.batch_size = problem, max_new_tokens, batch_size
        self.device = next(model.parameters()).device
        self.generated_tokens = 0  # by generation rollouts, over this object's life
        self.choice_logits: list[torch.Tensor] = []  # one-token choices: the last run's, per row
        # the chunk being run: its rows' replayed actions, forced decisions and common uniforms
        self._replay = self._overrides = self._uniforms = None

    def run(
        self,
        indices: list[int],
        mode: str,
        masked: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        keep_residuals: bool = True,
        row_actions: dict[int, dict[int, tuple[int, int]]] | None = None,
        overrides: dict[int, dict[tuple[int, int], tuple[int, int]]] | None = None,
        common_random: int | None = None,
    ):
        """Rewards per row and the decisions (records + residuals), rows in `indices` order.
        `row_actions` (mode `replay`): row -> {layer: (feature index, coef index)}; `overrides`
        (any mode): row -> {(position, layer): (feature index, coef index)} forced there;
        `common_random` (mode `sample`): a seed; each (document, position, layer) then gets its
        own fixed random numbers (`rl.crl.controller.common_uniforms`), whatever the batch."""
        from rl.crl.controller import common_uniforms

        rewards: list[float] = []
        records: list[Decision] = []
        residuals: list[torch.Tensor] = []
        completions: list[str] = []
        self.choice_logits = []
        size = self.batch_size
        if self.problem.kind == "one-token-choices":  # rows share prompts: batch_size distinct prompts per chunk
            size *= max(1, len(indices) // max(1, len(set(indices))))
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            self._replay = _rows_of_chunk(row_actions, start, len(chunk))
            self._overrides = _rows_of_chunk(overrides, start, len(chunk))
            self._uniforms = None if common_random is None else common_uniforms(common_random, list(chunk))
            if self.problem.kind == "generation":
                r, run, texts, tokens = self._generate(chunk, mode, masked, generator, keep_residuals)
                completions += texts
            else:
                r, run = self._choose(chunk, mode, masked, generator, keep_residuals)
                tokens = None
            for record in run.records:
                record.row += start
            records += run.records
            residuals += run.residuals
            rewards += r
            if tokens is not None:
                self.generated_tokens += tokens
        return rewards, records, residuals, completions

    def _controller_run(self, where, mode, masked, generator, keep_residuals, row_actions=None):
        from rl.crl.controller import ControllerRun

        # explicit row_actions (a choice's rescoring) already hold the overridden decisions
        overrides = self._overrides if row_actions is None else None
        if row_actions is None and mode == "replay":
            row_actions = self._replay
        return ControllerRun(
            self.controller,
            self.bank,
            where,
            mode=mode,
            masked=masked,
            generator=generator,
            row_actions=row_actions,
            keep_residuals=keep_residuals,
            overrides=overrides,
            uniforms=self._uniforms,
        )

    def _choose(self, chunk, mode, masked, generator, keep_residuals):
        problem = self.problem
        if problem.kind != "one-token-choices":
            return self._choose_full(chunk, mode, masked, generator, keep_residuals)
        # The controller acts only at the answer position, so every sample of a prompt shares
        # the prompt's prefix: run it once per distinct prompt (KV cache), then only the last
        # token per row, and unembed only the choice tokens.
        from harness.padding import batch
        from harness.steering import steer
        from rl.crl.controller import at_decision

        distinct = list(dict.fromkeys(chunk))
        slot = {doc: i for i, doc in enumerate(distinct)}
        ids, mask = batch(self.tokenizer, [problem.prompts[d] for d in distinct], self.device)
        if ids.shape[1] < 2:
            return self._choose_full(chunk, mode, masked, generator, keep_residuals)
        body = self.model.base_model
        with torch.no_grad():
            cache = body(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True).past_key_values
        select = torch.tensor([slot[d] for d in chunk], device=self.device)
        cache.reorder_cache(select)
        ids, mask = ids[select], mask[select]
        run = self._controller_run(at_decision(mask.sum(-1) - 1), mode, masked, generator, keep_residuals)
        with torch.no_grad(), steer(body, [run.intervention()]):
            hidden = body(
                input_ids=ids[:, -1:], attention_mask=mask, past_key_values=cache, use_cache=True
            ).last_hidden_state[:, -1]
        unembed = self.model.get_output_embeddings().weight.detach()
        # the model's head restricted to the choices (a final soft-cap is monotone: same argmax)
        logits = [hidden[row].float() @ unembed[problem.choice_tokens[doc]].float().T for row, doc in enumerate(chunk)]
        return self._one_token_rewards(chunk, logits), run

    def _one_token_rewards(self, chunk: list[int], logits: list[torch.Tensor]) -> list[float]:
        self.choice_logits += logits
        return [float(int(row.argmax()) == self.problem.gold[doc]) for row, doc in zip(logits, chunk)]

    def _choose_full(self, chunk, mode, masked, generator, keep_residuals):
        from harness.padding import batch
        from harness.sparse_logits import logits_at
        from harness.steering import steer
        from rl.crl.controller import at_decision

        problem = self.problem
        prompts = [problem.prompts[i] for i in chunk]
        ids, mask = batch(self.tokenizer, prompts, self.device)
        lengths = mask.sum(-1)
        run = self._controller_run(at_decision(lengths - 1), mode, masked, generator, keep_residuals)
        last = torch.full((len(chunk), 1), ids.shape[1] - 1, dtype=torch.long, device=self.device)
        with torch.no_grad(), steer(self.model, [run.intervention()]), logits_at(self.model, last):
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1].float()
        if problem.kind == "one-token-choices":
            return self._one_token_rewards(
                chunk, [logits[row, problem.choice_tokens[doc]] for row, doc in enumerate(chunk)]
            ), run
        # multi-token choices: score every choice with the same actions (replayed per row)
        actions: dict[int, dict[int, tuple[int, int]]] = {}
        for record in run.records:
            actions.setdefault(record.row, {})[record.layer] = (record.feature_index, record.coef_index)
        rewards = [
            float(self._best_choice(doc_index, actions[row]) == problem.gold[doc_index])
            for row, doc_index in enumerate(chunk)
        ]
        return rewards, run

    def _best_choice(self, doc_index: int, actions: dict[int, tuple[int, int]]) -> int:
        import torch.nn.functional as F

        from harness.padding import batch
        from harness.sparse_logits import logits_at
        from harness.steering import steer
        from rl.crl.controller import at_decision

        problem = self.problem
        doc = problem.docs[doc_index]
        prompt = problem.prompts[doc_index]
        choices = problem.task.doc_to_choice(doc)
        delimiter = problem.task.config.target_delimiter
        prompt_len = len(self.tokenizer(prompt)["input_ids"])
        texts = [prompt + delimiter + c for c in choices]
        ids, mask = batch(self.tokenizer, texts, self.device)
        lengths = mask.sum(-1)
        cont = lengths - prompt_len
        width = int(cont.max())
        pad = ids.shape[1] - lengths  # left padding
        index = torch.stack(
            [
                torch.clamp(pad[r] + prompt_len - 1 + torch.arange(width, device=self.device), max=ids.shape[1] - 2)
                for r in range(len(texts))
            ]
        )
        run = self._controller_run(
            at_decision(torch.full((len(texts),), prompt_len - 1)),
            "replay",
            None,
            None,
            False,
            row_actions={r: actions for r in range(len(texts))},
        )
        with torch.no_grad(), steer(self.model, [run.intervention()]), logits_at(self.model, index):
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logprobs = F.log_softmax(logits, -1)
        scores = []
        for r in range(len(texts)):
            n = int(cont[r])
            targets = ids[r, pad[r] + prompt_len : pad[r] + prompt_len + n]
            scores.append(float(logprobs[r, :n].gather(-1, targets[:, None]).sum()))
        return int(torch.tensor(scores).argmax())

    def _generate(self, chunk, mode, masked, generator, keep_residuals):
        from harness.padding import batch
        from harness.rewards import task_reward
        from harness.steering import steer
        from rl.crl.controller import from_last_prompt_token

        problem = self.problem
        ids, mask = batch(self.tokenizer, [problem.prompts[i] for i in chunk], self.device)
        run = self._controller_run(from_last_prompt_token, mode, masked, generator, keep_residuals)
        with torch.no_grad(), steer(self.model, [run.intervention()]):
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                do_sample=False,
            )
        new = out[:, ids.shape[1] :]
        until = [u for u in (problem.task.config.generation_kwargs or {}).get("until", []) if u]
        texts, alive_until, tokens = [], [], 0
        for row in range(len(chunk)):
            n = _stop_length(self.tokenizer, new[row].tolist(), until, self.tokenizer.eos_token_id)
            alive_until.append(n)
            tokens += n
            texts.append(self.tokenizer.decode(new[row, :n], skip_special_tokens=True))
        docs = [problem.docs[i] for i in chunk]
        fields = {k: [d[k] for d in docs] for k in docs[0]}
        if not hasattr(self, "_reward"):
            self._reward = task_reward(problem.task)
        rewards = self._reward([problem.prompts[i] for i in chunk], texts, **fields)
        # decisions after a row's stop produce tokens the reward never sees: drop them
        prompt_lengths = mask.sum(-1).tolist()
        kept_records, kept_residuals = [], []
        for i, record in enumerate(run.records):
            step = record.position - (prompt_lengths[record.row] - 1)
            if step < alive_until[record.row]:
                kept_records.append(record)
                if keep_residuals:
                    kept_residuals.append(run.residuals[i])
        run.records, run.residuals = kept_records, kept_residuals
        return rewards, run, texts, tokens


def _rows_of_chunk(per_row: dict[int, Any] | None, start: int, size: int) -> dict[int, Any] | None:
    """The entries of rows start .. start + size - 1, renumbered from 0 (None stays None)."""
    if per_row is None:
        return None
    return {row - start: value for row, value in per_row.items() if start <= row < start + size}


def _stop_length(tokenizer: Any, ids: list[int], until: list[str], eos: int | None) -> int:
    """Generated tokens up to and including the one that completes a stop string (or EOS)."""
    for n in range(1, len(ids) + 1):
        if eos is not None and ids[n - 1] == eos:
            return n
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        if any(stop in text for stop in until):
            return n
    return len(ids)
