"""What every Leaseline service needs: the event catalogue, messaging and storage plumbing,
settings, logging and the service runtime. Nothing here knows about any one service."""
