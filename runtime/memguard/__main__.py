"""`python -m runtime.memguard`: the host memory guard (settings from MEMGUARD_* variables)."""

from runtime.memguard.service import main

if __name__ == "__main__":
    main()
