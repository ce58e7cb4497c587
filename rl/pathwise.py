"""`--algorithm pathwise` (generation setting): CRL trained with a first-order critic.

PPO and GRPO over the controller's sampled actions learn only from rollouts whose
interventions changed the outcome, and with ~30 decisions per completion and a dictionary of
features, random interventions almost never fix an answer (results/README.md: 24 fixed in
1,440 rollouts). This algorithm explores in token space instead, as RLVR does, and scores
every action of the controller at every decision at once:

1. rollouts: the controller acts greedily (its most probable action; the untrained one steers
   nothing) while the tokens are sampled at `--temperature` (RLVR's sampling);
2. advantages: each completion's reward normalised in its prompt's group (GRPO's);
3. one teacher-forced forward of the steered model over the sampled completions, and one
   backward of L = sum over completions of A x log p_T(its tokens that are not the steered
   model's own argmax there) to the controlled layer's
   residual, g_s = dL/dh_s at each decision s. No gradient reaches the LLM's or the SAE's
   weights (the backward stops at the controlled layer and the weights take none);
4. critic: adding feature f with coefficient c at s changes L by c x scale_f x (d_f . g_s) to
   first order, the value Q_s(f, c) of every action (0 for the no-op);
5. update: `ppo_epochs` steps of the all-action policy gradient, maximising
   sum_f,c pi(f, c | h_s) Q_s(f, c), plus the entropy bonus of the choice among features; for
   the gated policy stage by stage: the choice among features maximises its own expected Q
   (what to add, were it to intervene) and the gate p(intervene) x that value, the value of the
   choice as it stood before the step (a choice fitted to the step's own Q finds a positive
   value everywhere, and the gate learnt from that opened at 96% of decisions in 3 steps). Q
   keeps its units (nats of advantage-weighted log-likelihood per unit coefficient): a step
   whose completions carry little signal moves the controller little.

So the controller learns which feature to add where from every decision of every sampled
completion, not from the few rollouts that an intervention happened to fix. The reward is
still only the task's verifiable reward; the LLM and the SAE stay frozen.
"""

from __future__ import annotations

from typing import Any

import torch


def first_order_values(model: Any, rollouts: Any, rewards: list[float], group_size: int,
                       advantage: list[float] | None = None) -> tuple[list[dict], list[torch.Tensor], torch.Tensor]:
    """After `rollouts.run(rows, "greedy")` with `rollouts.temperature` > 0 (or with `flips`):
    the decisions (records, residuals) of the completions with a non-zero advantage, and Q
    Float[n, d_sae] per unit coefficient (see the module docstring). The advantage is the
    reward normalised in its group of `group_size` (GRPO's), or `advantage` per row when given
    (the flipped rollouts': the reward minus the greedy completion's). Flipped rollouts are
    scored at temperature 1, the distribution their flipped token was drawn from."""
    from harness.models import find_decoder_layers
    from harness.sparse_logits import logits_at
    from harness.steering import steer
    from rl.controller import ControllerRun
    from rl.ppo import group_normalised

    advantage = group_normalised(rewards, group_size) if advantage is None else torch.tensor(advantage, dtype=torch.float32)
    temperature = rollouts.temperature or 1.0
    bank, layer = rollouts.bank, rollouts.bank.layers[0]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _, layers = find_decoder_layers(base)
    records: list[dict] = []
    residuals: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    first = 0
    for ids, mask, lengths in rollouts.sequences:
        rows = list(range(first, first + len(ids)))
        first += len(ids)
        keep = [i for i, row in enumerate(rows) if advantage[row] != 0]
        if not keep:
            continue
        ids, mask = ids[keep], mask[keep]
        lengths = [lengths[i] for i in keep]
        prompt_width = ids.shape[1] - max(lengths)
        width = max(lengths)
        # logits at the positions that predict each completion token (clamped past a row's end)
        index = (prompt_width - 1 + torch.arange(width, device=ids.device))[None, :].expand(len(ids), -1)
        # the decisions of generation, from the prompt's last token on (the session's own prompt
        # lengths would count the completions too: this call is teacher-forced)
        prompt_lengths = mask[:, :prompt_width].sum(-1)
        run = ControllerRun(rollouts.controller, bank, lambda ctx: ctx.positions >= prompt_lengths[:, None] - 1,
                            mode="greedy")
        captured: dict[str, torch.Tensor] = {}

        def capture(module, args, output):  # the steered residual as a leaf: g_s is its gradient
            hidden = output[0] if isinstance(output, tuple) else output
            leaf = hidden.detach().requires_grad_(True)
            captured["h"] = leaf
            return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

        with steer(model, [run.intervention()]):
            handle = layers[layer].register_forward_hook(capture)  # after steer's hook: sees the steered residual
            try:
                with torch.enable_grad(), logits_at(model, index):
                    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            finally:
                handle.remove()
        targets = ids[:, prompt_width:]
        logp = (logits / temperature).log_softmax(-1).gather(-1, targets[..., None])[..., 0]
        # only the tokens the model would not have decoded greedily: the rest would teach the
        # controller to sharpen the model towards its own argmax (which raises the likelihood of
        # sampled completions that are right, and changes nothing under greedy evaluation)
        alive = mask[:, prompt_width:].to(logp.dtype) * (targets != logits.argmax(-1)).to(logp.dtype)
        weights = advantage[[rows[i] for i in keep]].to(logp.device)
        objective = (weights[:, None] * logp * alive).sum()
        (grad,) = torch.autograd.grad(objective, captured["h"])
        # left padding of the prompts (the zeros after a completion's end are not padding)
        pad = (prompt_width - prompt_lengths).tolist()
        prompt_lengths = prompt_lengths.tolist()
        for record, h in zip(run.records, run.residuals):
            step = record["position"] - (prompt_lengths[record["row"]] - 1)
            if not 0 <= step < lengths[record["row"]]:
                continue
            g = grad[record["row"], pad[record["row"]] + record["position"]].float()
            records.append({**record, "row": rows[keep[record["row"]]]})
            residuals.append(h)
            values.append(g)
    if not values:
        return [], [], torch.zeros(0, bank.d_sae)
    g = torch.stack(values)
    q = (g @ bank.directions[layer].float().T.to(g.device)) * bank.scales[layer].float().to(g.device)
    return records, residuals, q.cpu()


