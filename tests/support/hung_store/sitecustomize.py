"""Makes this process's checkpoint journal appends hang while ``ORCH_TEST_HANG_FILE`` exists.

A stalled disk or a hard NFS mount whose server went away, for one worker node: put this
directory first on the node's ``PYTHONPATH`` (Python imports ``sitecustomize`` at start-up).
Only writers of epoch ``ORCH_TEST_HANG_EPOCH`` (default 1) hang, so the attempt that resumes
the run, wherever it lands, writes normally. The hang is bounded (10 minutes), as every wait
of the tests is.

Not a package module: no test imports it.
"""

from __future__ import annotations

import os
import time

HANG_FILE = os.environ.get("ORCH_TEST_HANG_FILE")
HANG_EPOCH = int(os.environ.get("ORCH_TEST_HANG_EPOCH", "1"))

if HANG_FILE:
    from checkpoints.filesystem import FilesystemCheckpointWriter

    _append = FilesystemCheckpointWriter.append

    def _hanging_append(self, changes):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 600
        while self.epoch == HANG_EPOCH and os.path.exists(HANG_FILE) and time.monotonic() < deadline:
            time.sleep(0.05)  # the write does not return; bounded by the deadline
        return _append(self, changes)

    FilesystemCheckpointWriter.append = _hanging_append  # type: ignore[method-assign]
