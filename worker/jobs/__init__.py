"""The queue's plumbing, with no torch in it: the Celery app (`celery_app`) and its one task
(`tasks`), sending "run job N" (`messages`), running a claimed job under its lease (`runner`), the
reconciler that re-sends lost work (`reconciler`), and the handlers of each job kind (`convert`,
`train`, `eval`), which import torch only inside the job process that runs them."""