def pathwise_update(controller: Any, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                    config: Any) -> dict[str, float]:
    """`ppo_epochs` steps of the all-action policy gradient against the first-order values
    `batch["q"]` Float[n, d_sae] (per unit coefficient), with the entropy bonus of the choice
    among features given that the controller intervenes."""
    from rl.controller import COEFS
    from rl.ppo import controller_step

    q = batch["q"]
    if len(q) == 0:
        return {"loss": 0.0, "entropy": None}  # no completion group had any signal: nothing to learn
    coefs = torch.tensor(COEFS, device=q.device)

    def choice_value(feature_logits, coef_logits):  # the choice's expected Q, with the expected coefficient
        return (feature_logits[:, :-1].softmax(-1) * q).sum(-1) * (coef_logits.softmax(-1) @ coefs)

    gated = controller.policy == "gated"
    if gated:  # the value of intervening, judged by the choice as it was before this step's data
        with torch.no_grad():
            fresh = choice_value(*controller(batch["h"], batch["layer_index"])[:2])
    target = None
    if config.choice_temperature > 0:
        # the choice fitted to the Boltzmann distribution of its values, exp(Q(f, c) / tau), at
        # every decision (soft policy improvement): the expected-value gradient vanishes once the
        # softmax saturates, so a few early decisions can fix one feature everywhere (the
        # entropy fell to 0.01 in 6 steps, results/README.md); this target stays state-dependent
        # and is near uniform where the values are small. tau: `choice_temperature` x the step's
        # mean spread of the values over actions
        joint = q[:, :, None] * coefs[None, None, :]  # [n, d_sae, C]
        tau = config.choice_temperature * joint.flatten(1).std(-1).mean().clamp_min(1e-12)
        target = (joint.flatten(1) / tau).softmax(-1).view_as(joint)
    stats = {}
    for _ in range(config.ppo_epochs):
        feature_logits, coef_logits, _ = controller(batch["h"], batch["layer_index"])
        log_probs = feature_logits.log_softmax(-1)  # gated: already log-probabilities, unchanged
        given = torch.distributions.Categorical(logits=feature_logits[:, :-1])  # the choice, if it intervenes
        choice_gain = choice_value(feature_logits, coef_logits)  # the value of intervening
        intervene = 1 - log_probs[:, -1].exp()
        if target is not None:  # cross-entropy of the choice against the target's marginals (gate as below)
            fit = (target.sum(-1) * feature_logits[:, :-1].log_softmax(-1)).sum(-1) + \
                (target.sum(1) * coef_logits.log_softmax(-1)).sum(-1)
            choice_gain = choice_gain.detach() + fit - fit.detach()  # its value unchanged, its gradient the fit's
        if gated:
            # stage by stage: the choice among features learns what to add were it to intervene,
            # at full strength however shut the gate is (the joint gradient would scale it by
            # p(intervene), ~6% at the start); the gate learns whether intervening with the
            # choice pays, on data the choice has not yet been fitted to (the choice fitted to a
            # step's own Q always finds a positive value there, and the gate would open everywhere)
            gain = choice_gain + intervene * fresh
        else:
            gain = intervene * choice_gain
        entropy = given.entropy() + torch.distributions.Categorical(logits=coef_logits).entropy()
        loss = -gain.mean() - config.entropy_coef * entropy.mean()
        controller_step(controller, optimizer, loss)
        stats = {"loss": float(loss.detach()), "entropy": float(entropy.detach().mean()),
                 "gain": float(gain.detach().mean())}
    return stats
