"""finetty's engine: recipes, models, data, the training worker, the run directory.

Nothing in here imports torch, transformers, peft or datasets at module level;
the heavy work happens inside functions that only the worker process calls.
"""
