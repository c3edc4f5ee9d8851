"""OpenAI-compatible, resumable batch service (API + Redis queue + worker + S3 results)."""
