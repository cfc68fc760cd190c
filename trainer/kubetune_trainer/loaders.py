"""The environment variables that make a process load code: dropped before anything reads them.

Imports only collections.abc, so `python -m kubetune_trainer` can drop them before
ssl, hashlib (OpenSSL reads OPENSSL_CONF when it starts) or torch are imported.
"""

from __future__ import annotations

from collections.abc import Mapping

# Variables that make a process load code or configuration from a path, or change how torchrun starts the ranks. A
# spec can set none of them (workers.env is an allow-list); the launcher also drops them, so nothing a platform's
# mutating webhook or an image adds reaches the ranks.
LOADER_VARIABLES = frozenset(
    {
        "OPENSSL_CONF",
        "OPENSSL_MODULES",
        "OPENSSL_ENGINES",
        "SSL_CERT_FILE_PLUGIN",
        "CUDA_INJECTION64_PATH",
        "CUDA_INJECTION32_PATH",
        "NCCL_NET_PLUGIN",
        "NCCL_TUNER_PLUGIN",
        "NCCL_PROFILER_PLUGIN",
        "NCCL_TOPO_FILE",
        "NCCL_GRAPH_FILE",
        "GCONV_PATH",
        "HF_MODULES_CACHE",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONPLATLIBDIR",
        "PYTHONEXECUTABLE",
        "PYTHONINSPECT",
        "PYTHONBREAKPOINT",
        "BASH_ENV",
        "ENV",
    }
)
LOADER_PREFIXES = ("LD_", "PET_", "TORCHELASTIC_", "DYLD_", "MALLOC_")


def without_loaders(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment without the variables that load code (LOADER_VARIABLES, LD_*, PET_*, ...)."""
    return {k: v for k, v in environ.items() if k not in LOADER_VARIABLES and not k.startswith(LOADER_PREFIXES)}
