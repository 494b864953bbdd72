"""The manager: Raft-replicated store plus the leader-only components (swarmkit's manager/)."""
