"""Identity: registration, activation, login, sessions, devices, organisations and their administrators."""
