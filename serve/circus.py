"""The process manager's control sockets, off the network.

`bentoml serve` (BentoML 1.4) runs its workers under circus, whose arbiter BentoML starts with two ZeroMQ
endpoints on free TCP ports of 127.0.0.1 (bentoml/_internal/utils/circus, create_standalone_arbiter): a control
socket that takes commands without any authentication (`list`, `stop`, `quit`, and `add`, which starts a program
as the service's user) and an event feed. Any local user of a shared host could reach them. `lock_down()` makes
every arbiter this process creates bind both as ZeroMQ `ipc://` endpoints (Unix sockets) in a folder of its own,
made by mkdtemp (mode 0700, so only the service's user can connect) and removed when the arbiter stops. Nothing
else in BentoML or circus dials them: the arbiter's own stop and signal handling need no socket.

serve.service calls it at import, which in the `bentoml serve` main process happens while BentoML loads the
service, before it creates the arbiter: `bentoml serve` and `sslforge serve` (which becomes it) alike.
"""
from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

PREFIX = "sslforge-circus-"


def private_endpoints() -> tuple[Path, str, str]:
    """(a new 0700 folder, its control endpoint, its event endpoint)."""
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))  # mode 0700, owned by this user
    return folder, f"ipc://{folder / 'control'}", f"ipc://{folder / 'events'}"


def lock_down() -> bool:
    """Patch BentoML's circus Arbiter (once per process) to use private Unix-socket endpoints; False when this
    BentoML has no such class (then nothing is changed)."""
    try:
        from bentoml._internal.utils import circus as bentoml_circus
    except ImportError:
        return False
    arbiter = getattr(bentoml_circus, "Arbiter", None)
    if arbiter is None or getattr(arbiter.__init__, "sslforge_private", False):
        return arbiter is not None
    original = arbiter.__init__

    @functools.wraps(original)
    def __init__(self, watchers, *args, **kwargs):
        folder, control, events = private_endpoints()
        args = list(args)
        for i, (name, value) in enumerate((("endpoint", control), ("pubsub_endpoint", events))):
            if i < len(args):
                args[i] = value
            else:
                kwargs[name] = value
        kwargs.pop("multicast_endpoint", None)  # circus's cluster discovery (UDP): off, as BentoML leaves it
        original(self, watchers, *args, **kwargs)
        self.exit_stack.callback(shutil.rmtree, folder, ignore_errors=True)

    __init__.sslforge_private = True
    arbiter.__init__ = __init__
    return True
