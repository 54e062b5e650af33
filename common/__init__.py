"""twinturbo.common"""
