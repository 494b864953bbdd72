"""The agent: one per node. Session (to managers), worker (reconciles tasks), executor (Docker)."""
