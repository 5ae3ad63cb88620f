"""The queue runner: the only process that delivers. ``python -m queue_runner [--once]``."""
