"""Text corpora for training and evaluating SAEs.

`--corpus` accepts:

- `builtin` (the default): text that ships with every install, so a fresh offline machine
  can train an SAE right away. It is the docstrings of the Python standard library's own
  modules (English technical prose, read with `ast` from the installed stdlib sources,
  nothing imported) plus the training-split prompts of the project's generated tasks
  (sentiment reviews and arithmetic). The manifest records the Python version and a hash.
- a local `.txt` file (split on blank lines), a `.jsonl` / `.jsonl.gz` file (the `text`
  field of each row, or the first string field), or a folder of such files;
- a Hugging Face dataset id (`org/name`, optionally `org/name:split`), streamed online.

Every corpus is a list of `Document`s. Documents are cut into chunks of at most
`chunk_chars` characters; a stable hash of the document id sends about 10% of documents
(at least one) to a held-out split that quality metrics and feature cards use and
training never sees.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import random
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "heldout"]
BUILTIN = "builtin"
HELDOUT_PERCENT = 10
TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".json")


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass
class Corpus:
    """Documents plus a description for the manifest."""

    spec: str
    kind: str
    documents: list[Document]

    def split(self, split: Split) -> list[Document]:
        heldout = [d for d in self.documents if _is_heldout(d.id)]
        if not heldout and len(self.documents) > 1:
            heldout = [self.documents[-1]]
        if split == "heldout":
            return heldout
        keep = {d.id for d in heldout}
        return [d for d in self.documents if d.id not in keep]

    def chunks(self, split: Split, chunk_chars: int = 2000, max_chars: int | None = None, seed: int = 0) -> list[str]:
        """Chunks of the split, shuffled with `seed`, stopping once `max_chars` are reached.

        Shuffling chunks (not documents) mixes many sources into a short training run.
        """
        pieces = [c for d in self.split(split) for c in _cut(d.text, chunk_chars)]
        if not pieces:
            raise ValueError(
                f"corpus {self.spec!r} has no {split} text; pass a corpus with more than one "
                f"document or a longer file (--corpus)"
            )
        random.Random(seed).shuffle(pieces)
        if max_chars is None:
            return pieces
        out, total = [], 0
        for piece in pieces:
            if total >= max_chars:
                break
            out.append(piece)
            total += len(piece)
        return out

    def describe(self) -> dict:
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(doc.id.encode())
            digest.update(doc.text.encode())
        info = {
            "spec": self.spec,
            "kind": self.kind,
            "documents": len(self.documents),
            "heldout_documents": len(self.split("heldout")),
            "characters": sum(len(d.text) for d in self.documents),
            "sha256": digest.hexdigest(),
        }
        if self.kind == BUILTIN:
            info["python"] = sys.version.split()[0]
            info["contents"] = "Python standard-library module docstrings + generated task training prompts"
        return info


def _is_heldout(doc_id: str) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def _cut(text: str, chunk_chars: int) -> Iterator[str]:
    """Cut at paragraph or line breaks near `chunk_chars` so chunks start at a boundary."""
    text = text.strip()
    start = 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):
            cut = max(text.rfind("\n\n", start, end), text.rfind("\n", start, end))
            if cut > start + chunk_chars // 2:
                end = cut
        piece = text[start:end].strip()
        if piece:
            yield piece
        start = end


def load_corpus(spec: str = BUILTIN) -> Corpus:
    if spec in (BUILTIN, "default"):
        return Corpus(BUILTIN, BUILTIN, builtin_documents())
    path = Path(spec).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.name.endswith(TEXT_SUFFIXES)) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"corpus folder {path} holds no {', '.join(TEXT_SUFFIXES)} files")
        documents = [doc for f in files for doc in _read_file(f)]
        if not documents:
            raise ValueError(f"corpus {path} holds no text")
        return Corpus(str(path.resolve()), "local", documents)
    if spec.startswith((".", "/", "~")) or spec.endswith(TEXT_SUFFIXES):
        raise ValueError(
            f"corpus file {spec!r} does not exist; pass an existing .txt/.jsonl/.jsonl.gz file "
            f"or folder, a Hugging Face dataset id, or 'builtin'"
        )
    return Corpus(spec, "huggingface", _hub_documents(spec))


def _read_file(path: Path) -> list[Document]:
    name = path.name
    if name.endswith(".txt"):
        paragraphs = [p for p in path.read_text(encoding="utf-8", errors="replace").split("\n\n") if p.strip()]
        # A plain text file is one long document; group paragraphs into documents of
        # ~20k characters so it can still be split into training and held-out text.
        docs, buf, size = [], [], 0
        for p in paragraphs:
            buf.append(p)
            size += len(p)
            if size >= 20_000:
                docs.append(Document(f"{name}#{len(docs)}", "\n\n".join(buf)))
                buf, size = [], 0
        if buf:
            docs.append(Document(f"{name}#{len(docs)}", "\n\n".join(buf)))
        return docs
    opener = gzip.open if name.endswith(".gz") else open
    docs = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{i + 1} is not valid JSON ({err}); corpus .jsonl files "
                    f"need one JSON object per line with a 'text' field"
                ) from err
            text = row.get("text") if isinstance(row, dict) else row
            if not isinstance(text, str):
                text = (
                    next((v for v in row.values() if isinstance(v, str) and len(v) > 20), None)
                    if isinstance(row, dict)
                    else None
                )
            if text is None:
                raise ValueError(f"{path}:{i + 1} has no 'text' field (or any string field)")
            doc_id = str(row.get("id", i)) if isinstance(row, dict) else str(i)
            docs.append(Document(f"{name}#{doc_id}", text))
    return docs


def _hub_documents(spec: str, max_documents: int = 50_000) -> list[Document]:
    dataset_id, _, split = spec.partition(":")
    try:
        from datasets import load_dataset

        stream = load_dataset(dataset_id, split=split or "train", streaming=True)
        docs = []
        for i, row in enumerate(stream):
            if i >= max_documents:
                break
            text = row.get("text") or next((v for v in row.values() if isinstance(v, str)), "")
            docs.append(Document(f"{dataset_id}#{i}", text))
    except Exception as err:  # network, unknown id, gated dataset: all mean "use another corpus"
        raise ValueError(
            f"could not stream the Hugging Face dataset {dataset_id!r} ({type(err).__name__}: {err}); "
            f"offline, pass a local .txt/.jsonl/.jsonl.gz file or folder, or --corpus builtin"
        ) from err
    return docs


def builtin_documents() -> list[Document]:
    """Stdlib docstrings (one document per module) + generated task prompts (one per task)."""
    return _stdlib_documents() + _generated_task_documents()


def _stdlib_documents() -> list[Document]:
    """The stdlib's docstrings, parsed once per Python install (about 18 s on 2 cores) and kept
    under the cache: every SAE assessment on the builtin corpus reads them."""
    from harness.manifest import write_json
    from harness.paths import cache_root

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha256(f"{sys.version}|{stdlib}".encode()).hexdigest()[:16]
    cached = cache_root() / "corpus" / f"stdlib-docstrings-{key}.json"
    if cached.exists():
        try:
            return [Document(name, text) for name, text in json.loads(cached.read_text())]
        except (ValueError, TypeError):
            pass  # a damaged cache file: parse again and replace it
    docs = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"} for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        strings = [
            ast.get_docstring(node, clean=True)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        text = "\n\n".join(s for s in strings if s and len(s) > 40)
        if text:
            docs.append(Document(f"stdlib:{rel.as_posix()}", text))
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_json(cached, [[doc.id, doc.text] for doc in docs])
    return docs


def _generated_task_documents() -> list[Document]:
    from harness.tasks import generated_examples

    docs = []
    for task, prompts in generated_examples(split="train").items():
        # Several documents per task, so both splits see every task's format.
        for i in range(0, len(prompts), 100):
            docs.append(Document(f"task:{task}#{i // 100}", "\n\n".join(prompts[i : i + 100])))
    return docs
