"""Load OpenAI's released dVAE weights into the course's ``DiscreteVAE``.

Paper: Ramesh et al. 2021, section 2.1 and appendix A.1 (the dVAE's architecture). OpenAI
published the trained stage-1 tokenizer as the ``DALL-E`` package (``pip install --no-deps
DALL-E``, version 0.1: ``dall_e.Encoder`` / ``dall_e.Decoder`` and their pickled
``encoder.pkl`` / ``decoder.pkl``). With ``DVAEConfig.paper()`` our modules have the same
layers; ``from_openai`` renames their parameters (``w`` / ``b`` -> ``weight`` / ``bias``,
their block paths -> ours) and turns their decoder's input 1x1 conv into our ``codebook``,
so the converted model gives their outputs. Used to check the architecture against the
released one, and to tokenize images with the paper's own dVAE.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .dvae import DiscreteVAE, DVAEConfig

__all__ = ["from_openai"]


def _openai_state(obj, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """The state dict of a ``dall_e`` module, of its pickled file's path, or the dict itself."""
    if isinstance(obj, (str, os.PathLike)):
        if not trust_pickle:
            raise ValueError(f"{obj} is a pickled module: loading it runs whatever code it holds. Pass "
                             "trust_pickle=True only for OpenAI's own encoder.pkl / decoder.pkl that you "
                             "downloaded yourself, or pass their state dicts instead")
        # the one place in the package that unpickles objects: OpenAI ships a pickled module
        obj = torch.load(obj, map_location="cpu", weights_only=False)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise TypeError("expected an OpenAI dall_e Encoder/Decoder, its state_dict, or the path of "
                        f"its pickled file (encoder.pkl / decoder.pkl), got {type(obj).__name__}")
    return obj


def _rename(key: str, part: str) -> str:
    """One of their parameter names in ``part`` ("encoder" / "decoder") -> ours."""
    key = key.removeprefix("blocks.")
    if key.endswith(".w"):
        key = key[:-2] + ".weight"
    elif key.endswith(".b"):
        key = key[:-2] + ".bias"
    if part == "encoder":
        if key.startswith("output.conv."):
            return "encoder.logits." + key.split(".")[-1]
        if key.startswith("input."):
            return "encoder." + key
        return "encoder.groups." + key
    if key.startswith("output.conv."):
        return "decoder.output." + key.split(".")[-1]
    return "decoder.groups." + key


def from_openai(encoder, decoder, trust_pickle: bool = False) -> DiscreteVAE:
    """Build a paper-config ``DiscreteVAE`` from OpenAI's released dVAE.

    ``encoder`` / ``decoder``: ``dall_e.Encoder`` / ``dall_e.Decoder`` modules, their state
    dicts, or paths of the pickled files (``encoder.pkl``, ``decoder.pkl``) that you
    downloaded yourself from OpenAI, with ``trust_pickle=True`` (a pickle runs code as it loads;
    every other loader of the package reads tensors only). Their ``Conv2d`` stores ``w`` / ``b``; ours ``weight`` / ``bias``.
    Their decoder's input 1x1 conv (n_init, K, 1, 1) becomes our codebook (K, n_init), its
    bias added to every row (exact: one-hots sum to 1).
    """
    enc, dec = _openai_state(encoder, trust_pickle), _openai_state(decoder, trust_pickle)
    k, d = dec["blocks.input.w"].shape[1], dec["blocks.input.w"].shape[0]
    n_hid = enc["blocks.input.w"].shape[0]
    n_blk = sum(1 for key in enc if key.startswith("blocks.group_1.") and key.endswith("res_path.conv_1.w"))
    cfg = DVAEConfig.paper(n_codes=k, codebook_dim=d, n_hid=n_hid, n_blk_per_group=n_blk,
                           channels=enc["blocks.input.w"].shape[1])
    model = DiscreteVAE(cfg)
    state = {}
    for key, v in enc.items():
        state[_rename(key, "encoder")] = v.float()
    for key, v in dec.items():
        if key.startswith("blocks.input."):
            continue
        state[_rename(key, "decoder")] = v.float()
    state["codebook.weight"] = dec["blocks.input.w"][:, :, 0, 0].t().float() + dec["blocks.input.b"].float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"these weights do not fit the paper dVAE: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()
