"""minisw: Docker Swarm's service model, small enough to read.

The repository keeps each of Swarm's boxes in its own top-level folder (``proto/``,
``manager/``, ``agent/``, ``cli/``); packaging installs them as ``minisw.proto``,
``minisw.manager``, ``minisw.agent`` and ``minisw.cli``.
"""

__version__ = "0.1.0"
