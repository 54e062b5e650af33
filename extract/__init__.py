"""twinturbo.extract"""
