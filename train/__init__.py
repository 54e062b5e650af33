"""twinturbo.train"""
