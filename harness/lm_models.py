"""crl-bench's lm-eval models: every method is evaluated as an lm-eval `LM`.

Following lm-eval's own `hf_steered.py`, each wrapper is an `HFLM` subclass that runs
`_model_call` / `_model_generate` inside the one steering mechanism. The shared base,
`LeanHFLM` (registered as `hf_lean`), also scores log-likelihoods from logits at the
continuation positions only; otherwise it is lm-eval's `hf` model unchanged.

Registered names (found by the plain `lm_eval` CLI, see `harness.lmeval_plugin`):
`hf_lean`, `vector_steered`, `rlvr_lora` here, and `crl_steered` with its method
(`rl.crl.lm`: it needs the controller).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm

from harness.artifacts import CONFIG, check_model, read_config, read_json, read_tensors, require_run_dir
from harness.models import contiguous_head, default_device, describe, resolve_dtype, resolve_model
from harness.sparse_logits import logits_at, logits_at_pairs
from harness.steering import Intervention, steer
from harness.vectors import HOW_TO_MAKE, SteeringVectors


class LeanHFLM(HFLM):
    """lm-eval's `hf` with continuation-only logits and an intervention hook.

    `pretrained` also accepts crl-bench's embedded model names (`gemma-3-270m`).
    Defaults differ from `hf` only where this project needs them: the device is CUDA when
    present, else CPU; `dtype=auto` is bf16 on a CPU with native bf16, fp32 on other CPUs.
    """

    def __init__(
        self,
        pretrained: str = "gemma-3-270m",
        device: str | None = None,
        dtype: str = "auto",
        shared_prefix: bool = True,
        generation_batch_size: int | None = None,
        **kwargs,
    ):
        device = device or default_device()
        # each distinct context runs once and its KV cache serves all of its continuations
        self.shared_prefix = shared_prefix
        # rows per `generate` call (default: batch_size; `harness.config.GENERATION_BATCH_SIZE`)
        self.generation_batch_size = int(generation_batch_size) if generation_batch_size else None
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise ValueError(f"generation_batch_size must be at least 1, got {generation_batch_size}")
        dtype = resolve_dtype(dtype, device)
        if isinstance(pretrained, str):
            pretrained = resolve_model(pretrained)
        super().__init__(pretrained=pretrained, device=device, dtype=dtype, **kwargs)
        if self.backend != "causal":
            raise ValueError(f"{type(self).__name__} supports decoder-only causal LMs; got a {self.backend} model")
        self.info = describe(self.model)
        contiguous_head(self.model)
        # the forward's name for the KV cache: `cache` from transformers 5.24, `past_key_values` before
        forward = inspect.signature(_unwrap(self.model).forward).parameters
        self.cache_argument = "cache" if "cache" in forward else "past_key_values"
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and self.world_size == 1 and accelerator.num_processes > 1:
            # `accelerate launch --cpu --num_processes N`: lm-eval's `hf` splits the requests across
            # processes only on GPUs, so on CPUs every process would score every request; split them
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        # What every forward and generation runs under; none for the plain base model. Code
        # that evaluates many settings on one loaded model (the vector sweep, bench) swaps it.
        self.active: list[Intervention] = []
        # While a log-likelihood batch runs: per row, the position whose logits predict the
        # first continuation token (the context's last token: the answer position), and the
        # context string. None otherwise (generation).
        self.decision_positions: torch.Tensor | None = None
        self.batch_contexts: list[str] | None = None

    def interventions(self) -> list[Intervention]:
        """The interventions applied to every forward."""
        return self.active

    def _model_call(self, inps, attn_mask=None, labels=None):
        with steer(self.model, self.interventions()):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        with steer(self.model, self.interventions()):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def generate_until(self, requests, disable_tqdm: bool = False):
        if self.generation_batch_size is None or self.batch_size == "auto":
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        usual, self.batch_size_per_gpu = self.batch_size_per_gpu, self.generation_batch_size
        try:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self.batch_size_per_gpu = usual

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """`HFLM._loglikelihood_tokens`'s results, with the unembedding and log-softmax only at
        continuation positions, and (`shared_prefix`, the default) each distinct context run once."""
        if self.shared_prefix and self.batch_size != "auto":
            return self._loglikelihood_shared(requests, disable_tqdm)
        return self._loglikelihood_one_pass(requests, disable_tqdm, override_bs)

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    def _loglikelihood_shared(self, requests, disable_tqdm: bool = False):
        """Each distinct context runs once (a batch of contexts, left-padded, with explicit
        positions); its KV cache then serves every continuation of it in one batched pass over
        the continuation tokens. Logits only where continuation tokens are predicted. Steering
        acts once per position: on the context in its pass, on continuation tokens in theirs."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        groups: dict[tuple[int, ...], list[int]] = {}
        fed: list[list[int]] = []  # per request: the continuation tokens fed after the context
        for i, (_, ctx, cont) in enumerate(requests):
            inp = (ctx + cont)[-(self.max_length + 1) :][:-1]
            n_fed = min(len(cont), len(inp)) - 1  # the first scored token's logits come from the context's pass
            groups.setdefault(tuple(inp[: len(inp) - n_fed]), []).append(i)
            fed.append(inp[len(inp) - n_fed :] if n_fed else [])
        # longest first, as lm-eval orders them: a batch that does not fit fails at once
        order = sorted(groups, key=lambda p: -(len(p) + max(len(fed[i]) for i in groups[p])))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        batch_size = int(self.batch_size)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for start in range(0, len(order), batch_size):
            prefixes = order[start : start + batch_size]
            lengths = torch.tensor([len(p) for p in prefixes])
            width = int(lengths.max())
            ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(prefixes), width), dtype=torch.long)
            for row, prefix in enumerate(prefixes):
                ids[row, width - len(prefix) :] = torch.tensor(prefix)
                mask[row, width - len(prefix) :] = 1
            first, cache = self._prefix_pass(ids, mask, lengths, [requests[groups[p][0]][0] for p in prefixes])
            rows = [(g, i) for g, p in enumerate(prefixes) for i in groups[p] if fed[i]]
            scored = {i: requests[i][2][-(len(fed[i]) + 1) :] for p in prefixes for i in groups[p]}
            picked, greedy = (
                self._continuation_pass(rows, fed, scored, cache, mask, lengths, requests, pad_id)
                if rows
                else (None, None)
            )
            first_greedy = first.argmax(-1)
            offsets, at = {}, 0  # where each row's fed tokens sit among the pass's scored positions
            for _, i in rows:
                offsets[i], at = at, at + len(fed[i])
            for g, prefix in enumerate(prefixes):
                for i in groups[prefix]:
                    request_str = requests[i][0]
                    target = scored[i][0]  # the first scored token: predicted at the context's last position
                    token_logprobs, token_greedy = first[g, target : target + 1], first_greedy[g : g + 1] == target
                    if fed[i]:
                        where = slice(offsets[i], offsets[i] + len(fed[i]))
                        token_logprobs = torch.cat([token_logprobs, picked[where]])
                        token_greedy = torch.cat([token_greedy, greedy[where]])
                    answer = (float(token_logprobs.sum()), bool(token_greedy.all()))
                    results[i] = answer
                    if request_str is not None:
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                    pbar.update(1)
        pbar.close()
        return results

    def _prefix_pass(self, ids, mask, lengths, request_strs):
        """Run a batch of left-padded contexts; returns the log-probabilities their last tokens
        give the next token ([G, V]) and the KV cache."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        last = torch.full((len(ids), 1), ids.shape[1] - 1, dtype=torch.long)
        self.decision_positions = lengths - 1  # the answer position: the context's last token
        self.batch_contexts = [req[0] if isinstance(req, tuple) else None for req in request_strs]
        with (
            torch.no_grad(),
            self._autocast(),
            steer(self.model, self.interventions(), prompt_lengths=lengths),
            logits_at(_unwrap(self.model), last),
        ):
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
            )
        self.decision_positions = self.batch_contexts = None
        return F.log_softmax(out.logits[:, 0], dim=-1, dtype=self.softmax_dtype), out.past_key_values

    def _continuation_pass(self, rows, fed, scored, cache, mask, lengths, requests, pad_id):
        """The continuation tokens of `rows` ((context row, request) pairs) after their cached
        contexts, right-padded; the head runs at their real positions only (not the padding).
        Returns, for each fed token in row order, the log-probability of the token after it
        (`scored[i][1:]`) and whether it was the most likely one ([F] each)."""
        contexts = torch.tensor([g for g, _ in rows])
        cache.batch_select_indices(contexts.to(self.device))
        width = max(len(fed[i]) for _, i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, i) in enumerate(rows):
            ids[r, : len(fed[i])] = torch.tensor(fed[i])
            cont_mask[r, : len(fed[i])] = 1
        pick_rows, pick_positions = cont_mask.nonzero(as_tuple=True)  # row by row, in position order
        context_lengths = lengths[contexts]
        positions = context_lengths[:, None] + torch.arange(width)[None]
        self.decision_positions = context_lengths - 1  # already acted on, in the context's pass
        self.batch_contexts = [requests[i][0][0] if isinstance(requests[i][0], tuple) else None for _, i in rows]
        with (
            torch.no_grad(),
            self._autocast(),
            steer(self.model, self.interventions(), prompt_lengths=context_lengths),
            logits_at_pairs(_unwrap(self.model), pick_rows, pick_positions),
        ):
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=torch.cat([mask[contexts], cont_mask], dim=1).to(self.device),
                position_ids=positions.to(self.device),
                **{self.cache_argument: cache},
                use_cache=True,
            )
        self.decision_positions = self.batch_contexts = None
        targets = torch.tensor([token for _, i in rows for token in scored[i][1:]], device=self.device)
        return self._score(out.logits[0], targets)

    def _score(self, logits, targets, chunk: int = 256):
        """Each position's log-probability of its target and whether the target is the argmax,
        with lm-eval's `hf` log-softmax (its dtype, `softmax_dtype`) over `chunk` positions at a
        time: a [positions, 262k] log-softmax of a whole batch is never held at once."""
        picked, greedy = [], []
        for start in range(0, len(targets), chunk):
            logprobs = F.log_softmax(logits[start : start + chunk], dim=-1, dtype=self.softmax_dtype)
            target = targets[start : start + chunk]
            picked.append(logprobs.gather(1, target[:, None]).squeeze(1))
            greedy.append(logprobs.argmax(-1) == target)
        return torch.cat(picked), torch.cat(greedy)

    def _loglikelihood_one_pass(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """Same requests, grouping, caching and results as `HFLM._loglikelihood_tokens`: each
        request's context and continuation in one pass (`shared_prefix=False`, or batch size auto)."""

        def _collate(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        def _lookup_one_token_cont(req):
            return req[-2] + req[-1][:-1]

        re_ord = Collator(
            requests,
            sort_fn=_collate,
            group_by="contexts" if self.logits_cache else None,
            group_fn=_lookup_one_token_cont,
        )
        batch_size = self.batch_size if self.batch_size != "auto" else override_bs or 0
        batch_fn = self._batch_scheduler if self.batch_size == "auto" and len(re_ord) > 0 and not override_bs else None
        if batch_fn is not None:
            self.batch_sizes = {}
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results = []
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for chunk in re_ord.get_batched(n=batch_size, batch_fn=batch_fn):
            inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for _, ctx, cont in chunk]
            conts = [cont for _, _, cont in chunk]
            width = max(len(inp) for inp in inputs)
            n_scored = max(len(cont) for cont in conts)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            index = torch.zeros((len(chunk), n_scored), dtype=torch.long)
            prompt_lengths = torch.zeros(len(chunk), dtype=torch.long)
            for row, (inp, cont) in enumerate(zip(inputs, conts)):
                ids[row, : len(inp)] = torch.tensor(inp)
                mask[row, : len(inp)] = 1
                # positions whose logits predict the continuation tokens (right padding)
                scored = torch.arange(len(inp) - len(cont), len(inp))
                index[row] = torch.cat([scored, scored[-1:].expand(n_scored - len(cont))])
                prompt_lengths[row] = max(
                    1, len(inp) - len(cont) + 1
                )  # the context: continuation tokens count as generated
            self.decision_positions = index[:, 0].clone()
            self.batch_contexts = [req[0] if isinstance(req, tuple) else None for req, _, _ in chunk]
            with (
                torch.no_grad(),
                self._autocast(),
                steer(self.model, self.interventions(), prompt_lengths=prompt_lengths),
                logits_at(_unwrap(self.model), index),
            ):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            self.decision_positions = self.batch_contexts = None
            logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)  # [B, K, V]
            for (request_str, ctx_tokens, _), row_logprobs, cont in zip(chunk, logprobs, conts):
                row_logprobs = row_logprobs[: len(cont)].unsqueeze(0)  # [1, cont, V]
                greedy_tokens = row_logprobs.argmax(dim=-1)
                for request_str, cont_toks, cached in re_ord.get_cache(
                    req_str=request_str, cxt_toks=ctx_tokens, cont_toks=cont, logits=row_logprobs
                ):
                    cont_tensor = torch.tensor(cont_toks, dtype=torch.long, device=cached.device).unsqueeze(0)
                    max_equal = (greedy_tokens[:, -cont_tensor.shape[1] :] == cont_tensor).all()
                    picked = torch.gather(cached, 2, cont_tensor.unsqueeze(-1)).squeeze(-1)
                    answer = (float(picked.sum()), bool(max_equal))
                    results.append(answer)
                    if request_str is not None:
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                    pbar.update(1)
        pbar.close()
        return re_ord.get_original(results)


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class VectorSteeredLM(LeanHFLM):
    """A base model steered by fixed directions: `steer=<run dir or .safetensors>`.

    `coef=` and `positions=` (all | last | generated) override the artifact's values.
    """

    def __init__(
        self,
        pretrained: str = "gemma-3-270m",
        steer: str | None = None,
        coef: float | None = None,
        positions: str | None = None,
        allow_other_model: bool = False,
        **kwargs,
    ):
        if steer is None:
            raise ValueError(f"vector_steered needs steer=<path>; {HOW_TO_MAKE}")
        # Load the artifact before the model so a bad path fails in a second, not after a load.
        vectors = SteeringVectors.load(steer)
        if not allow_other_model:
            check_model(vectors.model, pretrained, f"steering artifact {steer}", "allow_other_model=True")
        if coef is not None:
            vectors.coefficient = float(coef)
        if positions is not None:
            vectors = SteeringVectors(**{**vectors.__dict__, "positions": positions})
        super().__init__(pretrained=pretrained, **kwargs)
        for layer, vector in vectors.vectors.items():
            self.info.check_layer(layer)
            self.info.check_vector(vector, what=f"steering vector for layer {layer} in {steer}")
        self.steering = vectors
        self.active = [vectors.intervention()]


