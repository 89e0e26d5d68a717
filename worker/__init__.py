"""Worker side: training, evaluation and generation code that runs on GPU machines."""
