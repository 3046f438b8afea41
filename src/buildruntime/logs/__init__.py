"""Log capture: every line of a step, once, in order, however late it is read.

A step's capture starts in the background as soon as its step-image container is
running or terminated, whether or not anyone tails it, so a container that lived for
no time at all still has its output read before the pod goes away. Lines go into a
:class:`LogBuffer` (in memory up to a limit, then spilled to a temporary file) from
which any number of tails read from line 1.

The stream is asked for with ``follow`` and ``timestamps``. When it is cut while the
container still runs, the capture reopens it with ``sinceTime`` (which has one-second
granularity on a real API server) and drops the lines it already delivered by their
full nanosecond timestamps. A final line without a newline is delivered once the
container is known to have ended.

The kubelet rotates a running container's log file once it passes
``containerLogMaxSize`` and serves only the current file. A follow stream that was
behind at the rotation reads the old file to its end and then ends (the container
has exited) or goes silent (it still runs), so the capture reads the current file
again once the container has ended, or once such a stream goes quiet. Lines only in
rotated files cannot be read through the API at all: when a resumed read shows they
were skipped, the capture says so in the log (see :data:`MISSING_PREFIX`).

Modules: ``capture`` does the I/O (requests, retries, the reads rotation needs);
``resume`` judges each read's lines against what was delivered, with no I/O;
``stamps`` parses the kubelet's timestamps; ``buffer`` holds the lines for the tails.
"""

from buildruntime.logs.buffer import DEFAULT_MEMORY_LIMIT, LogBuffer
from buildruntime.logs.capture import LogCapture
from buildruntime.logs.resume import MISSING_PREFIX
from buildruntime.logs.stamps import since_time_of, timestamp_second

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "MISSING_PREFIX",
    "LogBuffer",
    "LogCapture",
    "since_time_of",
    "timestamp_second",
]