class RLVRLoraLM(LeanHFLM):
    """The base model with an RLVR-trained LoRA adapter: `adapter=<run dir>` (PEFT files)."""

    def __init__(
        self, pretrained: str = "gemma-3-270m", adapter: str | None = None, allow_other_model: bool = False, **kwargs
    ):
        how = "train one with `crl-bench train rlvr --model M --task T`, or pass a PEFT adapter directory"
        if adapter is None:
            raise ValueError(f"rlvr_lora needs adapter=<run dir>; {how}")
        run_dir = require_run_dir(adapter, "LoRA adapter", ("adapter_config.json",), how)
        if kwargs.get("peft"):
            raise ValueError("rlvr_lora takes adapter=<run dir>; drop peft=")
        rebuild = "retrain it with `crl-bench train rlvr` (or `crl-bench bench --force`)"
        read_json(run_dir / "adapter_config.json", rebuild)
        for weights in run_dir.glob("adapter_model*.safetensors"):
            read_tensors(weights, rebuild)
        if (run_dir / CONFIG).exists() and not allow_other_model:
            made_for = read_config(run_dir, rebuild).get("model")
            check_model(made_for, pretrained, f"LoRA adapter {run_dir}", "allow_other_model=True")
        super().__init__(pretrained=pretrained, peft=str(run_dir), **kwargs)
