"""Loaders for the local-data task variants (lm-eval calls them through `custom_dataset`).

Each reads JSON Lines from `$CRL_BENCH_DATA/<dataset>/<split>.jsonl` (the layout of
../shared/data, see its README) and returns a `datasets.DatasetDict` with the same split
names and fields as the Hugging Face dataset lm-eval's built-in task downloads.
"""

import json
import os
from pathlib import Path

import datasets

DATA_ENV = "CRL_BENCH_DATA"


def _read(name, splits, transform=None):
    root = os.environ.get(DATA_ENV)
    if not root:
        raise FileNotFoundError(
            f"{DATA_ENV} is not set; point it at the folder holding {name}/ (e.g. ../shared/data), "
            f"or unset it and use lm-eval's built-in {name} task from the hub"
        )
    out = {}
    for split, filename in splits.items():
        path = Path(root).expanduser() / name / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; {DATA_ENV}={root} must hold {name}/{filename} "
                f"(the layout described in ../shared/data/README.md)"
            )
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}, line {number}: not a JSON record ({err}); the file is truncated or "
                        f"corrupt: restore it from the dataset's source"
                    ) from None
        out[split] = datasets.Dataset.from_list([transform(r) for r in rows] if transform else rows)
    return datasets.DatasetDict(out)


def gsm8k(**kwargs):
    return _read("gsm8k", {"train": "train.jsonl", "test": "test.jsonl"})


def arc_easy(**kwargs):
    return _read("arc_easy", {s: f"{s}.jsonl" for s in ("train", "validation", "test")})


def arc_challenge(**kwargs):
    return _read("arc_challenge", {s: f"{s}.jsonl" for s in ("train", "validation", "test")})


def boolq(**kwargs):
    # lm-eval's boolq (super_glue) scores `label` (0 = no, 1 = yes); the local copy keeps
    # BoolQ's original boolean `answer`.
    return _read("boolq", {"validation": "validation.jsonl"}, lambda r: {**r, "label": int(r["answer"])})


def sst2(**kwargs):
    # GLUE's SST-2 (what lm-eval's sst2 downloads): train = phrases, validation = GLUE dev.
    return _read("sst2", {"train": "glue_train.jsonl", "validation": "glue_validation.jsonl"})
