"""Running a service: wiring, lifecycle, health and metrics."""
