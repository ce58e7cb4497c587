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
        assert found["cpu_bf16"] == sorted({f for line in flags.splitlines() if line.startswith("flags")
                                            for f in line.split(":", 1)[1].split() if "bf16" in f or f.startswith("amx")})
    assert processor() == found
