"""SAM itself: building and loading checkpoints, LoRA and adapters, the image encoder and its precisions,
the embedding cache, and the predictor façade the pipeline decodes through.

The only part of the engine that imports torch: everything outside this package (reading rasters, points,
chips, vectorizing, the CLI's help, the API's schemas) runs without it.
"""
