"""The SMTP receiver: the way mail comes in. ``python -m smtp_receiver``."""
