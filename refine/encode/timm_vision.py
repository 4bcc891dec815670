"""timm model directories for ``--image-model DIR`` (``refine.encode.vision.TimmModel``): the
hub layout timm's ``save_for_hf`` writes, ``config.json`` naming the ``architecture`` (with its
``pretrained_cfg`` and ``model_args``) beside ``model.safetensors`` or ``pytorch_model.bin``.

timm imports torchvision, which must be the build made for the installed torch; where it is not,
refine stops with exit code 2 naming the cause (``broken_torchvision``), for transformers
directories too, since transformers imports an installed torchvision as well.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from refine.encode.embedding import versions
from refine.errors import ConfigError, InputError

TIMM_INSTALL = "pip install 'refine[timm]'"
# What timm's save_for_hf writes, in the order timm itself prefers them.
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHTS_WORDS = "weights (model.safetensors or pytorch_model.bin)"


def import_timm(path: Path, architecture: str) -> Any:
    """timm and its data transforms, or exit 2 naming what to install."""
    try:
        import timm
        import timm.data
    except ImportError:
        why = f"which is not installed: {TIMM_INSTALL}"
    except Exception as exc:  # a torchvision built for another torch: RuntimeError
        broken = broken_torchvision()
        why = (
            f"which needs torchvision, and {broken}; then {TIMM_INSTALL}"
            if broken
            else f"which does not import here ({type(exc).__name__}: {exc})"
        )
    else:
        return timm
    raise ConfigError(
        f"--image-model {str(path)!r} is a timm model directory (architecture "
        f"{architecture!r}): reading it needs timm, {why}"
    )


def broken_torchvision() -> str:
    """Why the installed torchvision does not import (built for another torch), or ""."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return ""
    except Exception as exc:  # RuntimeError: operator torchvision::nms does not exist
        import torch

        return (
            f"torchvision {versions(['torchvision']).get('torchvision', '')} does not import "
            f"({type(exc).__name__}: {exc}): it is not the build made for torch "
            f"{torch.__version__}; install the one that is, from the index that torch came from"
        )
    return ""


def check_timm_directory(path: Path, config: dict[str, Any]) -> None:
    """Refuse a timm directory without weights, or whose config.json is not shaped as timm's."""
    if not any((path / name).is_file() for name in TIMM_WEIGHTS):
        raise InputError(
            f"--image-model {str(path)!r} is a timm model directory that lacks {WEIGHTS_WORDS}: "
            "save the model with timm.models.save_for_hf(model, DIR, safe_serialization=True)"
        )
    for key, kind in (("architecture", str), ("pretrained_cfg", dict), ("model_args", dict)):
        if key in config and not isinstance(config[key], kind):
            raise InputError(
                f"--image-model {str(path / 'config.json')!r}: {key} is a "
                f"{type(config[key]).__name__}, not the {kind.__name__} timm writes"
            )


def build_network(timm: Any, name: str, path: Path, config: dict[str, Any]) -> Any:
    """The architecture timm builds from config.json, with the directory's weights: from
    safetensors, or a torch file read with ``weights_only`` (never pickled code)."""
    import torch

    # model_args, where saved, decide (timm 1.0.31 records them all, with the head).
    args = {k: config[k] for k in ("num_classes", "global_pool") if config.get(k) is not None}
    try:
        network = timm.create_model(
            config["architecture"],
            pretrained=False,
            pretrained_cfg=pretrained_cfg(timm, config),
            **{**args, **(config.get("model_args") or {})},
        )
    except Exception as exc:  # timm raises RuntimeError (unknown model), TypeError, ...
        raise InputError(
            f"--image-model {name!r} is not a model timm {timm.__version__} can build "
            f"({type(exc).__name__}: {exc})"
        ) from None
    file = next(path / n for n in TIMM_WEIGHTS if (path / n).is_file())
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(file, device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as exc:  # a broken file, or keys and shapes the architecture lacks
        raise InputError(
            f"--image-model {name!r}: its weights ({file.name}) do not fit its "
            f"configuration ({type(exc).__name__}: {str(exc).splitlines()[0]}); save the "
            "model again with timm.models.save_for_hf"
        ) from None
    return network


def pretrained_cfg(timm: Any, config: dict[str, Any]) -> dict[str, Any]:
    """config.json's ``pretrained_cfg`` (input size, interpolation, crop, mean, std, ...). Files
    saved by timm before 0.9 keep those at the top level, among the model's own keys: the ones
    timm's ``PretrainedCfg`` knows are taken from there."""
    if "pretrained_cfg" in config:
        return dict(config["pretrained_cfg"] or {})
    known = {f.name for f in dataclasses.fields(timm.models.PretrainedCfg)} - {"architecture"}
    return {k: v for k, v in config.items() if k in known}


def pooled_features(network: Any, pixels: Any, name: str) -> Any:
    """The pooled features before the classifier ``(N, D)`` of a batch of ``pixels``."""
    out = network.forward_head(network.forward_features(pixels), pre_logits=True)
    if out.ndim != 2:
        raise InputError(
            f"--image-model {name!r} gives no pooled vector per image (its features are "
            f"{tuple(out.shape[1:])}): save the model with a global_pool"
        )
    return out
