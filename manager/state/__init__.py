"""minisw.manager.state"""
