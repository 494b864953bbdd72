"""minisw.manager.scheduler"""
