"""Checking Triton kernels without a GPU: the interpreter in a process of its own, and the real compiler.

Triton's interpreter (``TRITON_INTERPRET=1``) runs kernels on CPU tensors, but only for kernels defined after
the variable was set, so those checks live in ``interpreted_*.py`` files that ``run_interpreted`` runs in a
fresh pytest process. What the interpreter cannot show (types, layouts, registers) comes from compiling the
kernels for sm_90a, the H100/H200's architecture, with Triton's compiler and its bundled ``ptxas``.
"""
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_interpreted(path: str, least: int) -> str:
    """Run the pytest file ``path`` (relative to the repository) under the interpreter; assert that it
    passed at least ``least`` tests and skipped none; return its summary line.

    Only the conftests of ``path``'s own folder load: the suite's root one imports Beam and the object store
    for other tests (over a second of the process's start), and what it sets up for every process, the
    offline environment variables, this process already has and passes on."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"--confcutdir={os.path.dirname(path) or '.'}", path],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= least and "skipped" not in summary, summary
    return summary


def compile_for_hopper(kernel, signature: dict[str, str], constants: dict, warps: int):
    """``kernel`` compiled for sm_90a with the given argument types (``*fp32``, ``i32``...) and constexprs."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    names = [name for name in kernel.arg_names if name not in constants]
    assert sorted(names) == sorted(signature), (kernel.fn.__name__, names)
    source = ASTSource(fn=kernel, signature={**{n: signature[n] for n in names}, **dict.fromkeys(constants, "constexpr")},
                       constexprs=constants)
    compiled = compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    assert ".target sm_90" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 1000
    return compiled


def ptxas_resources(ptx: str) -> tuple[int, int] | None:
    """(registers per thread, spill-store bytes) that Triton's bundled ptxas reports for a PTX module;
    None where the bundle has no ptxas."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        return None
    target = re.search(r"\.target (sm_\w+)", ptx).group(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
        handle.write(ptx)
    try:
        result = subprocess.run([ptxas, f"-arch={target}", "-v", handle.name, "-o", os.devnull],
                                capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(handle.name)
    assert result.returncode == 0, result.stderr
    info = result.stderr + result.stdout
    return (int(re.search(r"Used (\d+) registers", info).group(1)),
            int(re.search(r"(\d+) bytes spill stores", info).group(1)))
