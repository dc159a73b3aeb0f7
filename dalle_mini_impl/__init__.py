"""dalle_mini_impl: the companion package of "DALL-E from scratch".

One module per lesson (Ramesh et al. 2021, *Zero-Shot Text-to-Image Generation*):

==========================  ===========================================
module                      lesson
==========================  ===========================================
``datasets``                00 course map and data
``autoencoder``             01 autoencoder
``vae``                     02 VAE
``dvae``                    03 discrete VAE and visual codebook (2.1, A)
``elb``                     04 evidence lower bound (2, 2.1)
``bpe``, ``tokenizer``      05 byte-pair encoding (2.2)
``attention``, ``transformer``  06 sparse transformer (2.2, B.1)
``precision``               07 mixed precision (2.4, D)
``dalle``                   08 DALL-E (2.2, 2.6)
``clip``                    09 CLIP reranking (2.6)
``metrics``, ``powersgd``   10 evaluation and scale (2.5, E)
``diffusion``, ``noisy_clip``, ``compare``
                            11 diffusion and guidance (GLIDE, Nichol et al. 2021)
``unclip``                  12 unCLIP (Ramesh et al. 2022)
==========================  ===========================================

Layers, each importing only from those above it: ``utils``; ``presets``, ``datasets``,
``viz``; the lesson modules (each imports only earlier lessons); ``training/`` (everything
that trains, with its one command line: ``python -m dalle_mini_impl.training``); the
command-line front ends (``__main__``, ``course``). ``tests/test_imports.py`` keeps it so.
"""
from .presets import PAPER, PRESETS, Preset, get_preset
from .utils import count_parameters, get_device, load_checkpoint, save_checkpoint, seed_everything

__version__ = "0.1.0"
__all__ = ["seed_everything", "get_device", "get_preset", "Preset", "PRESETS", "PAPER", "save_checkpoint",
           "load_checkpoint", "count_parameters", "__version__"]
