"""Leaseline services: one package each, never importing one another."""
