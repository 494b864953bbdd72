"""minisw.manager.controlapi"""
