"""Training engine, interventions, comparison and the CLI (the top layer)."""

from checkpoints_cache.progress import quiet_widget_warning

quiet_widget_warning()  # before accelerate / transformers import tqdm.auto (checkpoints_cache.progress)
