"""Everything that trains: one command line and the loops behind it.

    python -m dalle_mini_impl.training dvae  ...   # stage 1, the discrete VAE (lessons 03-04)
    python -m dalle_mini_impl.training dalle ...   # stage 2, the transformer prior (lesson 08)
    python -m dalle_mini_impl.training clip  ...   # the reranker (lesson 09)
    python -m dalle_mini_impl.training judge ...   # the shapes judge that grades samples
    python -m dalle_mini_impl.training diffusion ...   # GLIDE in miniature (lesson 11)

Modules: ``common`` (run log, shared options), ``dvae``, ``dalle``, ``clip``, ``judge``, ``diffusion`` (one
command each, with a settings dataclass where the command has many options), ``distributed``
(DDP / FSDP under torchrun), ``accel`` (GPU fast paths with CPU fallbacks), ``sizing``
(parameters, memory and FLOPs of a preset without building it).

No model module imports this package; it imports the model modules (layers: ``utils`` ->
``presets``, ``datasets`` -> the lesson modules -> ``training`` -> the command lines).
"""
