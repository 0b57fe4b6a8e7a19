"""What this machine can run: attention kernels, Liger kernels, tracking integrations.

A recipe may ask for something the installed software or the hardware cannot
give: flash-attention without its package or without a CUDA GPU, a kernels-hub
attention without the ``kernels`` package, Liger's Triton kernels on a CPU, a
``report_to`` integration that is not installed. transformers finds out after
the model has loaded (or, for a tracker, after the first step), inside the
worker; the recipe validator asks here first, so the refusal comes before a run
directory exists and says what to install or change.

Each check returns ``(problem, fix)`` or None; the validator adds the file and
the place. Packages are looked up with ``importlib.util.find_spec`` (nothing is
imported), and torch is imported only when a GPU must be asked about.
"""

from __future__ import annotations

import importlib.util
import re

#: attn_implementation values transformers implements itself (a kernels-hub id is the other kind).
BUILTIN_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
#: flash-attention implementation -> (the module transformers imports, the pip package that provides it).
FLASH_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn"),
                  "flash_attention_3": ("flash_attn_interface", "flash-attn-3")}
#: A Hugging Face kernels-hub attention: ``org/name``, optionally ``@revision`` and ``:function``
#: (the pattern transformers' ``hub_kernels.is_kernel`` matches).
HUB_KERNEL = re.compile(r"^[^/:@\s]+/[^/:@\s]+(?:@[^/:\s]+)?(?::[^/:\s]+)?$")
#: report_to integrations finetty points at the run directory -> (a module that provides it, pip package).
TRACKERS = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
            "wandb": (("wandb",), "wandb"),
            "mlflow": (("mlflow",), "mlflow"),
            "trackio": (("trackio",), "trackio")}


def installed(module: str) -> bool:
    """True when ``module`` can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def attention_problem(name: str, half_precision: bool = True) -> tuple[str, str] | None:
    """Why ``model_options.attn_implementation: name`` cannot run here, or None.

    ``half_precision``: the run computes in bfloat16 or float16 (``train.bf16`` /
    ``fp16``, or a half ``torch_dtype``); flash-attention kernels take nothing else.
    """
    if name in ("sdpa", "eager"):
        return None
    if name in FLASH_PACKAGES:
        module, package = FLASH_PACKAGES[name]
        cuda = has_cuda()
        missing = ([] if installed(module) else [f"the {package} package is not installed"]) + \
            ([] if cuda else ["this machine has no CUDA GPU"])
        if missing:
            return (f"{name} needs the {package} package and a CUDA GPU (its kernels run on NVIDIA GPUs only), "
                    f"and {' and '.join(missing)}",
                    "use sdpa or eager here" + (f", or pip install {package}" if cuda else ""))
    elif HUB_KERNEL.match(name):
        if not installed("kernels"):
            return (f"{name!r} is a kernels-hub attention, which transformers loads through the kernels package, "
                    "and it is not installed", "pip install kernels, or use sdpa or eager")
    else:
        return (f"{name!r} is not an attention implementation",
                f"use one of {', '.join(BUILTIN_ATTENTION)} or a kernels-hub id such as kernels-community/flash-attn2")
    if "flash" in name and not half_precision:
        return (f"{name} computes in bfloat16 or float16 only, and this recipe computes in float32",
                "add bf16: true under train: (fp16: true on a GPU without bfloat16), or set "
                "model_options.torch_dtype: bfloat16")
    return None


def liger_problem() -> tuple[str, str] | None:
    """Why ``train.use_liger_kernel: true`` cannot run here (its kernels are Triton kernels for CUDA), or None."""
    cuda = has_cuda()
    missing = ([] if installed("liger_kernel") else ["the liger-kernel package is not installed"]) + \
        ([] if cuda else ["this machine has no CUDA GPU"])
    if not missing:
        return None
    return (f"use_liger_kernel needs the liger-kernel package and a CUDA GPU (its kernels are written in Triton "
            f"for NVIDIA GPUs), and {' and '.join(missing)}",
            "leave use_liger_kernel off here" + (", or pip install liger-kernel" if cuda else
                                                 "; on a CUDA machine, pip install liger-kernel"))


def report_to_names(value) -> list[str]:
    """``train.report_to`` as a list of names (``none`` and empty: no integration)."""
    names = [value] if isinstance(value, str) else list(value or [])
    return [str(n).strip() for n in names if str(n).strip() and str(n).strip() != "none"]


def report_to_problems(value) -> list[tuple[str, str]]:
    """Why each integration of ``train.report_to`` cannot run here: unknown, or its package is missing."""
    if value is not None and not isinstance(value, (str, list)):
        return [(f"report_to must be a name or a list of names, not {type(value).__name__}",
                 f"for example report_to: tensorboard, or [{', '.join(TRACKERS)}]")]
    problems = []
    for name in report_to_names(value):
        if name not in TRACKERS:
            problems.append((f"report_to {name!r} is not an integration finetty sets up",
                             f"use none or any of {', '.join(TRACKERS)} (each writes under the run directory)"))
            continue
        modules, package = TRACKERS[name]
        if not any(installed(m) for m in modules):
            problems.append((f"report_to {name} needs the {package} package, and it is not installed",
                             f"pip install {package}, or drop {name} from report_to"))
    return problems
