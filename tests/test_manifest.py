"""Provenance: every manifest names the code, libraries and the processor it ran on."""

from __future__ import annotations

import sys


def test_manifest_names_the_processor_bf16_results_depend_on():
    import torch

    from harness.manifest import build_manifest, processor

    manifest = build_manifest(kind="test")
    found = manifest["processor"]
    assert manifest["kind"] == "test" and manifest["libraries"]["torch"] == torch.__version__
    assert found["cpu"]  # a name, from /proc/cpuinfo or the platform
    assert found["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if sys.platform == "linux":
        flags = open("/proc/cpuinfo").read()
        assert found["cpu_bf16"] == sorted(
            {
                f
                for line in flags.splitlines()
                if line.startswith("flags")
                for f in line.split(":", 1)[1].split()
                if "bf16" in f or f.startswith("amx")
            }
        )
    assert processor() == found


def test_auto_dtype_is_bf16_only_on_a_cpu_that_has_it_natively(monkeypatch):
    import torch

    from harness import models

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    zen4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    sapphire = "flags\t\t: avx2 avx512f amx_bf16 amx_tile\n"
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm sve\n"
    assert not models.cpu_has_native_bf16(avx2)
    assert models.cpu_has_native_bf16(zen4) and models.cpu_has_native_bf16(sapphire)
    assert models.cpu_has_native_bf16(graviton3)
    assert not models.cpu_has_native_bf16("")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda cpuinfo=None, native=native: native)
        assert models.resolve_dtype("auto", "cpu") == expected
        assert models.resolve_dtype("auto", "cuda") == "auto"  # the checkpoint's own dtype on a GPU
        assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16  # asked for, not second-guessed


def test_concurrent_processes_convert_the_embedded_model_once(tmp_path, monkeypatch):
    """Two workers (or `make bench` beside `lm_eval`) asking for the embedded model at once
    wait for one conversion instead of writing the same folder together."""
    import threading
    import time

    import harness.models as models

    target = tmp_path / "models" / "gemma-3-270m"
    calls = []

    def convert(name, where):
        calls.append(name)
        time.sleep(0.5)  # long enough for the other thread to arrive mid-conversion
        where.mkdir(parents=True)
        (where / "config.json").write_text("{}")
        (where / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(models, "embedded_model_dir", lambda name: target)
    monkeypatch.setattr(models, "_convert_embedded", convert)
    found = []
    threads = [threading.Thread(target=lambda: found.append(models.resolve_model("gemma-3-270m"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["gemma-3-270m"] and found == [str(target)] * 2


def test_a_run_writing_its_results_and_readme_headline_leaves_the_commit_clean(tmp_path):
    """`+dirty` marks uncommitted code, not what bench writes itself (results/, README's headline)."""
    import subprocess

    from harness.manifest import git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    for name in ("code.py", "README.md", "results/board.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (tmp_path / "README.md").write_text("headline\n")
    (tmp_path / "results/board.md").write_text("rows\n")
    assert not git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("b\n")
    assert git_commit(tmp_path).endswith("+dirty")
