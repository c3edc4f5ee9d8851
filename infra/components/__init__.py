"""Pulumi components: one per concept; none knows which stack or platform it is in."""
