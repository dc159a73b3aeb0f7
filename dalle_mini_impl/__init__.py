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
``dalle``, ``train``        08 DALL-E (2.2, 2.6)
``clip``                    09 CLIP reranking (2.6)
``metrics``                 10 evaluation and scale
==========================  ===========================================

``utils`` holds seeding, devices, presets and checkpoints; ``viz`` the notebook figures.
"""
from .utils import (Preset, count_parameters, get_device, get_preset, load_checkpoint,
                    save_checkpoint, seed_everything)

__version__ = "0.1.0"
__all__ = ["seed_everything", "get_device", "get_preset", "Preset", "save_checkpoint",
           "load_checkpoint", "count_parameters", "__version__"]
