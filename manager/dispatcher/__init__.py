"""minisw.manager.dispatcher"""
