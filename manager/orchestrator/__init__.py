"""minisw.manager.orchestrator"""
