"""Identity rules as plain code: no I/O, testable synchronously with an injected instant."""
