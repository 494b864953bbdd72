"""The ``minisw`` command line: Swarm's verbs, flags, columns and progress display."""
