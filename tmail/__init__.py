"""tmail's core: configuration, users, the on-disk queue, Maildir delivery and DSNs.

Every process (the API in ``app``, ``smtp_receiver``, ``queue_runner``) imports this package;
it imports none of them.
"""

__version__ = "0.1.0"
