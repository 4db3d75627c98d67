"""`python -m stacklock.cli`."""

from stacklock.cli import main

main()
