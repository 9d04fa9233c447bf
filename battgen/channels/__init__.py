"""Void and channel analysis of crystal frameworks (Zeo++ through pyzeo, CAVD): seeds 001 / 004."""
