"""Pure renderers: Python data in, configuration file text out. No Pulumi here."""
