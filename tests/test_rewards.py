"""Reward functions agree with lm-eval's own scoring of the same completions."""

import pytest
from lm_eval.api.instance import Instance

from harness.rewards import task_reward
from harness.tasks import load_task
from tests.conftest import needs_data


def _columns(docs):
    return {key: [doc[key] for doc in docs] for key in docs[0]}


def _lm_eval_generation_scores(task, docs, completions, filter_name):
    """lm-eval's own path: instances -> task.apply_filters() -> task.process_results()."""
    instances = []
    for i, (doc, completion) in enumerate(zip(docs, completions)):
        instance = Instance(
            request_type="generate_until", doc=doc, arguments=("", {}), idx=0, metadata=(task.config.task, i, 1)
        )
        instance.resps = [completion]
        instances.append(instance)
    task._instances = instances
    task.apply_filters()
    metric = task.config.metric_list[0]["metric"]
    return [float(task.process_results(inst.doc, [inst.filtered_resps[filter_name]])[metric]) for inst in instances]


def test_multiple_choice_reward_matches_lm_eval_acc():
    task = load_task("toy_sentiment")
    docs = list(task.test_docs())[:20]
    completions = [" positive" if i % 3 else "negative " for i in range(len(docs))]
    rewards = task_reward(task)(["p"] * len(docs), completions, **_columns(docs))
    for doc, completion, reward in zip(docs, completions, rewards):
        choices = task.doc_to_choice(doc)
        chosen = [c.strip() for c in choices].index(completion.strip())
        # lm-eval's acc: the argmax of the per-choice log-likelihoods is the gold index
        loglikelihoods = [(0.0 if j == chosen else -5.0, j == chosen) for j in range(len(choices))]
        assert reward == task.process_results(doc, loglikelihoods)["acc"]
    assert 0 < sum(rewards) < len(rewards)
    # an index is taken as the chosen choice; text that is no choice earns nothing
    assert task_reward(task)(["p"], [docs[0]["label"]], **_columns(docs[:1])) == [1.0]
    assert task_reward(task)(["p"], ["maybe"], **_columns(docs[:1])) == [0.0]


@pytest.mark.parametrize(
    ("name", "filter_name", "make"),
    [
        (
            "arith_gen",
            "strict-match",
            lambda doc, i: [f" 1 + 1 = 2. The answer is {doc['answer']}", " The answer is 1000", f" {doc['answer']}"][
                i % 3
            ],
        ),
        pytest.param(
            "gsm8k",
            "strict-match",
            lambda doc, i: [
                doc["answer"],
                " So #### 12345",
                " 4 + 4 = 8\n#### " + doc["answer"].split("#### ")[-1] + ".",
            ][i % 3],
            marks=needs_data,
        ),
        pytest.param(
            "gsm8k",
            "flexible-extract",
            lambda doc, i: ["the answer is " + doc["answer"].split("#### ")[-1], "no idea", "$1,000"][i % 3],
            marks=needs_data,
        ),
    ],
)
def test_generation_reward_matches_lm_eval_pipeline(name, filter_name, make):
    task = load_task(name)
    docs = list(task.test_docs())[:12]
    completions = [make(doc, i) for i, doc in enumerate(docs)]
    rewards = task_reward(task, filter_name=filter_name)(["p"] * len(docs), completions, **_columns(docs))
    assert rewards == _lm_eval_generation_scores(task, docs, completions, filter_name)
    assert 0 < sum(rewards) < len(rewards)


def test_reward_rejects_misaligned_fields_and_unknown_filter():
    task = load_task("arith_gen")
    with pytest.raises(ValueError, match="has 1 values for 2 completions"):
        task_reward(task)(["p", "p"], ["1", "2"], answer=["1"])
    with pytest.raises(ValueError, match="has filters"):
        task_reward(task, filter_name="nope")
