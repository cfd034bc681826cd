"""Released runs, their checkpoints and data in the local caches (the bottom layer)."""

from .progress import quiet_widget_warning

quiet_widget_warning()  # before huggingface_hub imports tqdm.auto (checkpoints_cache.progress)
