"""``python -m nyth_mailbox``: the mailbox, run as `nyth.runtime.redis_service.serve` says."""

import sys

from nyth.runtime.redis_service import serve

from nyth_mailbox.app import create_app
from nyth_mailbox.settings import MailboxSettings

if __name__ == "__main__":
    sys.exit(serve("nyth-mailbox", MailboxSettings, create_app))
