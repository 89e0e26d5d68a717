"""ft workers: the Celery app and its tasks, and what the tasks run (training, evaluation)."""

import logging

# bitsandbytes' CPU backend tries to fetch an optional kernel from a model hub at import and warns
# when it cannot (always, offline); its own fallback kernel is what ft uses, so the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
