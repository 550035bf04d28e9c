"""Notifications: turns the events of every service into emails and text messages."""
