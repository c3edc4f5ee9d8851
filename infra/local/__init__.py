"""The local stack: a compose stack applied for real on this machine (make stack-up / stack-down)."""
