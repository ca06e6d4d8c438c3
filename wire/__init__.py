"""What the server and its callers share, below both: tensors on the wire, channel settings, caller flags."""
